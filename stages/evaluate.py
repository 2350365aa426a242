"""Stage ``evaluate``: every teacher and every student method on every test set.

The work is :mod:`structkd.pipeline.evaluate`; this is its command line.
"""

from __future__ import annotations

from pathlib import Path

import typer

from structkd.pipeline.layout import open_project
from structkd.stages.options import ParamsPath


def main(params_path: ParamsPath = Path("params.yaml")) -> None:
    """Score teachers and students per language (own test sets and zero-shot languages)."""
    from structkd.pipeline import evaluate

    params, layout = open_project(params_path)
    evaluate.run(params, layout, echo=typer.echo)
