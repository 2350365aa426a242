"""Atomic Parquet shard writing and validated shard opening.

A shard is written through :func:`~structkd.storage.io.atomic_write` (temporary name, fsync,
rename, directory fsync), so a reader (or a rerun after a crash or a full disk) sees either the
whole shard or nothing. Pages carry CRC checksums, so bytes flipped inside a page are caught
when it is read, not silently decoded.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import BinaryIO

import pyarrow as pa
import pyarrow.parquet as pq

from structkd.errors import StructkdError
from structkd.storage.io import atomic_write, parquet_errors, sha256_file
from structkd.storage.manifest import ShardRecord
from structkd.storage.schemas import SCHEMA_VERSION, TableKind, decode_metadata

DEFAULT_ROW_GROUP_ROWS = 1024
"""Sentences per row group: small enough to spread a shard over several stream consumers."""


def _float_leaves(schema: pa.Schema) -> dict[str, str]:
    """Column path -> leaf path of every float column (a float, or a list of floats).

    Marginals and emissions are nearly all distinct: a dictionary page only inflates them (a
    knowledge shard took 1.4x its plain size), while byte-stream-split puts the exponent bytes
    together for zstd (8% smaller than plain at float32, and faster to write).
    """
    leaves: dict[str, str] = {}
    for f in schema:
        value, path = f.type, f.name
        while pa.types.is_list(value):
            value, path = value.value_type, f"{path}.list.element"
        if pa.types.is_floating(value):
            leaves[f.name] = path
    return leaves


def shard_name(index: int) -> str:
    """File name of shard ``index``: ``part-00007.parquet``."""
    return f"part-{index:05d}.parquet"


def write_table_atomic(
    table: pa.Table,
    path: Path,
    *,
    metadata: Mapping[str, str] | None = None,
    row_group_rows: int = DEFAULT_ROW_GROUP_ROWS,
    compression: str = "zstd",
) -> ShardRecord:
    """Write ``table`` as Parquet to ``path``: temporary name, fsync, rename.

    Args:
        table: rows to write; its schema metadata (schema version, table kind, ...) is kept.
        path: final shard path; its directory is created if needed.
        metadata: extra key-value metadata merged over the table's own.
        row_group_rows: rows per row group.
        compression: Parquet codec.

    Returns:
        The shard's manifest record (name, rows, sha256, bytes).

    Raises:
        StructkdError: writing failed (e.g. disk full); no file is left at ``path`` or the
            temporary name.
    """
    if row_group_rows < 1:
        raise ValueError(f"row_group_rows must be >= 1, got {row_group_rows}")
    path = Path(path)
    schema = table.schema.with_metadata(
        {**decode_metadata(table.schema.metadata), **dict(metadata or {})}
    )
    table = table.replace_schema_metadata(schema.metadata)
    floats = _float_leaves(schema)
    options = {
        "use_dictionary": [name for name in schema.names if name not in floats],
        "column_encoding": dict.fromkeys(floats.values(), "BYTE_STREAM_SPLIT"),
    }

    def write(f: BinaryIO) -> None:
        with pq.ParquetWriter(
            f, schema, compression=compression, write_page_checksum=True, **options
        ) as w:
            # one call per row group, so a failure can happen (and is handled) mid-file
            for start in range(0, table.num_rows, row_group_rows):
                w.write_table(table.slice(start, row_group_rows))

    try:
        atomic_write(path, write)
        return ShardRecord(path.name, table.num_rows, sha256_file(path), path.stat().st_size)
    except OSError as e:
        raise StructkdError(f"{path}: cannot write shard ({e.strerror or e})") from e


def check_metadata(
    path: Path,
    metadata: Mapping[bytes, bytes] | Mapping[str, str] | None,
    *,
    expect_schema_version: int | None = SCHEMA_VERSION,
    expect_table: TableKind | None = None,
) -> dict[str, str]:
    """Decoded shard metadata after checking its schema version and table kind.

    Raises:
        StructkdError: naming the file, what was found and what was expected.
    """
    meta = decode_metadata(metadata)
    if "table" not in meta and "schema_version" not in meta:
        raise StructkdError(f"{path}: not a structkd shard (its footer has no structkd metadata)")
    if expect_schema_version is not None:
        found = meta.get("schema_version", "none")
        if found != str(expect_schema_version):
            raise StructkdError(
                f"{path}: schema version {found}, expected {expect_schema_version} "
                "(written by another structkd version; rerun the stage that writes it)"
            )
    if expect_table is not None and meta.get("table") != expect_table:
        raise StructkdError(
            f"{path}: holds a {meta.get('table', 'unknown')!s} table, expected {expect_table}"
        )
    return meta


def open_shard(
    path: Path,
    *,
    expect_schema_version: int | None = SCHEMA_VERSION,
    expect_table: TableKind | None = None,
) -> pq.ParquetFile:
    """Open a shard for streaming (page checksums verified on read) after checking its metadata.

    The caller closes it (``with open_shard(...) as f``).

    Raises:
        StructkdError: missing, truncated or corrupt file; wrong schema version or table kind.
    """
    with parquet_errors(path):
        shard = pq.ParquetFile(path, page_checksum_verification=True)
    try:
        check_metadata(
            path,
            shard.schema_arrow.metadata,
            expect_schema_version=expect_schema_version,
            expect_table=expect_table,
        )
    except StructkdError:
        shard.close()
        raise
    return shard


def read_shard(
    path: Path,
    *,
    columns: Sequence[str] | None = None,
    expect_schema_version: int | None = SCHEMA_VERSION,
    expect_table: TableKind | None = None,
) -> pa.Table:
    """Read a whole shard (or the given columns), with the checks of :func:`open_shard`.

    Raises:
        StructkdError: as :func:`open_shard`, or a page that fails to decode or checksum.
    """
    with (
        open_shard(
            path, expect_schema_version=expect_schema_version, expect_table=expect_table
        ) as shard,
        parquet_errors(path),
    ):
        return shard.read(columns=None if columns is None else list(columns))


def shard_metadata(path: Path) -> dict[str, str]:
    """Key-value metadata of a shard from its footer, without reading any data."""
    with parquet_errors(path):
        return decode_metadata(pq.read_metadata(path).metadata)
