"""Content-addressed knowledge cache: ``knowledge/<lang>/part-NNNNN.parquet + manifest.json``.

A language's knowledge is keyed by what produced it (teacher weights, prepared corpus, features,
export settings, schema version; :func:`cache_key`). The export of one language goes
(:meth:`CacheEntry.ensure` does exactly this)::

    entry = KnowledgeCache(root).entry("de")
    with entry.lock():                      # a second exporter waits here, then sees a hit
        if entry.status(key) != "hit":
            entry.begin(key, inputs=digests)    # a stale entry is wiped, verified shards kept
            for name in entry.missing_shards(key, names):
                entry.record(key, write_table_atomic(table, entry.shard_path(name)))
            entry.commit(key, names)

An interrupted export leaves a manifest with ``complete: false`` that lists every shard finished
so far with its checksum; the rerun recomputes only the rest. A shard whose bytes no longer match
the manifest is reported (``corrupt``) and recomputed, never served (:meth:`CacheEntry.shards`).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Literal

from filelock import FileLock

from structkd.errors import ConfigError, StructkdError
from structkd.storage.io import tree_digest
from structkd.storage.manifest import (
    MANIFEST_NAME,
    Manifest,
    ShardRecord,
    read_manifest,
    verify_shard,
    write_manifest,
)
from structkd.storage.schemas import SCHEMA_VERSION

CacheStatus = Literal["hit", "miss", "stale", "corrupt", "partial"]
SHARD_GLOB = "part-*.parquet"
LOCK_NAME = ".lock"


def cache_key(
    *,
    teacher_digest: str,
    prepared_digest: str,
    features_digest: str,
    settings: Mapping[str, object],
    schema_version: int = SCHEMA_VERSION,
) -> str:
    """sha256 of the canonical JSON of everything a language's knowledge depends on.

    Args:
        teacher_digest: digest of the teacher weights (e.g. :func:`content_digest`).
        prepared_digest: digest of the prepared corpus split it read.
        features_digest: digest of the features it read.
        settings: export settings that change the output (K, dtypes, edge marginals, ...);
            JSON values only.
        schema_version: knowledge schema version.

    Raises:
        ConfigError: a setting is not a JSON value (or is NaN/inf).
    """
    payload = {
        "teacher": teacher_digest,
        "prepared": prepared_digest,
        "features": features_digest,
        "settings": dict(settings),
        "schema_version": schema_version,
    }
    try:
        text = json.dumps(payload, sort_keys=True, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"export settings must be plain JSON values: {e}") from e
    return hashlib.sha256(text.encode()).hexdigest()


def content_digest(path: Path) -> str:
    """Digest of a file or directory tree (:func:`structkd.storage.io.tree_digest`)."""
    return tree_digest(path)


class KnowledgeCache:
    """The ``knowledge/`` directory: one :class:`CacheEntry` per language."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self._entries: dict[str, CacheEntry] = {}

    def entry(self, lang: str) -> CacheEntry:
        """The entry of ``lang`` (the same object on every call, so its lock is shared)."""
        if lang not in self._entries:
            self._entries[lang] = CacheEntry(self.root / lang)
        return self._entries[lang]


class CacheEntry:
    """One language's knowledge directory, its manifest and its inter-process lock."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._lock = FileLock(self.path / LOCK_NAME, thread_local=False)

    def lock(self) -> FileLock:
        """Inter-process lock on ``<dir>/.lock``; use ``with entry.lock():`` around an export."""
        self.path.mkdir(parents=True, exist_ok=True)
        return self._lock

    def shard_path(self, name: str) -> Path:
        """Where shard ``name`` lives."""
        return self.path / name

    def ensure(
        self,
        key: str,
        *,
        inputs: Mapping[str, str],
        expected: Sequence[str],
        compute: Callable[[list[str]], Iterable[ShardRecord]],
    ) -> list[str]:
        """Make the entry a hit for ``key``, computing only what is missing; returns those names.

        Args:
            key: the cache key.
            inputs: input digests stored in the manifest.
            expected: every shard name of a complete export.
            compute: writes the given shards (to :meth:`shard_path`, e.g. on dask workers) and
                yields each one's record as soon as it is done, so an interruption keeps them.
        """
        with self.lock():
            if self.status(key) == "hit":
                return []
            self.begin(key, inputs=inputs)
            missing = self.missing_shards(key, expected)
            for record in compute(missing):
                self.record(key, record)
            self.commit(key, expected)
            return missing

    def status(self, key: str) -> CacheStatus:
        """``hit`` (complete, every shard verified), ``miss`` (nothing), ``stale`` (other key),
        ``partial`` (interrupted export of this key) or ``corrupt`` (broken manifest or shard)."""
        return self._diagnose(key)[0]

    def problems(self, key: str) -> list[str]:
        """Why the entry is not a hit for ``key`` (one line each); empty on a hit."""
        return self._diagnose(key)[1]

    def missing_shards(self, key: str, expected: Sequence[str]) -> list[str]:
        """Names in ``expected`` that still need computing for ``key``.

        A shard is kept only if the manifest of the same key lists it and its size, sha256 and
        row count match; everything else (absent, corrupt, other key) is missing.
        """
        manifest = self._manifest_or_none()
        if manifest is None or manifest.key != key:
            return list(expected)
        return [
            name
            for name in expected
            if (record := manifest.record(name)) is None or verify_shard(self.path, record)
        ]

    def begin(self, key: str, *, inputs: Mapping[str, str]) -> None:
        """Start (or resume) exporting ``key``; call while holding :meth:`lock`.

        Another key (or an unreadable manifest) invalidates the whole directory: a fresh
        manifest is written first, then every old shard is deleted. The same key keeps the
        shards that verify and deletes the ones that do not.
        """
        self._require_lock()
        old = self._manifest_or_none()
        if old is None or old.key != key or old.schema_version != SCHEMA_VERSION:
            write_manifest(self.path, Manifest(key, dict(inputs)))
            for path in self.path.glob(SHARD_GLOB):
                path.unlink()
        else:
            keep = [r for r in old.shards if verify_shard(self.path, r) is None]
            write_manifest(self.path, Manifest(key, dict(inputs), keep))
            for record in old.shards:
                if record not in keep:
                    with contextlib.suppress(FileNotFoundError):
                        self.shard_path(record.name).unlink()
        for tmp in self.path.glob(".*.tmp"):  # leftovers of writers that crashed
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()

    def record(self, key: str, record: ShardRecord) -> None:
        """Add a freshly written shard to the manifest of ``key`` (replacing an older record)."""
        self._require_lock()
        manifest = self._manifest_for(key)
        manifest.shards = [r for r in manifest.shards if r.name != record.name] + [record]
        manifest.complete = False
        write_manifest(self.path, manifest)

    def commit(self, key: str, expected: Sequence[str]) -> Manifest:
        """Mark the export of ``key`` complete once every expected shard is recorded and present.

        Shard files not in ``expected`` (left by an older export with more shards) are deleted.

        Raises:
            StructkdError: a shard is not recorded or its file does not match its record.
        """
        self._require_lock()
        manifest = self._manifest_for(key)
        records = []
        for name in expected:
            record = manifest.record(name)
            if record is None:
                raise StructkdError(f"{self.shard_path(name)}: cannot commit, shard not recorded")
            if problem := verify_shard(self.path, record, deep=False):
                raise StructkdError(f"cannot commit: {problem}")
            records.append(record)
        wanted = set(expected)
        for path in self.path.glob(SHARD_GLOB):
            if path.name not in wanted:
                path.unlink()
        manifest.shards, manifest.complete = records, True
        write_manifest(self.path, manifest)
        return manifest

    def shards(self, key: str | None = None) -> list[Path]:
        """Shard paths of a verified, complete entry, in manifest order.

        Args:
            key: the key the caller expects; None accepts whatever key the manifest holds.

        Raises:
            StructkdError: the entry is not a hit (names the first problem).
        """
        if key is None:
            manifest = self._manifest_or_none()
            key = "" if manifest is None else manifest.key
        status, problems = self._diagnose(key)
        if status != "hit":
            raise StructkdError(
                f"{self.path}: knowledge is {status} ({problems[0]}); "
                "rerun `structkd stage export-teachers`"
            )
        manifest = self._manifest_for(key)
        return [self.shard_path(r.name) for r in manifest.shards]

    def _diagnose(self, key: str) -> tuple[CacheStatus, list[str]]:
        manifest_path = self.path / MANIFEST_NAME
        try:
            manifest = read_manifest(self.path)
        except StructkdError as e:
            return "corrupt", [str(e)]
        if manifest is None:
            return "miss", [f"{manifest_path}: missing"]
        if manifest.schema_version != SCHEMA_VERSION:
            found = manifest.schema_version
            return "stale", [f"{manifest_path}: schema version {found}, expected {SCHEMA_VERSION}"]
        if manifest.key != key:
            return "stale", [f"{manifest_path}: made for key {manifest.key[:12]}, not {key[:12]}"]
        if not manifest.complete:
            done = len(manifest.shards)
            return "partial", [f"{manifest_path}: interrupted export ({done} shards written)"]
        problems = [p for r in manifest.shards if (p := verify_shard(self.path, r))]
        return ("corrupt", problems) if problems else ("hit", [])

    def _manifest_or_none(self) -> Manifest | None:
        try:
            return read_manifest(self.path)
        except StructkdError:
            return None

    def _manifest_for(self, key: str) -> Manifest:
        manifest = read_manifest(self.path)
        if manifest is None or manifest.key != key:
            raise StructkdError(
                f"{self.path / MANIFEST_NAME}: not an export of key {key[:12]} "
                "(call begin() first; another export may have reset it)"
            )
        return manifest

    def _require_lock(self) -> None:
        if not self._lock.is_locked:
            raise RuntimeError(f"hold {self.path / LOCK_NAME} (entry.lock()) to change the cache")
