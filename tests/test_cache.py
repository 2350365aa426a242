"""Knowledge cache: content keys, hit/miss/stale/partial/corrupt, resume, and the file lock."""

from __future__ import annotations

import multiprocessing
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from structkd.errors import ConfigError, StructkdError
from structkd.storage.cache import CacheEntry, KnowledgeCache, cache_key, content_digest, locked
from structkd.storage.manifest import ShardRecord, read_manifest
from structkd.storage.schemas import SCHEMA_VERSION
from structkd.storage.shards import shard_name, write_table_atomic

NAMES = [shard_name(i) for i in range(3)]
DIGESTS = {"teacher_digest": "t1", "prepared_digest": "p1", "features_digest": "f1"}


def write_shard(entry: CacheEntry, key: str, name: str, log: Path | None = None) -> ShardRecord:
    """Stand-in for a teacher run: write one shard whose content depends on key and name."""
    values = np.frombuffer(f"{key}/{name}".encode(), np.uint8).astype(np.int64)
    table = pa.table({"sent_id": np.arange(len(values)), "value": values})
    table = table.replace_schema_metadata(
        {"schema_version": str(SCHEMA_VERSION), "table": "knowledge"}
    )
    record = write_table_atomic(table, entry.shard_path(name))
    if log is not None:
        with open(log, "a") as f:
            f.write(f"{name}\n")
    return record


def compute_shard(entry: CacheEntry, key: str, name: str, log: Path | None = None) -> None:
    entry.record(key, write_shard(entry, key, name, log))


def export(entry: CacheEntry, key: str, log: Path | None = None) -> str:
    """The export protocol of storage.cache, spelled out as the export stage may run it."""
    with entry.lock():
        if entry.status(key) == "hit":
            return "hit"
        entry.begin(key, inputs={"teacher": "t1"})
        for name in entry.missing_shards(key, NAMES):
            compute_shard(entry, key, name, log)
        entry.commit(key, NAMES)
        return "computed"


def shard_writer(entry: CacheEntry, key: str, log: Path, fail_at: str | None = None):
    """``compute`` for CacheEntry.ensure: writes shards one by one, can crash before one."""

    def compute(names: list[str]) -> Iterator[ShardRecord]:
        for name in names:
            if name == fail_at:
                raise KeyboardInterrupt
            yield write_shard(entry, key, name, log)

    return compute


def corrupt(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 3] ^= 0x40
    path.write_bytes(bytes(data))


@pytest.fixture
def key() -> str:
    return cache_key(**DIGESTS, settings={"k": 10, "dtype": "float16"})


@pytest.fixture
def entry(tmp_path: Path) -> CacheEntry:
    return KnowledgeCache(tmp_path / "knowledge").entry("de")


class TestKey:
    def test_deterministic_and_sensitive_to_every_input(self, key: str):
        assert key == cache_key(**DIGESTS, settings={"dtype": "float16", "k": 10})
        changed = [
            cache_key(**{**DIGESTS, name: "x"}, settings={"k": 10, "dtype": "float16"})
            for name in DIGESTS
        ]
        changed.append(cache_key(**DIGESTS, settings={"k": 5, "dtype": "float16"}))
        changed.append(
            cache_key(**DIGESTS, settings={"k": 10, "dtype": "float16"}, schema_version=1)
        )
        assert len({key, *changed}) == len(changed) + 1

    def test_settings_must_be_json(self):
        with pytest.raises(ConfigError, match="plain JSON"):
            cache_key(**DIGESTS, settings={"k": {1, 2}})
        with pytest.raises(ConfigError, match="plain JSON"):
            cache_key(**DIGESTS, settings={"temperature": float("nan")})

    def test_content_digest_of_tree(self, tmp_path: Path):
        (tmp_path / "a").mkdir()
        (tmp_path / "a" / "x.bin").write_bytes(b"1")
        (tmp_path / "y.bin").write_bytes(b"2")
        first = content_digest(tmp_path)
        (tmp_path / ".lock").write_bytes(b"")
        assert content_digest(tmp_path) == first  # hidden files do not count
        (tmp_path / "a" / "x.bin").write_bytes(b"3")
        assert content_digest(tmp_path) != first
        assert content_digest(tmp_path / "y.bin") != content_digest(tmp_path / "a" / "x.bin")
        with pytest.raises(StructkdError, match="not found"):
            content_digest(tmp_path / "none")


class TestStatus:
    def test_miss_then_hit(self, entry: CacheEntry, key: str, tmp_path: Path):
        assert entry.status(key) == "miss"
        assert entry.missing_shards(key, NAMES) == NAMES
        log = tmp_path / "log"
        assert export(entry, key, log) == "computed"
        assert entry.status(key) == "hit" and entry.problems(key) == []
        assert export(entry, key, log) == "hit"
        assert log.read_text().split() == NAMES  # each shard computed once
        assert entry.shards(key) == [entry.shard_path(n) for n in NAMES]
        assert entry.shards() == entry.shards(key)

    def test_interrupted_export_resumes_only_missing_shards(self, entry, key, tmp_path):
        log = tmp_path / "log"
        with entry.lock():
            entry.begin(key, inputs={"teacher": "t1"})
            compute_shard(entry, key, NAMES[0], log)
            compute_shard(entry, key, NAMES[2], log)
        # a shard file written but never recorded (crash between rename and manifest update)
        unrecorded = entry.shard_path(NAMES[1])
        unrecorded.write_bytes(b"half")
        fresh = KnowledgeCache(entry.path.parent).entry("de")
        assert fresh.status(key) == "partial"
        assert fresh.missing_shards(key, NAMES) == [NAMES[1]]
        with pytest.raises(StructkdError, match="knowledge is partial"):
            fresh.shards(key)
        assert export(fresh, key, log) == "computed"
        assert log.read_text().split() == [NAMES[0], NAMES[2], NAMES[1]]
        assert fresh.status(key) == "hit"

    def test_corrupt_shard_is_reported_and_recomputed(self, entry, key, tmp_path):
        export(entry, key)
        corrupt(entry.shard_path(NAMES[1]))
        assert entry.status(key) == "corrupt"
        assert "sha256 differs" in entry.problems(key)[0]
        assert entry.missing_shards(key, NAMES) == [NAMES[1]]
        with pytest.raises(StructkdError, match="knowledge is corrupt") as err:
            entry.shards(key)
        assert NAMES[1] in str(err.value)
        log = tmp_path / "log"
        assert export(entry, key, log) == "computed"
        assert log.read_text().split() == [NAMES[1]]
        assert entry.status(key) == "hit"

    def test_truncated_shard_is_corrupt(self, entry, key):
        export(entry, key)
        path = entry.shard_path(NAMES[0])
        path.write_bytes(path.read_bytes()[:-20])
        assert entry.status(key) == "corrupt"
        assert entry.missing_shards(key, NAMES) == [NAMES[0]]

    def test_malformed_manifest_is_corrupt_and_rebuilt(self, entry, key, tmp_path):
        export(entry, key)
        (entry.path / "manifest.json").write_text("{")
        assert entry.status(key) == "corrupt"
        assert entry.missing_shards(key, NAMES) == NAMES
        log = tmp_path / "log"
        assert export(entry, key, log) == "computed" and len(log.read_text().split()) == 3

    def test_stale_key_invalidates_the_whole_directory(self, entry, key, tmp_path):
        with entry.lock():
            entry.begin(key, inputs={})
            for name in [*NAMES, shard_name(7)]:
                compute_shard(entry, key, name)
            entry.commit(key, [*NAMES, shard_name(7)])
        new_key = cache_key(**{**DIGESTS, "teacher_digest": "t2"}, settings={"k": 10})
        assert entry.status(new_key) == "stale"
        assert entry.missing_shards(new_key, NAMES) == NAMES
        with entry.lock():
            entry.begin(new_key, inputs={"teacher": "t2"})
            assert not list(entry.path.glob("part-*.parquet"))  # old shards gone before writing
            assert entry.status(key) == "stale" and entry.status(new_key) == "partial"
            for name in NAMES:
                compute_shard(entry, new_key, name)
            manifest = entry.commit(new_key, NAMES)
        assert manifest.inputs == {"teacher": "t2"} and entry.status(new_key) == "hit"

    def test_commit_requires_every_shard_and_drops_extras(self, entry, key):
        with entry.lock():
            entry.begin(key, inputs={})
            for name in [*NAMES[:2], shard_name(9)]:
                compute_shard(entry, key, name)
            with pytest.raises(StructkdError, match="part-00002.parquet: cannot commit"):
                entry.commit(key, NAMES)
            compute_shard(entry, key, NAMES[2])
            entry.commit(key, NAMES)
        assert sorted(p.name for p in entry.path.glob("part-*")) == NAMES
        manifest = read_manifest(entry.path)
        assert manifest is not None and [r.name for r in manifest.shards] == NAMES

    def test_ensure_resumes_after_an_interrupt(self, entry, key, tmp_path):
        log = tmp_path / "log"
        with pytest.raises(KeyboardInterrupt):
            entry.ensure(
                key, inputs={}, expected=NAMES, compute=shard_writer(entry, key, log, NAMES[2])
            )
        assert not entry.lock().is_locked and entry.status(key) == "partial"
        done = entry.ensure(key, inputs={}, expected=NAMES, compute=shard_writer(entry, key, log))
        assert done.missing == [NAMES[2]] and log.read_text().split() == NAMES
        again = entry.ensure(key, inputs={}, expected=NAMES, compute=shard_writer(entry, key, log))
        assert again.hit and again.missing == []
        assert entry.status(key) == "hit"

    def test_changes_need_the_lock(self, entry, key):
        with pytest.raises(RuntimeError, match="entry.lock"):
            entry.begin(key, inputs={})


def _export_in_process(root: str, key: str, log: str, barrier) -> str:
    barrier.wait()
    entry = KnowledgeCache(Path(root)).entry("de")
    with entry.lock():
        if entry.status(key) == "hit":
            return "hit"
        entry.begin(key, inputs={})
        for name in entry.missing_shards(key, NAMES):
            time.sleep(0.1)  # slow "teacher": the other process must be waiting on the lock
            compute_shard(entry, key, name, Path(log))
        entry.commit(key, NAMES)
        return "computed"


def test_two_processes_share_the_cache(tmp_path: Path, key: str):
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Manager().Barrier(2)
    log = tmp_path / "log"
    with ctx.Pool(2) as pool:
        results = pool.starmap(
            _export_in_process, [(str(tmp_path / "knowledge"), key, str(log), barrier)] * 2
        )
    assert sorted(results) == ["computed", "hit"]
    assert log.read_text().split() == NAMES
    assert KnowledgeCache(tmp_path / "knowledge").entry("de").status(key) == "hit"


class TestPlan:
    """The one protocol every producer runs: plan (diagnosed once), records, commit."""

    def test_plan_hashes_each_shard_once(self, entry, key, monkeypatch):
        from structkd.storage import cache

        with pytest.raises(KeyboardInterrupt):
            entry.ensure(
                key, inputs={}, expected=NAMES, compute=shard_writer(entry, key, None, NAMES[2])
            )
        calls: list[str] = []
        verify = cache.verify_shard

        def counting(directory, record, **kwargs):
            calls.append(record.name)
            return verify(directory, record, **kwargs)

        monkeypatch.setattr(cache, "verify_shard", counting)
        with entry.lock():
            plan = entry.plan(key, inputs={}, expected=NAMES)
        assert sorted(calls) == NAMES[:2]  # the two finished shards, each hashed once
        assert not plan.hit and plan.missing == [NAMES[2]]
        assert plan.diagnosis.status == "partial" and "interrupted export" in plan.reason

        with entry.lock():
            compute_shard(entry, key, NAMES[2])
            entry.commit(key, NAMES)
            calls.clear()
            plan = entry.plan(key, inputs={}, expected=NAMES)
        assert plan.hit and plan.missing == [] and sorted(calls) == NAMES

    def test_plan_of_another_key_starts_over(self, entry, key):
        export(entry, key)
        other = cache_key(**{**DIGESTS, "teacher_digest": "t2"}, settings={})
        with entry.lock():
            plan = entry.plan(other, inputs={}, expected=NAMES)
        assert plan.diagnosis.status == "stale" and plan.missing == NAMES
        assert "made for key" in plan.reason and not list(entry.path.glob("part-*"))

    def test_locked_takes_every_lock_in_path_order(self, tmp_path):
        cache = KnowledgeCache(tmp_path / "knowledge")
        entries = [cache.entry(lang) for lang in ("en", "de", "nl")]
        order: list[str] = []
        for entry in entries:
            acquire = entry.lock().acquire

            def recording(*args, entry=entry, acquire=acquire, **kwargs):
                order.append(entry.path.name)
                return acquire(*args, **kwargs)

            entry._lock.acquire = recording
        with locked(entries):
            assert all(entry.lock().is_locked for entry in entries)
        assert order == ["de", "en", "nl"]
        assert not any(entry.lock().is_locked for entry in entries)
