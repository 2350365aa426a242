"""``dvc.yaml`` lists as each stage's code deps exactly the source files that stage imports."""

from __future__ import annotations

import re

import pytest
import yaml
from import_closure import REPO, stage_code_deps

CODE = re.compile(r"^(stages|pipeline|storage|structkd)(/|$)")
STAGES = yaml.safe_load((REPO / "dvc.yaml").read_text("utf-8"))["stages"]


def declared_code_deps(stage: dict) -> list[str]:
    """The code entries of a dvc.yaml stage's deps (``foreach`` stages keep them under ``do``)."""
    body = stage.get("do", stage)
    return sorted(dep for dep in body["deps"] if CODE.match(dep))


@pytest.mark.parametrize("name", list(STAGES))
def test_code_deps_are_the_import_closure(name: str) -> None:
    expected = stage_code_deps(name)
    listed = declared_code_deps(STAGES[name])
    missing, extra = sorted(set(expected) - set(listed)), sorted(set(listed) - set(expected))
    assert listed == expected, (
        f"dvc.yaml stage {name!r}: code deps differ from its import closure; missing {missing}, "
        f"extra {extra} (python tests/import_closure.py prints them)"
    )


def test_loss_code_reruns_only_the_students() -> None:
    """Editing the KD losses must never retrain a teacher or re-export knowledge."""
    using = {name for name in STAGES if "pipeline/losses.py" in stage_code_deps(name)}
    assert using == {"train-baseline", "train-student"}


def test_closure_follows_function_level_imports() -> None:
    """Stages import lazily inside their commands; those imports are deps too."""
    assert "pipeline/crf_kernels.py" in stage_code_deps("export-teachers")
    assert "pipeline/crf_kernels.py" not in stage_code_deps("train-teacher")
