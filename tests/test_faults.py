"""The fault matrix (reports/robustness.md): interrupted export and training, two exports into one
cache, a full disk. Stages run as real processes where the fault is a process dying (SIGKILL of
the whole process group, dask workers included) and in-process where a fault is injected.
"""

from __future__ import annotations

import errno
import json
import os
import re
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch
import yaml
from dask.distributed import LocalCluster
from e2e_project import copy_project, write_params
from robust_project import (
    LANGS,
    base_project,
    cli,
    cli_error,
    same_tree,
    snapshot,
    spawn,
)

from structkd.storage.manifest import read_manifest, verify

pytestmark = pytest.mark.slow  # builds a project and runs stages up to export


@pytest.fixture
def base(tmp_path_factory: pytest.TempPathFactory, tiny_encoder_dir: Path) -> Path:
    """The built project (read-only: tests copy it)."""
    return base_project(tmp_path_factory, tiny_encoder_dir)


def fresh_export(base: Path, target: Path) -> Path:
    """A copy of the built project without knowledge; returns its params.yaml."""
    params = copy_project(base, target)
    for lang in LANGS:
        for path in (params.parent / "knowledge" / lang).iterdir():
            path.unlink()
    return params


def wait_for(condition: Callable[[], bool], process: subprocess.Popen[str], what: str) -> None:
    """Poll ``condition`` every 10 ms until it holds; fail if ``process`` ends first."""
    deadline = time.monotonic() + 300
    while not condition():
        if process.poll() is not None:
            raise AssertionError(f"process ended before {what}:\n{process.communicate()[0]}")
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


def kill(process: subprocess.Popen[str]) -> None:
    """SIGKILL the process and its process group (its dask scheduler and workers)."""
    os.killpg(process.pid, signal.SIGKILL)
    process.communicate(timeout=60)
    assert process.returncode == -signal.SIGKILL


def finish(process: subprocess.Popen[str]) -> str:
    """Wait for a process; fail the test unless it exits 0; returns its output."""
    output, _ = process.communicate(timeout=600)
    assert process.returncode == 0, output
    return output


def test_export_killed_midway_reruns_only_missing_shards(base: Path, tmp_path: Path) -> None:
    """SIGKILL after the first knowledge shard lands; the rerun computes exactly the shards the
    manifest does not list, leaves the others untouched and ends equal to an uninterrupted run."""
    params = fresh_export(base, tmp_path / "project")
    folder = params.parent / "knowledge" / "en"
    process = spawn(params, "stage", "export-teachers", "--workers", "1")

    def landed() -> bool:
        manifest = read_manifest(folder) if (folder / "manifest.json").exists() else None
        return manifest is not None and len(manifest.shards) > 0

    wait_for(landed, process, "the first recorded shard")
    kill(process)

    manifest = read_manifest(folder)
    assert manifest is not None and not manifest.complete
    kept = {r.name for r in manifest.shards}
    total = len(list((params.parent / "data" / "prepared" / "en" / "train").iterdir()))
    assert 1 <= len(kept) < total, "the kill should land mid-way through en"
    before = snapshot(folder)

    output = cli(params, "stage", "export-teachers", "--workers", "1")
    assert (
        f"knowledge en: computing {total - len(kept)} of {total} shards "
        f"({folder / 'manifest.json'}: interrupted export ({len(kept)} shards written))"
    ) in output
    after = snapshot(folder)
    for name in kept:  # not recomputed, not even rewritten
        assert after[name] == before[name]
    assert same_tree(params.parent / "knowledge", base / "knowledge")


def student_checkpoint(folder: Path) -> dict:
    """The student's last checkpoint."""
    return torch.load(folder / "checkpoint.pt", weights_only=False)


def test_student_killed_mid_epoch_resumes_to_same_weights(base: Path, tmp_path: Path) -> None:
    """SIGKILL the student right after its first checkpoint; ``--resume`` continues from it and
    ends with exactly the weights (and history) of an uninterrupted run with the same seed."""
    projects = []
    for name in ("uninterrupted", "interrupted"):
        params = copy_project(base, tmp_path / name)
        raw = yaml.safe_load(params.read_text("utf-8"))
        raw["student"].update(max_epochs=4, patience=10)
        projects.append(write_params(params, raw))
    reference = spawn(projects[0], "stage", "train-student", "posterior")
    out = projects[1].parent / "models" / "students" / "posterior"
    process = spawn(projects[1], "stage", "train-student", "posterior")
    wait_for(lambda: (out / "checkpoint.pt").exists(), process, "the first checkpoint")
    kill(process)
    assert student_checkpoint(out)["epoch"] < 3, "the kill should land before the last epoch"

    output = finish(spawn(projects[1], "stage", "train-student", "posterior", "--resume"))
    assert re.search(r"student posterior: resuming after epoch \d", output), output
    finish(reference)
    expected = student_checkpoint(projects[0].parent / "models" / "students" / "posterior")
    resumed = student_checkpoint(out)
    assert resumed["epoch"] == expected["epoch"] == 3
    assert expected["model"].keys() == resumed["model"].keys()
    for name, tensor in expected["model"].items():
        assert torch.equal(tensor, resumed["model"][name]), name
    losses = [row["train_loss"] for row in expected["history"]]
    assert [row["train_loss"] for row in resumed["history"]] == losses


def test_two_exports_into_one_cache_at_once(base: Path, tmp_path: Path) -> None:
    """Both processes finish; per language exactly one computes while the other waits on the
    lock and then finds the entry complete; the cache equals a single export's."""
    params = fresh_export(base, tmp_path / "project")
    processes = [spawn(params, "stage", "export-teachers", "--workers", "1") for _ in range(2)]
    outputs = "".join(finish(p) for p in processes)
    for lang in LANGS:
        assert len(re.findall(rf"knowledge {lang}: computing \d+ of \d+ shards", outputs)) == 1
        assert len(re.findall(rf"knowledge {lang}: up to date, no teacher run", outputs)) == 1
        assert verify(params.parent / "knowledge" / lang) == []
    assert same_tree(params.parent / "knowledge", base / "knowledge")


class FullDisk(pq.ParquetWriter):
    """A ParquetWriter whose third shard runs out of space after its data reached the file."""

    shards = 0

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)
        FullDisk.shards += 1

    def write_table(self, table: object, row_group_size: int | None = None) -> None:
        super().write_table(table, row_group_size)
        if FullDisk.shards == 3:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_disk_full_on_shard_write(
    base: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ENOSPC while a knowledge shard is written: one clear line, no partial or temporary file,
    the export stays incomplete, and a rerun with space again completes it correctly. The
    export runs on an in-process dask cluster so the injected writer reaches its workers."""
    params = fresh_export(base, tmp_path / "project")
    threads = torch.get_num_threads()  # the teacher sets 1 thread in its (here: our) process
    FullDisk.shards = 0
    monkeypatch.setattr(pq, "ParquetWriter", FullDisk)
    cluster = LocalCluster(
        n_workers=1, threads_per_worker=1, processes=False, dashboard_address=":0"
    )
    try:
        scheduler = ["--scheduler", cluster.scheduler_address]
        line = cli_error(params, "stage", "export-teachers", *scheduler)
        match = re.fullmatch(
            r"Error: (.+/part-\d{5}\.parquet): cannot write shard \(No space left on device\)",
            line,
        )
        assert match, line
        shard = Path(match.group(1))
        assert shard.parent.parent == params.parent / "knowledge"
        assert not shard.exists()
        # no temporary file of it either (a shard still in flight on the worker may leave its
        # own; the rerun below removes such leftovers, as the final comparison shows)
        assert not list(shard.parent.glob(f".{shard.name}.*.tmp"))
        assert not json.loads((shard.parent / "manifest.json").read_text("utf-8"))["complete"]

        monkeypatch.undo()
        cli(params, "stage", "export-teachers", *scheduler)
    finally:
        cluster.close()
        torch.set_num_threads(threads)
    assert same_tree(params.parent / "knowledge", base / "knowledge")
