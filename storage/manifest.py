"""``manifest.json``: what a shard directory should contain, with checksums.

One manifest per shard directory::

    {"schema_version": 1, "key": "<cache key>", "inputs": {"teacher": "<sha256>", ...},
     "shards": [{"name": "part-00000.parquet", "rows": 812, "sha256": "...", "bytes": 123456}],
     "complete": true}

A shard listed here was completely written (shards are renamed into place only when whole), so
:func:`verify` can tell "missing", "changed since" (size or sha256) and "unreadable" apart.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow.parquet as pq

from structkd.errors import StructkdError
from structkd.storage.io import atomic_write_text, parquet_errors, sha256_file
from structkd.storage.schemas import SCHEMA_VERSION

MANIFEST_NAME = "manifest.json"


@dataclass(frozen=True)
class ShardRecord:
    """One shard as the manifest lists it."""

    name: str
    rows: int
    sha256: str
    bytes: int

    @classmethod
    def of_file(cls, path: Path) -> ShardRecord:
        """Record of an existing, complete shard file (rows from its Parquet footer)."""
        return cls(path.name, parquet_rows(path), sha256_file(path), path.stat().st_size)


@dataclass
class Manifest:
    """Content of ``manifest.json``; ``complete`` is set only once every shard is written."""

    key: str
    inputs: dict[str, str] = field(default_factory=dict)
    shards: list[ShardRecord] = field(default_factory=list)
    complete: bool = False
    schema_version: int = SCHEMA_VERSION

    def record(self, name: str) -> ShardRecord | None:
        """The record of shard ``name``, if listed."""
        return next((r for r in self.shards if r.name == name), None)

    def to_json(self) -> str:
        """Canonical JSON text (sorted keys, one shard per line)."""
        return json.dumps(
            {
                "schema_version": self.schema_version,
                "key": self.key,
                "inputs": dict(sorted(self.inputs.items())),
                "shards": [vars(r) for r in self.shards],
                "complete": self.complete,
            },
            indent=1,
        )

    @classmethod
    def from_json(cls, text: str) -> Manifest:
        """Parse :meth:`to_json` output; raises ValueError/KeyError/TypeError if malformed."""
        data = json.loads(text)
        return cls(
            key=str(data["key"]),
            inputs={str(k): str(v) for k, v in data["inputs"].items()},
            shards=[ShardRecord(**r) for r in data["shards"]],
            complete=bool(data["complete"]),
            schema_version=int(data["schema_version"]),
        )


def parquet_rows(path: Path) -> int:
    """Row count from the Parquet footer; StructkdError if the file is not valid Parquet."""
    with parquet_errors(path):
        return int(pq.read_metadata(path).num_rows)


def write_text_atomic(path: Path, text: str) -> None:
    """Durably replace ``path`` with ``text`` (:func:`~structkd.storage.io.atomic_write`)."""
    try:
        atomic_write_text(path, text)
    except OSError as e:
        raise StructkdError(f"{path}: cannot write ({e.strerror or e})") from e


def write_manifest(directory: Path, manifest: Manifest) -> Path:
    """Atomically write ``directory/manifest.json``; returns its path."""
    path = Path(directory) / MANIFEST_NAME
    write_text_atomic(path, manifest.to_json() + "\n")
    return path


def read_manifest(directory: Path) -> Manifest | None:
    """The directory's manifest; None if there is none, StructkdError if it is malformed."""
    path = Path(directory) / MANIFEST_NAME
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    try:
        return Manifest.from_json(text)
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise StructkdError(f"{path}: not a valid manifest ({type(e).__name__}: {e})") from e


def verify_shard(directory: Path, record: ShardRecord, *, deep: bool = True) -> str | None:
    """The problem with one listed shard, or None if it matches its record.

    Args:
        directory: the shard directory.
        record: what the manifest says about the shard.
        deep: also hash the file and read its footer (otherwise existence and size only).
    """
    path = Path(directory) / record.name
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return f"{path}: missing"
    if size != record.bytes:
        return f"{path}: {size} bytes, manifest says {record.bytes} (truncated or changed)"
    if not deep:
        return None
    if sha256_file(path) != record.sha256:
        return f"{path}: sha256 differs from the manifest (corrupt or changed)"
    try:
        rows = parquet_rows(path)
    except StructkdError as e:
        return str(e)
    if rows != record.rows:
        return f"{path}: {rows} rows, manifest says {record.rows}"
    return None


def verify(directory: Path, *, deep: bool = True) -> list[str]:
    """Every problem of a shard directory against its manifest; empty means all is well.

    Reports a missing or malformed manifest, an incomplete export, and per shard: missing file,
    size or sha256 mismatch, unreadable Parquet footer, row count mismatch.
    """
    directory = Path(directory)
    try:
        manifest = read_manifest(directory)
    except StructkdError as e:
        return [str(e)]
    if manifest is None:
        return [f"{directory / MANIFEST_NAME}: missing"]
    problems = [p for r in manifest.shards if (p := verify_shard(directory, r, deep=deep))]
    if not manifest.complete:
        done = len(manifest.shards)
        problems.append(f"{directory / MANIFEST_NAME}: incomplete ({done} shards written so far)")
    return problems
