"""The bad-input matrix (reports/robustness.md): one test per row, each through the real CLI.

Every row expects exit status 1, one ``Error:`` line naming the file and the line, sentence or
key, no traceback, and no partial output (the stage's outputs are exactly as before the run).
The project is a tiny real one (``robust_project``); each test breaks one thing in a copy.
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from e2e_project import copy_project, write_params
from robust_project import (
    base_project,
    cli_error,
    error_line,
    rerecord,
    rewrite_parquet,
    snapshot,
    spawn,
)

from structkd.storage.arrays import binary_array, binary_values
from structkd.storage.schemas import FEATURE_DTYPE

pytestmark = pytest.mark.slow  # builds a project and runs stages up to export


@pytest.fixture
def project(tmp_path: Path, tmp_path_factory: pytest.TempPathFactory, tiny_encoder_dir: Path):
    """params.yaml of a fresh copy of the built project (every stage up to export has run)."""
    return copy_project(base_project(tmp_path_factory, tiny_encoder_dir), tmp_path / "project")


def corpus(params: Path, lang: str, split: str) -> Path:
    """The (resolved) corpus file of ``lang``/``split`` in the project of ``params``."""
    return (params.parent / "corpora" / lang / f"{split}.conllu").resolve()


def token_line(path: Path, sentence: int, word: int) -> int:
    """1-based line number of word ``word`` (its CoNLL-U ID) of sentence ``sentence`` (0-based)."""
    current, inside = 0, False
    for number, line in enumerate(path.read_bytes().split(b"\n"), 1):
        if not line.strip():
            current, inside = current + inside, False
        elif not line.startswith(b"#"):
            inside = True
            if current == sentence and line.split(b"\t")[0] == str(word).encode():
                return number
    raise AssertionError(f"{path} has no word {word} in sentence {sentence}")


def edit_line(path: Path, number: int, edit: Callable[[list[bytes]], list[bytes]]) -> None:
    """Replace the tab-separated fields of line ``number`` (1-based) by ``edit(fields)``."""
    lines = path.read_bytes().split(b"\n")
    lines[number - 1] = b"\t".join(edit(lines[number - 1].split(b"\t")))
    path.write_bytes(b"\n".join(lines))


def set_field(index: int, value: bytes) -> Callable[[list[bytes]], list[bytes]]:
    """An :func:`edit_line` edit that sets column ``index`` to ``value``."""

    def edit(fields: list[bytes]) -> list[bytes]:
        fields[index] = value
        return fields

    return edit


def prepare_fails(params: Path) -> str:
    """Run ``stage prepare`` expecting a user error; checks that data/prepared did not change."""
    before = snapshot(params.parent / "data" / "prepared")
    line = cli_error(params, "stage", "prepare")
    assert snapshot(params.parent / "data" / "prepared") == before
    return line


# ---- corpus files (stage prepare) ------------------------------------------------------------


def test_wrong_column_count(project: Path) -> None:
    path = corpus(project, "en", "train")
    number = token_line(path, sentence=5, word=2)
    edit_line(path, number, lambda fields: fields[:-1])
    assert prepare_fails(project) == f"Error: {path}:{number}: expected 10 columns, got 9"


def test_empty_token(project: Path) -> None:
    path = corpus(project, "de", "dev")
    number = token_line(path, sentence=3, word=3)
    edit_line(path, number, set_field(1, b""))
    assert prepare_fails(project) == f"Error: {path}:{number}: empty token"


def test_tag_not_valid_in_declared_scheme(tmp_path: Path) -> None:
    """A span task in IOB2: ``X-PER`` is no IOB2 tag; the error names line and token."""
    lines = {
        "train": "EU B-ORG\nrejects O\nGerman B-MISC\ncall O\n\nPeter B-PER\nBlackburn I-PER\n",
        "dev": "Peter B-PER\nspoke O\n\nin O\nBrussels X-LOC\ntoday O\n",
        "test": "Peter B-PER\n",
    }
    spec: dict[str, object] = {"format": "conll", "scheme": "iob2"}
    for split, text in lines.items():
        (tmp_path / f"{split}.txt").write_text(text, "utf-8")
        spec[split] = f"{split}.txt"
    params = write_params(
        tmp_path / "params.yaml", {"data": {"task": "ner", "languages": {"en": spec}}}
    )
    line = prepare_fails(params)
    path = (tmp_path / "dev.txt").resolve()
    assert line == (
        f"Error: {path}:4: token 2 'Brussels': tag 'X-LOC' does not belong to IOB2 "
        "(expected O, B-<type>, I-<type>)"
    )
    assert not (tmp_path / "data").exists()


def test_unknown_label_outside_teachers_label_set(project: Path) -> None:
    """A tag of a later split (de/test) outside ``data.labels``: nothing at all is written, not
    even the splits read before it (prepare used to replace en/* before failing on de/test)."""
    path = corpus(project, "de", "test")
    first = token_line(path, sentence=4, word=1)
    edit_line(path, token_line(path, sentence=4, word=2), set_field(3, b"FOO"))
    line = prepare_fails(project)
    assert re.fullmatch(
        rf"Error: {re.escape(str(path))}:{first}: token 2 '[^']+': label 'FOO' is not in the "
        rf"task's label set \(from {re.escape(str(project))}: data.labels\)",
        line,
    ), line


def test_teacher_label_sets_differ(project: Path) -> None:
    """The de teacher was trained with another label set than the en teacher and the task."""
    shutil.rmtree(project.parent / "knowledge")
    labels = project.parent / "models" / "teachers" / "de" / "labels.json"
    payload = json.loads(labels.read_text("utf-8"))
    payload["labels"] = ["SYMBOL" if t == "SYM" else t for t in payload["labels"]]
    labels.write_text(json.dumps(payload), "utf-8")
    line = cli_error(project, "stage", "export-teachers", "--workers", "1")
    assert line == (
        f"Error: {labels}: label set differs from the task's labels.json: "
        "missing ['SYM'], extra ['SYMBOL']"
    )
    assert not (project.parent / "knowledge").exists()


def test_empty_split(project: Path) -> None:
    path = corpus(project, "de", "dev")
    path.write_text("# newdoc id = nothing here\n\n", "utf-8")
    assert prepare_fails(project) == f"Error: {path}: no sentences"


@pytest.mark.parametrize("how", ["languages and zero_shot", "same key twice"])
def test_language_configured_twice(project: Path, how: str) -> None:
    raw = yaml.safe_load(project.read_text("utf-8"))
    if how == "languages and zero_shot":
        raw["data"]["zero_shot"] = {"en": {**raw["data"]["languages"]["en"]}}
        write_params(project, raw)
        where = "(data.languages and data.zero_shot)"
        expected = f"{project}: language 'en' is configured twice {where}"
    else:
        text = project.read_text("utf-8")
        block = re.search(r"^    en:\n(?:      .*\n)+", text, re.MULTILINE)
        assert block is not None
        project.write_text(text[: block.end()] + block.group(0) + text[block.end() :], "utf-8")
        line = text[: block.end()].count("\n") + 1
        expected = f"{project}:{line}: key 'en' is given twice"
    assert prepare_fails(project) == f"Error: {expected}"


def test_non_utf8_file(project: Path) -> None:
    path = corpus(project, "en", "test")
    number = token_line(path, sentence=7, word=1)
    edit_line(path, number, set_field(1, "café".encode("latin-1")))
    assert prepare_fails(project) == f"Error: {path}:{number}: not valid UTF-8 (byte 0xe9)"


def test_non_utf8_unlabeled_text(project: Path) -> None:
    """Unlabeled text (one sentence per line) is read by prepare like every corpus."""
    text = project.parent / "corpora" / "fr" / "unlabeled.txt"
    text.parent.mkdir(parents=True, exist_ok=True)
    text.write_bytes("Le chat dort .\n\nun caf\u00e9 .\n".encode("latin-1"))
    raw = yaml.safe_load(project.read_text("utf-8"))
    raw["data"]["unlabeled"] = {"fr": {"path": "corpora/fr/unlabeled.txt"}}
    write_params(project, raw)
    assert prepare_fails(project) == f"Error: {text.resolve()}:3: not valid UTF-8 (byte 0xe9)"


def test_misspelled_params_key(project: Path) -> None:
    raw = yaml.safe_load(project.read_text("utf-8"))
    raw["student"]["hiden"] = raw["student"].pop("hidden")
    write_params(project, raw)
    line = prepare_fails(project)
    assert line == f"Error: {project}: student: unknown key 'hiden'; did you mean 'hidden'?"


# ---- shards (stages train-teacher, train-student) -------------------------------------------


def student_fails(params: Path) -> str:
    """Run ``stage train-student posterior`` expecting a user error and no student output."""
    line = cli_error(params, "stage", "train-student", "posterior")
    assert not (params.parent / "models" / "students").exists()
    return line


def test_knowledge_shard_from_other_schema_version(project: Path) -> None:
    """A shard written by another structkd version (its manifest entry is consistent): version
    1's layout, per-position edge marginals, is refused by its version, never misread."""
    shard = project.parent / "knowledge" / "de" / "part-00002.parquet"
    table = pq.read_table(shard)
    metadata = {**table.schema.metadata, b"schema_version": b"1"}
    rewrite_parquet(shard, table.replace_schema_metadata(metadata))
    rerecord(shard)
    line = student_fails(project)
    assert line == (
        f"Error: {shard}: schema version 1, expected 2 "
        "(written by another structkd version; rerun the stage that writes it)"
    )


@pytest.mark.parametrize("kind", ["prepared", "knowledge"])
def test_truncated_parquet(project: Path, kind: str) -> None:
    """A prepared shard (no manifest: the Parquet reader notices) read by train-teacher, and a
    knowledge shard (its manifest notices first) read by train-student."""
    root = project.parent
    if kind == "prepared":
        shard = root / "data" / "prepared" / "en" / "train" / "part-00003.parquet"
    else:
        shard = root / "knowledge" / "en" / "part-00003.parquet"
    data = shard.read_bytes()
    shard.write_bytes(data[: len(data) // 2])
    if kind == "prepared":
        teacher = root / "models" / "teachers" / "en"
        before = snapshot(teacher)
        line = cli_error(project, "stage", "train-teacher", "en")
        assert snapshot(teacher) == before
        assert line == f"Error: {shard}: not a valid Parquet file (truncated or corrupt)"
    else:
        line = student_fails(project)
        assert line == (
            f"Error: {shard.parent}: knowledge is corrupt ({shard}: {len(data) // 2} bytes, "
            f"manifest says {len(data)} (truncated or changed)); "
            "rerun `structkd stage export-teachers`"
        )


def test_checksum_mismatch(project: Path) -> None:
    """Same size, a few bytes changed: only the manifest's sha256 can tell."""
    shard = project.parent / "knowledge" / "de" / "part-00001.parquet"
    data = bytearray(shard.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 4] = bytes(b ^ 0xFF for b in data[middle : middle + 4])
    shard.write_bytes(bytes(data))
    line = student_fails(project)
    assert line == (
        f"Error: {shard.parent}: knowledge is corrupt ({shard}: sha256 differs from the "
        "manifest (corrupt or changed)); rerun `structkd stage export-teachers`"
    )


# ---- teacher outputs (stage export-teachers, a real process with dask workers) -------------


def export_fails(params: Path) -> str:
    """Run export-teachers as a process expecting a user error: exit 1, one ``Error:`` line, no
    traceback or worker log anywhere in what the user sees."""
    shutil.rmtree(params.parent / "knowledge")
    process = spawn(params, "stage", "export-teachers", "--workers", "1")
    output, _ = process.communicate(timeout=300)
    assert process.returncode == 1, output
    return error_line(output)


def knowledge_not_served(params: Path, lang: str, shard: str) -> None:
    """The failing shard was not written, nor a temporary file of it; the export is incomplete.

    (A shard still in flight on a worker when the export stops may leave its own temporary file;
    the next export of the language removes it under the lock.)
    """
    folder = params.parent / "knowledge" / lang
    assert not (folder / shard).exists()
    assert not list(folder.glob(f".{shard}.*.tmp"))
    manifest = json.loads((folder / "manifest.json").read_text("utf-8"))
    assert manifest["complete"] is False


def rewrite_features(shard: Path, change: Callable[[pa.Table], pa.Table]) -> None:
    """Overwrite a features shard with ``change(table)``."""
    rewrite_parquet(shard, change(pq.read_table(shard)))


def test_nan_or_inf_in_teacher_emissions(project: Path) -> None:
    """An inf in the features of one sentence makes the teacher's emissions NaN/inf there."""
    root = project.parent
    shard = root / "data" / "features" / "en" / "train" / "part-00001.parquet"

    def poison(table: pa.Table) -> pa.Table:
        column = table.column("features")
        values, offsets = binary_values(column, FEATURE_DTYPE)
        values = values.copy()
        values[offsets[3] + 5] = np.inf  # row 3 = sentence 8 + 3
        poisoned = binary_array(values, np.diff(offsets))
        return table.set_column(2, table.schema.field("features"), poisoned)

    rewrite_features(shard, poison)
    line = export_fails(project)
    prepared = root / "data" / "prepared" / "en" / "train" / "part-00001.parquet"
    teacher = root / "models" / "teachers" / "en"
    assert line == (
        f"Error: {prepared}: sent_id 11: teacher {teacher}: emissions contain NaN or inf; "
        "not exported"
    )
    knowledge_not_served(project, "en", shard.name)


def test_features_rows_differ_from_corpus_shard(project: Path) -> None:
    root = project.parent
    shard = root / "data" / "features" / "de" / "train" / "part-00004.parquet"
    rewrite_features(shard, lambda table: table.slice(0, table.num_rows - 1))
    line = export_fails(project)
    prepared = root / "data" / "prepared" / "de" / "train" / "part-00004.parquet"
    assert line == (
        f"Error: {shard}: has 7 rows but {prepared} has 8 (or their sentence ids differ); "
        "re-run `structkd stage embed`"
    )
    knowledge_not_served(project, "de", shard.name)


# ---- values out of range, settings that cannot work together (issue 15) ---------------------


def set_params(params: Path, section: str, **values: object) -> None:
    """Change keys of one section of ``params``."""
    raw = yaml.safe_load(params.read_text("utf-8"))
    raw[section].update(values)
    write_params(params, raw)


def cache_snapshot(params: Path) -> dict[str, tuple[int, int, bytes]]:
    """:func:`snapshot` of ``knowledge/`` without its lock files (taken by every export)."""
    found = snapshot(params.parent / "knowledge")
    return {name: v for name, v in found.items() if not name.endswith(".lock")}


OUTPUTS = {  # what each stage would write (must stay exactly as before a refused run)
    "prepare": "data/prepared",
    "train-teacher": "models/teachers",
    "export-teachers": "knowledge",
    "train-student": "models/students",
}

# the keys the issue names, one CLI run each (every key and bound is covered in-process by
# tests/test_params.py::test_out_of_range_value_is_one_line, generated from the declarations)
RANGE_ROWS = [
    ("prepare", "shard_size", -5, "[1, inf)", ["prepare"]),
    ("teacher", "dropout", 1.5, "[0, 1)", ["train-teacher", "en"]),
    ("teacher", "max_epochs", 0, "[1, inf)", ["train-teacher", "en"]),
    ("export", "k", 0, "[1, 32767]", ["export-teachers"]),
    ("export", "workers", 0, "[1, inf)", ["export-teachers"]),
    ("student", "k", 0, "[1, 32767]", ["train-student", "topwk"]),
]


@pytest.mark.parametrize(
    ("section", "key", "value", "allowed", "stage"),
    RANGE_ROWS,
    ids=[f"{s}.{k}={v}" for s, k, v, _, _ in RANGE_ROWS],
)
def test_out_of_range_value(
    project: Path, section: str, key: str, value: object, allowed: str, stage: list[str]
) -> None:
    """One line naming key, value and range; the stage's outputs are untouched (export.k: 0
    used to delete every knowledge shard, shard_size: -5 a prepared split, workers: 0 hung)."""
    set_params(project, section, **{key: value})
    output = project.parent / OUTPUTS[stage[0]]
    before = cache_snapshot(project) if stage[0] == "export-teachers" else snapshot(output)
    line = cli_error(project, "stage", *stage)
    assert line == f"Error: {project}: {section}.{key}: {value} is not in {allowed}"
    assert (
        cache_snapshot(project) if stage[0] == "export-teachers" else snapshot(output)
    ) == before


def test_student_k_above_export_k(project: Path) -> None:
    set_params(project, "student", k=6, methods=["posterior", "topk"])
    line = student_fails(project)
    assert line == (
        f"Error: {project}: student.k: 6 is more than export.k: 5 (method topk reads the "
        "k-best paths the export keeps); lower student.k or raise export.k"
    )


def test_workers_option_zero(project: Path) -> None:
    """``--workers 0`` used to delete the shards it meant to recompute, then wait forever."""
    set_params(project, "export", k=4)  # stale knowledge: the export would recompute it
    before = cache_snapshot(project)
    line = cli_error(project, "stage", "export-teachers", "--workers", "0")
    assert line == "Error: --workers: 0 is not in [1, inf)"
    assert cache_snapshot(project) == before


def test_scheduler_that_does_not_answer(project: Path) -> None:
    """A scheduler address nobody listens on: one line after export.timeout, cache untouched."""
    import socket

    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        address = f"tcp://127.0.0.1:{free.getsockname()[1]}"
    set_params(project, "export", k=4, timeout=2.0)
    before = cache_snapshot(project)
    line = cli_error(project, "stage", "export-teachers", "--scheduler", address)
    assert line == (
        f"Error: --scheduler {address}: no dask scheduler answered within 2 s (export.timeout)"
    )
    assert cache_snapshot(project) == before


def test_cluster_without_workers(project: Path) -> None:
    """A scheduler that never gets a worker: one line after export.timeout, cache untouched."""
    from dask.distributed import LocalCluster

    set_params(project, "export", k=4, timeout=2.0)
    before = cache_snapshot(project)
    with LocalCluster(n_workers=0, processes=False, dashboard_address=":0") as cluster:
        address = cluster.scheduler_address
        line = cli_error(project, "stage", "export-teachers", "--scheduler", address)
    assert line == (
        f"Error: scheduler {address}: no worker joined within 2 s (export.timeout); "
        "start one with `dask worker <scheduler address>`"
    )
    assert cache_snapshot(project) == before


def test_non_utf8_params(project: Path) -> None:
    data = project.read_bytes().replace(b"task: upos", b"task: up\xf6s")
    project.write_bytes(data)
    line = prepare_fails(project)
    number = data[: data.index(b"\xf6")].count(b"\n") + 1
    assert line == f"Error: {project}:{number}: not valid UTF-8 (byte 0xf6)"


# ---- files structkd is pointed at: models, Parquet, text (issue 15) --------------------------


def command_error(*args: str) -> str:
    """Run ``structkd ARGS`` (no --params) in-process expecting one ``Error:`` line, exit 1."""
    from typer.testing import CliRunner

    from structkd.cli import app

    result = CliRunner().invoke(app, list(args))
    assert result.exit_code == 1, (result.exit_code, result.output, result.exception)
    assert isinstance(result.exception, SystemExit), repr(result.exception)
    return error_line(result.output)


def test_knowledge_show_on_other_parquet(project: Path, tmp_path: Path) -> None:
    prepared = project.parent / "data" / "prepared" / "en" / "train" / "part-00000.parquet"
    line = command_error("knowledge", "show", str(prepared))
    assert line == f"Error: {prepared}: holds a prepared table, expected knowledge"
    plain = tmp_path / "plain.parquet"
    pq.write_table(pa.table({"x": [1, 2]}), plain)
    line = command_error("knowledge", "show", str(plain))
    assert line == f"Error: {plain}: not a structkd shard (its footer has no structkd metadata)"


@pytest.mark.parametrize("damage", ["truncated", "garbage", "missing", "config"])
def test_predict_with_damaged_model(project: Path, damage: str) -> None:
    model = project.parent / "models" / "teachers" / "en"
    weights, config = model / "model.safetensors", model / "config.json"
    text = project.parent / "input.txt"
    text.write_text("The cat sat .\n", "utf-8")
    if damage == "truncated":
        weights.write_bytes(weights.read_bytes()[:1000])
    elif damage == "garbage":
        weights.write_bytes(b"\x00" * 64)
    elif damage == "missing":
        weights.unlink()
    else:
        config.write_text(config.read_text("utf-8")[:50], "utf-8")
    line = command_error("predict", "--model", str(model), str(text))
    expected = {
        "truncated": rf"Error: {re.escape(str(weights))}: not a valid safetensors file \(.+\)",
        "garbage": rf"Error: {re.escape(str(weights))}: not a valid safetensors file \(.+\)",
        "missing": rf"Error: {re.escape(str(weights))}: not found \(the model directory is "
        r"incomplete\)",
        "config": rf"Error: {re.escape(str(config))}: not a valid model config \(.+\)",
    }[damage]
    assert re.fullmatch(expected, line), line


def test_predict_non_utf8_text(project: Path) -> None:
    model = project.parent / "models" / "teachers" / "en"
    text = project.parent / "input.txt"
    text.write_bytes(b"The cat sat .\nLe caf" + b"\xe9 .\n")
    line = command_error("predict", "--model", str(model), str(text))
    assert line == f"Error: {text}:2: not valid UTF-8 (byte 0xe9)"


def test_student_k_below_export_k_trains_topk(project: Path) -> None:
    """``student.k: 4`` of ``export.k: 5`` paths trains topk (the stream keeps the best 4)."""
    from robust_project import cli

    set_params(project, "student", k=4, max_epochs=1, methods=["topk"])
    output = cli(project, "stage", "train-student", "topk")
    assert re.search(r"student topk: test en \d+\.\d\d de \d+\.\d\d avg", output), output
    metrics = json.loads(
        (project.parent / "models" / "students" / "topk" / "metrics.json").read_text("utf-8")
    )
    assert metrics["method"] == "topk" and 0 < metrics["test"]["avg"] <= 100


def test_resume_from_truncated_checkpoint(project: Path) -> None:
    teacher = project.parent / "models" / "teachers" / "en"
    checkpoint = teacher / "checkpoint.pt"
    checkpoint.write_bytes(checkpoint.read_bytes()[:5000])
    before = snapshot(teacher)
    line = cli_error(project, "stage", "train-teacher", "en", "--resume")
    assert re.fullmatch(
        rf"Error: {re.escape(str(checkpoint))}: not a readable checkpoint \(.+\); "
        "run without --resume to start over",
        line,
    ), line
    assert snapshot(teacher) == before


def test_device_not_on_this_machine(project: Path) -> None:
    """A runtime.device this machine lacks stops a torch stage in one line, writing nothing."""
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    raw = yaml.safe_load(project.read_text("utf-8"))
    raw["runtime"] = {"device": "cuda"}
    write_params(project, raw)
    before = snapshot(project.parent / "models" / "students")
    line = cli_error(project, "stage", "train-student", "posterior")
    assert line == f"Error: {project}: runtime.device: 'cuda' is not available on this machine"
    assert snapshot(project.parent / "models" / "students") == before
