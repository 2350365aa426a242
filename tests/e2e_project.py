"""A tiny structkd project in a temporary directory, for the end-to-end tests.

Real CoNLL-U slices of the shipped sample (data/sample) and some of its French unlabeled text
(labelled by a weighted mixture of the teachers), the tiny random BERT of conftest as the
encoder, tiny teachers and students and small prepared shards, so every stage runs in seconds
while still writing several shards per language. The layout mirrors the repository (corpora under
``data/sample``), so the real ``dvc.yaml`` works unchanged once :func:`init_dvc` has copied it
and the code folders it lists as dependencies.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml
from typer.testing import CliRunner

from structkd.cli import app

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "data" / "sample"
TEACHERS = ("en", "de")
ZERO_SHOT = ("fr",)
SPLIT_SIZES = {"train": 60, "dev": 20, "test": 20}
UNLABELED_LINES, UNLABELED_LIMIT = 40, 30  # lines of the sample's French unlabeled text, kept
UNLABELED_TEACHERS = {"en": 2.0, "de": 1.0}  # its teachers' weights (a weighted mixture)
SHARD_SIZE = 25
UPOS = [
    "ADJ", "ADP", "ADV", "AUX", "CCONJ", "DET", "INTJ", "NOUN", "NUM", "PART", "PRON", "PROPN",
    "PUNCT", "SCONJ", "SYM", "VERB", "X",
]  # fmt: skip
METHODS = ("baseline", "posterior", "topwk", "structural")


def slice_conllu(source: Path, target: Path, n: int) -> None:
    """Copy the first ``n`` sentences of a CoNLL-U file verbatim (comments, multiword lines)."""
    blocks = [b for b in source.read_text("utf-8").split("\n\n") if b.strip()]
    if len(blocks) < n:
        raise ValueError(f"{source} has {len(blocks)} sentences, need {n}")
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text("\n\n".join(b.strip("\n") for b in blocks[:n]) + "\n\n", "utf-8")


def project_params(
    encoder_dir: Path,
    methods: Sequence[str] = METHODS,
    *,
    languages: Sequence[str] = TEACHERS,
    zero_shot: Sequence[str] = ZERO_SHOT,
    corpus_dir: str = "data/sample",
    shard_size: int = SHARD_SIZE,
) -> dict:
    """params.yaml content of a tiny project (corpora at ``<corpus_dir>/<lang>/<split>.conllu``,
    relative to the project root)."""

    def corpus(lang: str, splits: Sequence[str]) -> dict:
        paths = {s: f"{corpus_dir}/{lang}/{s}.conllu" for s in splits}
        return {"format": "conllu", "scheme": "none", **paths}

    def unlabeled(lang: str) -> dict:
        path = f"{corpus_dir}/{lang}/unlabeled.txt"
        teachers = {t: w for t, w in UNLABELED_TEACHERS.items() if t in languages}
        return {"path": path, "teachers": teachers, "limit": UNLABELED_LIMIT}

    train = {"max_tokens": 400, "max_epochs": 2, "patience": 2, "lr": 0.01, "seed": 3}
    return {
        "data": {
            "task": "upos",
            "labels": UPOS,
            "languages": {lang: corpus(lang, ("train", "dev", "test")) for lang in languages},
            "zero_shot": {lang: corpus(lang, ("test",)) for lang in zero_shot},
            "unlabeled": {lang: unlabeled(lang) for lang in zero_shot},
        },
        "prepare": {"shard_size": shard_size},
        "embed": {
            "encoder": str(encoder_dir),
            "layer": -1,
            "window": 64,
            "batch_size": 16,
            "dtype": "float32",
        },
        "teacher": {
            **train,
            "hidden": 16,
            "dropout": 0.1,
            "word_dim": 8,
            "char_dim": 8,
            "char_hidden": 8,
        },
        # float32: tests/test_export.py recomputes everything from the stored emissions
        "export": {
            "k": 5,
            "marginals_dtype": "float32",
            "emissions_dtype": "float32",
            "edge_marginals": True,
            "workers": 1,
        },
        "student": {
            **train,
            "methods": [m for m in methods if m != "baseline"],  # always trained
            "hidden": 16,
            "dropout": 0.1,
            "k": 5,
            "temperature": 1.0,
            "shuffle_buffer": 50,
        },
        "runtime": {"device": "cpu", "threads": 1},
    }


def build_project(
    root: Path,
    encoder_dir: Path,
    methods: Sequence[str] = METHODS,
    *,
    languages: Sequence[str] = TEACHERS,
    zero_shot: Sequence[str] = ZERO_SHOT,
    sizes: dict[str, int] = SPLIT_SIZES,
    corpus_dir: str = "data/sample",
    shard_size: int = SHARD_SIZE,
) -> Path:
    """Write the sliced corpora and params.yaml under ``root``; returns the params.yaml path."""
    for lang in languages:
        for split, n in sizes.items():
            target = root / corpus_dir / lang / f"{split}.conllu"
            slice_conllu(SAMPLE / lang / f"{split}.conllu", target, n)
    for lang in zero_shot:
        target = root / corpus_dir / lang / "test.conllu"
        slice_conllu(SAMPLE / lang / "test.conllu", target, sizes["test"])
        lines = (SAMPLE / lang / "unlabeled.txt").read_text("utf-8").splitlines(keepends=True)
        (target.parent / "unlabeled.txt").write_text("".join(lines[:UNLABELED_LINES]), "utf-8")
    params = project_params(
        encoder_dir,
        methods,
        languages=languages,
        zero_shot=zero_shot,
        corpus_dir=corpus_dir,
        shard_size=shard_size,
    )
    return write_params(root / "params.yaml", params)


def write_params(path: Path, params: dict) -> Path:
    """Write a params dict as YAML; returns ``path``."""
    path.write_text(yaml.safe_dump(params, sort_keys=False), "utf-8")
    return path


def read_params(path: Path) -> dict:
    """Read params.yaml as a plain dict."""
    return yaml.safe_load(path.read_text("utf-8"))


def copy_project(source: Path, target: Path) -> Path:
    """Copy a built project (outputs included) so a test can change it; returns its params.yaml."""
    shutil.copytree(source, target, symlinks=True, ignore=shutil.ignore_patterns(".lock"))
    return target / "params.yaml"


@contextlib.contextmanager
def one_torch_thread() -> Iterator[None]:
    """Run torch on one thread: for models this small its thread pool only adds overhead, and
    on a busy 2-core machine a contended pool makes every op many times slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@dataclass(frozen=True)
class Project:
    """A tiny project after the whole pipeline ran; ``logs`` maps each command to its output."""

    root: Path
    params: Path
    logs: dict[str, str]


def run_pipeline(params: Path, methods: Sequence[str] = METHODS) -> dict[str, str]:
    """Every stage by hand, in pipeline order (the baseline, always trained, before the export),
    export twice; returns each command's output."""
    commands = [
        ("prepare",),
        ("embed",),
        *(("train-teacher", lang) for lang in TEACHERS),
        ("train-student", "baseline"),  # dvc.yaml's train-baseline: before the export
        ("export-teachers",),
    ]
    logs = {" ".join(c): cli("stage", *c, "--params", str(params)) for c in commands}
    logs["export-teachers again"] = cli("stage", "export-teachers", "--params", str(params))
    distilled = [m for m in methods if m != "baseline"]
    for command in [*(("train-student", m) for m in distilled), ("evaluate",)]:
        logs[" ".join(command)] = cli("stage", *command, "--params", str(params))
    return logs


_SHARED: dict[Path, Project] = {}


def shared_project(root: Path, encoder_dir: Path) -> Project:
    """The tiny project with the whole pipeline run, built once per test session (memoised by
    ``root``) and shared by every test that only reads it; tests that change it copy it."""
    if root not in _SHARED:
        params = build_project(root, encoder_dir)
        with one_torch_thread():
            _SHARED[root] = Project(root, params, run_pipeline(params))
    return _SHARED[root]


def cli(*args: str) -> str:
    """Run ``structkd ARGS`` in-process; returns stdout + stderr, fails the test on exit != 0."""
    result = CliRunner().invoke(app, list(args))
    output = result.output
    if result.exit_code != 0:
        raise AssertionError(
            f"structkd {' '.join(args)} exited {result.exit_code}:\n{output}"
            + (f"\n{result.exception!r}" if result.exception else "")
        )
    return output


def cli_error(*args: str) -> str:
    """Run ``structkd ARGS`` in-process expecting a user error; returns its stderr."""
    result = CliRunner().invoke(app, list(args))
    if result.exit_code != 1 or not isinstance(result.exception, SystemExit):
        raise AssertionError(
            f"structkd {' '.join(args)}: expected a one-line error and exit 1, got exit "
            f"{result.exit_code}:\n{result.output}\n{result.exception!r}"
        )
    return result.stderr


def tool_env() -> dict[str, str]:
    """Environment for subprocesses: this venv's ``structkd``/``dvc`` first on PATH, git identity,
    one torch thread (see :func:`one_torch_thread`)."""
    env = dict(os.environ)
    env["OMP_NUM_THREADS"] = "1"
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.update(
        GIT_AUTHOR_NAME="structkd tests",
        GIT_AUTHOR_EMAIL="tests@structkd.invalid",
        GIT_COMMITTER_NAME="structkd tests",
        GIT_COMMITTER_EMAIL="tests@structkd.invalid",
        DVC_NO_ANALYTICS="1",
        PYTHONWARNINGS="ignore",
    )
    return env


def run(args: Sequence[str], cwd: Path, timeout: float = 600) -> str:
    """Run a command in ``cwd``; returns stdout + stderr, fails the test on exit != 0."""
    done = subprocess.run(
        list(args),
        cwd=cwd,
        env=tool_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    output = done.stdout + done.stderr
    if done.returncode != 0:
        raise AssertionError(f"{' '.join(args)} exited {done.returncode} in {cwd}:\n{output}")
    return output


def init_dvc(root: Path) -> None:
    """Make ``root`` a git + dvc repository with the real dvc.yaml, its code deps and a commit.

    ``dvc.yaml`` lists the code folders as dependencies (so a code change re-runs what it
    affects); copies of them stand in here. The stages still run the installed ``structkd``.
    """
    shutil.copy2(REPO / "dvc.yaml", root / "dvc.yaml")
    shutil.copy2(REPO / ".dvcignore", root / ".dvcignore")
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for folder in ("structkd", "stages", "pipeline", "storage"):
        shutil.copytree(REPO / folder, root / folder, ignore=ignore)
    run(["git", "init", "-q", "-b", "main"], root)
    run(["dvc", "init", "-q"], root)
    run(["dvc", "config", "core.autostage", "true"], root)
    run(["git", "add", "-A"], root)
    run(["git", "commit", "-q", "-m", "tiny structkd project"], root)
