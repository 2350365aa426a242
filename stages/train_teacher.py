"""Stage ``train-teacher LANG``: the monolingual teacher of one language.

The work is :mod:`structkd.pipeline.teacher`; this is its command line.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from structkd.pipeline.layout import open_project
from structkd.stages.options import ParamsPath


def main(
    lang: Annotated[str, typer.Argument(help="Teacher language (a key of data.languages).")],
    params_path: ParamsPath = Path("params.yaml"),
    resume: Annotated[bool, typer.Option(help="Continue from the last checkpoint.")] = False,
) -> None:
    """Train the teacher of LANG (every member of an ensemble) on its own language: shared
    features + own word/char embeddings."""
    from structkd.pipeline import teacher

    params, layout = open_project(params_path)
    typer.echo(teacher.run(params, layout, lang, resume=resume, where=str(params_path)))
