"""Stage ``prepare``: the corpora of params.yaml into Parquet shards.

The work is :mod:`structkd.pipeline.prepare`; this is its command line.
"""

from __future__ import annotations

from pathlib import Path

import typer

from structkd.pipeline.layout import open_project
from structkd.stages.options import ParamsPath


def main(params_path: ParamsPath = Path("params.yaml")) -> None:
    """Read, validate and shard the corpora of params.yaml ``data``."""
    from structkd.pipeline import prepare

    params, layout = open_project(params_path)
    prepare.run(params, layout, params_path, echo=typer.echo)
