"""experiments/run.py keys runs by what they read: unlabeled text is a student input only."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

REPO = Path(__file__).resolve().parents[1]


def load_runner() -> ModuleType:
    sys.path.insert(0, str(REPO / "experiments"))
    path = REPO / "experiments" / "run.py"
    spec = importlib.util.spec_from_file_location("experiments_run", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_unlabeled_text_changes_the_students_key_not_the_teachers() -> None:
    run = load_runner()
    params, experiment = run.absolute_params("conll-de-unlabeled")
    owner, _ = run.absolute_params(experiment["teachers_of"])
    text = Path(params["data"]["unlabeled"]["de"]["path"])
    assert text.is_absolute() and text.parts[-3:] == ("conll", "de", "dev.iob.gz")
    assert run.teacher_params(params) == run.teacher_params(owner)
    teachers = {"en": {"key": "same"}}
    with_text = run.student_params(params, "posterior", teachers)
    without = run.student_params(owner, "posterior", teachers)
    assert with_text != without
    assert {**with_text, "unlabeled": {}} == without


def test_a_shared_base_may_differ_only_in_unlabeled_text(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = load_runner()
    monkeypatch.setattr(run, "RUNS", tmp_path)
    params, experiment = run.absolute_params("conll-de-unlabeled")
    run.link_base("conll-de-unlabeled", experiment["teachers_of"], params)
    base = tmp_path / "conll-de-unlabeled" / "base"
    assert base.resolve() == (tmp_path / experiment["teachers_of"] / "base").resolve()
    other = {**params, "teacher": {**params["teacher"], "ensemble": 1}}
    with pytest.raises(SystemExit, match="teacher section differs"):
        run.link_base("conll-de-unlabeled", experiment["teachers_of"], other)
