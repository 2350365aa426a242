"""experiments/run.py keys runs by what they read: unlabeled text is a student input only."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from experiment_scripts import load_script


def test_unlabeled_text_changes_the_students_key_not_the_teachers() -> None:
    run = load_script("run")
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
    run = load_script("run")
    monkeypatch.setattr(run, "RUNS", tmp_path)
    params, experiment = run.absolute_params("conll-de-unlabeled")
    run.link_base("conll-de-unlabeled", experiment["teachers_of"], params)
    base = tmp_path / "conll-de-unlabeled" / "base"
    assert base.resolve() == (tmp_path / experiment["teachers_of"] / "base").resolve()
    other = {**params, "teacher": {**params["teacher"], "ensemble": 1}}
    with pytest.raises(SystemExit, match="teacher section differs"):
        run.link_base("conll-de-unlabeled", experiment["teachers_of"], other)


def test_a_finished_run_is_skipped_after_its_stage_swapped_the_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The stage replaces the model directory whole when it finishes; the fingerprint must
    survive that, or every rerun would train again."""
    run = load_script("run")
    calls: list[tuple[str, ...]] = []

    def finish(project: Path, *args: str, log: Path, params: str = "params.yaml") -> float:
        calls.append(args)
        out = project / "models" / "students" / "posterior"
        staged = out.with_name(".posterior.staged.tmp")
        staged.mkdir(parents=True)
        (staged / "metrics.json").write_text("{}")
        shutil.rmtree(out, ignore_errors=True)
        staged.rename(out)
        return 1.0

    monkeypatch.setattr(run, "stage", finish)
    out = tmp_path / "models" / "students" / "posterior"
    key = run.fingerprint({"student": {"seed": 1}})
    log = tmp_path / "log.txt"
    args = ("train-student", "posterior")
    assert run.train(tmp_path, out, key, args, log) == 1.0
    assert run.train(tmp_path, out, key, args, log) is None  # finished, same fingerprint
    other = run.fingerprint({"student": {"seed": 2}})
    assert run.train(tmp_path, out, other, args, log) == 1.0  # another fingerprint: again
    assert calls == [args, args]


def test_a_self_trained_seed_makes_only_its_own_texts_knowledge(tmp_path: Path) -> None:
    """With ``teachers: student`` each seed's baseline labels the text: the seed's knowledge
    links the base's entries except that text's, which its own export makes."""
    run = load_script("run")
    params, _ = run.absolute_params("udpos-selftrain")
    assert run.self_trained_texts(params) == {"ar", "tr", "nl", "de", "es", "sv"}
    owner, _ = run.absolute_params("udpos-unlabeled")
    assert run.self_trained_texts(owner) == set()
    mixed = {"data": {"unlabeled": {"fr": {"teachers": {"en": 1, "student": 1}}, "de": {}}}}
    assert run.self_trained_texts(mixed) == {"fr"}

    base = tmp_path / "base"
    for entry in ("en", "de", "unlabeled/fr", "unlabeled/de"):
        (base / "knowledge" / entry).mkdir(parents=True)
    project = run.student_project(tmp_path / "seed-1", base, {"fr"})
    knowledge = project / "knowledge"
    assert not knowledge.is_symlink()
    links = {p.relative_to(knowledge).as_posix() for p in knowledge.rglob("*") if p.is_symlink()}
    assert links == {"en", "de", "unlabeled/de"}
    assert (knowledge / "unlabeled").is_dir() and not (knowledge / "unlabeled" / "fr").exists()
    plain = run.student_project(tmp_path / "seed-2", base)
    assert (plain / "knowledge").resolve() == (base / "knowledge").resolve()
