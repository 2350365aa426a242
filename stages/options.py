"""Command-line options every stage shares."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

ParamsPath = Annotated[
    Path,
    typer.Option("--params", help="params.yaml to read; outputs go beside it.", dir_okay=False),
]
