"""Stage ``train-student METHOD``: one multilingual student from gold labels + teacher knowledge.

The work is :mod:`structkd.pipeline.student`; this is its command line.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from structkd.pipeline.layout import open_project
from structkd.pipeline.params import Method
from structkd.stages.options import ParamsPath


def main(
    method: Annotated[Method, typer.Argument(help="Distillation method.")],
    params_path: ParamsPath = Path("params.yaml"),
    resume: Annotated[bool, typer.Option(help="Continue from the last checkpoint.")] = False,
) -> None:
    """Train the multilingual student with METHOD on all teacher languages at once."""
    from structkd.pipeline import student

    params, layout = open_project(params_path)
    if (line := student.run(params, layout, method, resume=resume)) is not None:
        typer.echo(line)
