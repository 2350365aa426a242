"""Stage ``export-teachers``: every teacher's knowledge shards.

The work is :mod:`structkd.pipeline.export_teachers`; this is its command line.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from structkd.pipeline.layout import open_project
from structkd.stages.options import ParamsPath


def main(
    params_path: ParamsPath = Path("params.yaml"),
    workers: Annotated[
        int | None, typer.Option(help="Local dask worker processes (default: export.workers).")
    ] = None,
    scheduler: Annotated[
        str | None, typer.Option(help="Address of an existing dask scheduler, e.g. tcp://h:8786.")
    ] = None,
) -> None:
    """Export Top-K paths, marginals and emissions of every teacher (cached by content)."""
    from structkd.pipeline import export_teachers

    params, layout = open_project(params_path)
    export_teachers.run(params, layout, workers=workers, scheduler=scheduler, echo=typer.echo)
