"""Stage ``embed``: frozen encoder features for every prepared split.

The work is :mod:`structkd.pipeline.embed`; this is its command line.
"""

from __future__ import annotations

from pathlib import Path

import typer

from structkd.pipeline.layout import open_project
from structkd.stages.options import ParamsPath


def main(params_path: ParamsPath = Path("params.yaml")) -> None:
    """Encode every prepared split with the configured frozen encoder (cached by content)."""
    from structkd.pipeline import embed

    embed.run(*open_project(params_path), echo=typer.echo)
