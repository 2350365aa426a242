"""A tiny structkd project in a temporary folder, for the bad-input and fault tests.

Real CoNLL-U slices of the shipped sample (``data/sample``) for two teacher languages, the tiny
random BERT of ``conftest`` as the encoder and tiny teachers/students, so each stage takes
seconds. :func:`run_stages` builds the artefacts once; tests copy the folder and break the copy.
"""

from __future__ import annotations

import filecmp
import os
import re
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import e2e_project
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from structkd.cli import app
from structkd.storage.manifest import ShardRecord, read_manifest, write_manifest

LANGS = ("en", "de")
SIZES = {"train": 48, "dev": 12, "test": 12}
SHARD_SIZE = 8


def build_project(root: Path, encoder_dir: Path) -> Path:
    """The end-to-end tests' tiny project with small shards and one student method: corpora
    under ``corpora/<lang>/<split>.conllu``; returns the params.yaml path."""
    return e2e_project.build_project(
        root,
        encoder_dir,
        ("posterior",),
        languages=LANGS,
        zero_shot=(),
        sizes=SIZES,
        corpus_dir="corpora",
        shard_size=SHARD_SIZE,
    )


def cli(params: Path, *args: str) -> str:
    """Run ``structkd ARGS --params PARAMS`` in-process; fails the test unless it exits 0."""
    result = CliRunner().invoke(app, [*args, "--params", str(params)])
    if result.exit_code != 0:
        command = " ".join(args)
        raise AssertionError(
            f"structkd {command} exited {result.exit_code}:\n{result.output}\n{result.exception!r}"
        )
    return result.output


def error_line(output: str) -> str:
    """The one line of ``output`` that reports an error, after checking it is the only one, it
    starts with ``Error:`` and nothing looks like a traceback (progress bars may surround it)."""
    assert "Traceback" not in output and "Exception" not in output, output
    errors = [line for line in re.split(r"[\r\n]+", output) if "error" in line.lower()]
    assert len(errors) == 1 and errors[0].startswith("Error: "), output
    return errors[0]


def cli_error(params: Path, *args: str) -> str:
    """Run ``structkd ARGS --params PARAMS`` in-process expecting a user error (exit status 1,
    no exception escaping the CLI); returns the :func:`error_line`."""
    result = CliRunner().invoke(app, [*args, "--params", str(params)])
    assert result.exit_code == 1, (result.exit_code, result.output, result.exception)
    assert isinstance(result.exception, SystemExit), repr(result.exception)
    return error_line(result.output)  # stdout and stderr, as the user sees them


def run_stages(params: Path, stages: Sequence[Sequence[str]]) -> None:
    """Run several stages in order (each a CLI argument list after ``stage``)."""
    for args in stages:
        cli(params, "stage", *args)


def snapshot(directory: Path) -> dict[str, tuple[int, int, bytes]]:
    """Every file under ``directory``: relative path -> (inode, mtime in ns, bytes); empty if
    the folder does not exist. Equal snapshots mean nothing was rewritten, not even identically."""
    if not directory.exists():
        return {}
    files = sorted(p for p in directory.rglob("*") if p.is_file())
    return {
        str(p.relative_to(directory)): (p.stat().st_ino, p.stat().st_mtime_ns, p.read_bytes())
        for p in files
    }


def same_tree(a: Path, b: Path) -> bool:
    """True when two folders hold the same file names with the same bytes."""
    cmp = filecmp.dircmp(a, b)
    if cmp.left_only or cmp.right_only or cmp.funny_files:
        return False
    _, mismatch, errors = filecmp.cmpfiles(a, b, cmp.common_files, shallow=False)
    return not mismatch and not errors and all(same_tree(a / d, b / d) for d in cmp.common_dirs)


_BASE: dict[str, Path] = {}


def base_project(tmp_path_factory: pytest.TempPathFactory, encoder_dir: Path) -> Path:
    """A project where prepare, embed, both teachers and export-teachers have run (once per test
    session, shared by the test modules; copy it with :func:`copy_project` before changing it)."""
    if "root" not in _BASE:
        root = tmp_path_factory.mktemp("robust_base")
        params = build_project(root, encoder_dir)
        teachers = [["train-teacher", lang] for lang in LANGS]
        run_stages(
            params, [["prepare"], ["embed"], *teachers, ["export-teachers", "--workers", "1"]]
        )
        _BASE["root"] = root
    return _BASE["root"]


def rewrite_parquet(path: Path, table: pa.Table) -> None:
    """Overwrite a shard with ``table`` (its schema metadata kept), bypassing every check."""
    pq.write_table(table, path)


def rerecord(shard: Path) -> None:
    """Make the manifest of ``shard``'s folder list the shard's current bytes (a consistent lie)."""
    manifest = read_manifest(shard.parent)
    assert manifest is not None
    manifest.shards = [
        ShardRecord.of_file(shard) if r.name == shard.name else r for r in manifest.shards
    ]
    write_manifest(shard.parent, manifest)


def spawn(params: Path, *args: str) -> subprocess.Popen[str]:
    """Start ``structkd ARGS --params PARAMS`` as a separate process (killable for fault tests)."""
    env = dict(os.environ, PYTHONWARNINGS="ignore", OMP_NUM_THREADS="1")
    return subprocess.Popen(
        [sys.executable, "-m", "structkd.cli", *args, "--params", str(params)],
        cwd=params.parent,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # its own process group: dask workers die with it on SIGKILL
    )


# Run the CLI in a process that SIGKILLs itself at the n-th call of one function: a kill at an
# exact phase of a stage (argv: module, attribute path, n, "before" or "after", CLI args...).
_DIE_AT = """
import functools, importlib, os, signal, sys
module, attr, n, when, *args = sys.argv[1:]
owner = importlib.import_module(module)
*path, name = attr.split(".")
for part in path:
    owner = getattr(owner, part)
original, calls = getattr(owner, name), [0]

@functools.wraps(original)
def dying(*a, **k):
    calls[0] += 1
    if calls[0] == int(n) and when == "before":
        os.kill(os.getpid(), signal.SIGKILL)
    result = original(*a, **k)
    if calls[0] == int(n) and when == "after":
        os.kill(os.getpid(), signal.SIGKILL)
    return result

setattr(owner, name, dying)
from structkd.cli import app
sys.argv = ["structkd", *args]
app()
"""


def run_killed(params: Path, target: str, n: int, when: str, *args: str) -> None:
    """Run ``structkd ARGS --params PARAMS`` in a process that SIGKILLs itself ``when`` ("before"
    or "after") the ``n``-th call of ``target`` (``module:attribute.path``); fails the test
    unless the process died that way."""
    module, attr = target.split(":")
    env = dict(os.environ, PYTHONWARNINGS="ignore", OMP_NUM_THREADS="1")
    command = [sys.executable, "-c", _DIE_AT, module, attr, str(n), when]
    result = subprocess.run(
        [*command, *args, "--params", str(params)],
        cwd=params.parent,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == -9, (result.returncode, result.stdout, result.stderr)
