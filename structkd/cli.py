"""The ``structkd`` command: ``stage <name>`` runs one stage; ``knowledge`` and ``predict`` too.

Stage commands live in ``structkd.stages`` (one module per stage); this module only wires them.
User-facing problems (:class:`StructkdError`) end the command with one ``Error:`` line and exit
status 1, never a traceback.

Importing this module sets ``OMP_WAIT_POLICY=PASSIVE`` unless the user set it: OpenMP threads
that finished their share then sleep instead of spinning, so they do not take a core from the
threads still working when other jobs share the machine. It must happen before torch loads
(OpenMP reads it once); the stage modules import torch only inside their commands.
"""

from __future__ import annotations

import os
from typing import Any

import typer
from typer.core import TyperGroup

from structkd.errors import StructkdError
from structkd.stages import (
    embed,
    evaluate,
    export_teachers,
    knowledge,
    predict,
    prepare,
    train_student,
    train_teacher,
)

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before any command imports torch


class _Group(TyperGroup):
    """A command group that turns :class:`StructkdError` into a one-line ``Error:`` and exit 1."""

    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except StructkdError as exc:
            typer.echo(f"Error: {exc}", err=True)
            raise typer.Exit(1) from None


app = typer.Typer(
    cls=_Group,
    help="Structure-level knowledge distillation for multilingual sequence labeling.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
stage_app = typer.Typer(
    help="Run one pipeline stage (what `dvc repro` runs).", no_args_is_help=True
)
knowledge_app = typer.Typer(help="Inspect knowledge shards written by export-teachers.")

stage_app.command("prepare")(prepare.main)
stage_app.command("embed")(embed.main)
stage_app.command("train-teacher")(train_teacher.main)
stage_app.command("export-teachers")(export_teachers.main)
stage_app.command("train-student")(train_student.main)
stage_app.command("evaluate")(evaluate.main)
knowledge_app.command("show")(knowledge.show)

app.add_typer(stage_app, name="stage")
app.add_typer(knowledge_app, name="knowledge", no_args_is_help=True)
app.command("predict")(predict.main)


if __name__ == "__main__":
    app()
