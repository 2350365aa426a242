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
