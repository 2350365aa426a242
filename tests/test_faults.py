"""The fault matrix (reports/robustness.md): interrupted export and training, two exports into one
cache, a full disk. Stages run as real processes where the fault is a process dying (SIGKILL of
the whole process group, dask workers included) and in-process where a fault is injected.
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
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
    run_killed,
    same_tree,
    snapshot,
    spawn,
)

from structkd.storage.io import staging_dir
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
    work = staging_dir(out)  # where a run trains until it finished
    process = spawn(projects[1], "stage", "train-student", "posterior")
    wait_for(lambda: (work / "checkpoint.pt").exists(), process, "the first checkpoint")
    kill(process)
    assert student_checkpoint(work)["epoch"] < 3, "the kill should land before the last epoch"
    assert not out.exists(), "an unfinished run must not appear as a model"

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
    assert not work.exists()


def leftovers(folder: Path) -> list[Path]:
    """Hidden staging or old copies of outputs in ``folder`` (a swap that did not finish)."""
    return sorted(folder.glob(".*.tmp"))


# (function to die at, its n-th call, before or after it, what the output must then be)
PREPARE_PHASES = [
    ("structkd.pipeline.prepare:write_table_atomic", 3, "before", "old"),  # staging shards
    ("structkd.pipeline.labels:LabelSet.save", 1, "before", "old"),  # every shard staged
    ("pathlib:Path.rename", 1, "before", "old"),  # the swap not begun
    ("pathlib:Path.rename", 2, "before", "none"),  # old moved aside, new not yet in
    ("pathlib:Path.rename", 2, "after", "new"),  # new in, old not yet removed
]


def check_left(folder: Path, before: dict, left: str, keep: Path) -> None:
    """``folder`` after a kill is the old output (unchanged, not even rewritten), none, or a
    complete new one (copied to ``keep`` to compare with the rerun)."""
    if left == "old":
        assert snapshot(folder) == before
    elif left == "none":
        assert not folder.exists()
    else:
        shutil.copytree(folder, keep)


@pytest.mark.parametrize(
    ("target", "n", "when", "left"),
    PREPARE_PHASES,
    ids=[f"{t}#{n}-{w}" for t, n, w, _ in PREPARE_PHASES],
)
def test_prepare_killed_at_each_phase(
    base: Path, tmp_path: Path, target: str, n: int, when: str, left: str
) -> None:
    """SIGKILL at each phase of prepare (new shard size, so old and new outputs differ): the
    old data/prepared stays as it was, or is absent, or is the complete new one; never some
    splits of each or a split missing shards. The rerun completes and leaves nothing hidden."""
    params = copy_project(base, tmp_path / "project")
    data = params.parent / "data"
    before = snapshot(data / "prepared")
    raw = yaml.safe_load(params.read_text("utf-8"))
    raw["prepare"]["shard_size"] = 5
    write_params(params, raw)
    run_killed(params, target, n, when, "stage", "prepare")
    check_left(data / "prepared", before, left, tmp_path / "left")

    cli(params, "stage", "prepare")
    assert len(list((data / "prepared" / "en" / "train").glob("*.parquet"))) == 10  # 48 / 5
    if left == "new":
        assert same_tree(tmp_path / "left", data / "prepared")
    assert leftovers(data) == []


# (teacher.ensemble, function to die at, its n-th call, before or after it, what is then left).
# Each member trains 2 epochs (a checkpoint each) in its own staging folder inside the ensemble's
# staging tree and is renamed into it when done (one rename per member); the tree then replaces
# the old teacher folder (2 renames).
TRAIN_PHASES = [
    (1, "structkd.pipeline.training:_save_checkpoint", 2, "before", "old"),  # mid-training
    (1, "structkd.pipeline.training:write_json", 1, "before", "old"),  # trained, not yet scored
    (1, "pathlib:Path.rename", 1, "after", "old"),  # in the staging tree, not swapped in
    (1, "pathlib:Path.rename", 3, "before", "none"),  # old moved aside, new not yet in
    (1, "pathlib:Path.rename", 3, "after", "new"),  # new in, old not yet removed
    (2, "structkd.pipeline.training:_save_checkpoint", 4, "before", "old"),  # member 2 training
    (2, "structkd.pipeline.training:write_json", 2, "before", "old"),  # member 2 not yet scored
    (2, "pathlib:Path.rename", 2, "after", "old"),  # both members staged, not swapped in
    (2, "pathlib:Path.rename", 4, "before", "none"),
    (2, "pathlib:Path.rename", 4, "after", "new"),
]
MODEL_FILES = {"metrics.json", "model.safetensors", "config.json", "checkpoint.pt"}


@pytest.mark.parametrize(
    ("ensemble", "target", "n", "when", "left"),
    TRAIN_PHASES,
    ids=[f"ensemble{e}-{t}#{n}-{w}" for e, t, n, w, _ in TRAIN_PHASES],
)
def test_teacher_retrain_killed_at_each_phase(
    base: Path, tmp_path: Path, ensemble: int, target: str, n: int, when: str, left: str
) -> None:
    """SIGKILL at each phase of retraining a teacher (a single one, or an ensemble of 2) with
    another seed: its old model folder (weights, metrics.json, members) stays as it was, or is
    absent, or is the complete new one; never new weights beside old metrics, nor a new first
    member without the others. ``--resume`` then finishes the interrupted run."""
    params = copy_project(base, tmp_path / "project")
    teacher = params.parent / "models" / "teachers" / "en"
    before = snapshot(teacher)
    raw = yaml.safe_load(params.read_text("utf-8"))
    raw["teacher"].update(seed=4, ensemble=ensemble)
    write_params(params, raw)
    run_killed(params, target, n, when, "stage", "train-teacher", "en")
    check_left(teacher, before, left, tmp_path / "left")

    output = cli(params, "stage", "train-teacher", "en", "--resume")
    if target.endswith("_save_checkpoint"):
        assert "resuming after epoch 0" in output
    members = [teacher, *(teacher / "members" / f"seed-{s}" for s in range(5, 4 + ensemble))]
    assert sorted(p.name for p in (teacher / "members").iterdir()) == [p.name for p in members[1:]]
    for member in members:
        assert {p.name for p in member.iterdir()} >= MODEL_FILES
        assert torch.load(member / "checkpoint.pt", weights_only=False)["epoch"] == 1
    if left == "new":
        assert same_tree(tmp_path / "left", teacher)
    assert leftovers(teacher.parent) == []
    assert leftovers(teacher / "members") == []


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
