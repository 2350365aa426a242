"""Shards as flat numpy arrays, and their conversion to and from Arrow tables.

Ragged data goes in and out as flat numpy arrays plus per-sentence lengths (offsets are their
cumulative sums), so no Python loop ever runs per sentence: ``pa.ListArray.from_arrays`` builds
the columns and :func:`list_values` reads them back as zero-copy numpy views. The tables' schemas
and metadata are in :mod:`structkd.storage.schemas`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from structkd.errors import InputError, StructkdError
from structkd.storage import ragged
from structkd.storage.schemas import (
    FEATURE_DTYPE,
    FEATURES_SCHEMA,
    KNOWLEDGE_COLUMNS,
    PREPARED_SCHEMA,
    FeaturesMeta,
    KnowledgeColumn,
    KnowledgeMeta,
    PreparedMeta,
)

_INT32_MAX = 2**31 - 1


def list_array(values: np.ndarray, sizes: np.ndarray, value_type: pa.DataType) -> pa.ListArray:
    """Arrow list column from flat ``values`` and per-row ``sizes`` (no per-row Python loop).

    Args:
        values: ``(sum(sizes),)`` flat values, row-major.
        sizes: ``(n_rows,)`` number of values of each row.
        value_type: Arrow type of the values.
    """
    offsets = ragged.offsets(sizes)
    if offsets[-1] != len(values):
        raise ValueError(f"values must have sum(sizes)={offsets[-1]} elements, got {len(values)}")
    if offsets[-1] > _INT32_MAX:
        raise ValueError(f"{offsets[-1]} values do not fit one list column; write smaller shards")
    return pa.ListArray.from_arrays(
        pa.array(offsets.astype(np.int32)), pa.array(values, value_type)
    )


def list_values(column: pa.Array | pa.ChunkedArray) -> tuple[np.ndarray, np.ndarray]:
    """Flat values and offsets of a list column, as numpy views where Arrow allows it.

    Handles sliced arrays (offsets not starting at 0; child array longer than the slice) and
    chunked arrays (one chunk: zero-copy; several: combined once).

    Returns:
        ``values: (offsets[-1],)`` and ``offsets: (n_rows + 1,)`` starting at 0.
    """
    if isinstance(column, pa.ChunkedArray):
        if column.num_chunks == 0:
            column = pa.array([], column.type)
        else:
            column = column.chunk(0) if column.num_chunks == 1 else column.combine_chunks()
    if column.null_count:
        raise ValueError(f"list column has {column.null_count} null rows; shards never hold nulls")
    offsets = column.offsets.to_numpy()
    first, last = int(offsets[0]), int(offsets[-1])
    values = column.values.slice(first, last - first)
    if values.null_count:
        raise ValueError(f"list column has {values.null_count} null values")
    if first:
        offsets = offsets - first
    return values.to_numpy(zero_copy_only=False), offsets


def binary_array(values: np.ndarray, sizes: np.ndarray) -> pa.BinaryArray:
    """Arrow binary column whose row i holds the bytes of the next ``sizes[i]`` flat ``values``.

    One contiguous buffer, no per-row Python loop; Parquet decodes it as plain bytes, far faster
    than a list of small floats.
    """
    values = np.ascontiguousarray(values)
    offsets = ragged.offsets(sizes) * values.itemsize
    if offsets[-1] != values.nbytes:
        raise ValueError(f"values must have sum(sizes)={offsets[-1]} bytes, got {values.nbytes}")
    if offsets[-1] > _INT32_MAX:
        raise ValueError(f"{offsets[-1]} bytes do not fit one binary column; write smaller shards")
    return pa.BinaryArray.from_buffers(
        pa.binary(),
        len(sizes),
        [None, pa.py_buffer(offsets.astype(np.int32)), pa.py_buffer(values)],
    )


def binary_values(
    column: pa.Array | pa.ChunkedArray, dtype: np.dtype
) -> tuple[np.ndarray, np.ndarray]:
    """Flat ``dtype`` values and per-row value offsets of a :func:`binary_array` column.

    Zero-copy (a view of the Arrow buffer) for one chunk; several chunks are combined once.

    Returns:
        ``values: (offsets[-1],)`` and ``offsets: (n_rows + 1,)`` starting at 0, in values.
    """
    if isinstance(column, pa.ChunkedArray):
        if column.num_chunks == 0:
            column = pa.array([], column.type)
        else:
            column = column.chunk(0) if column.num_chunks == 1 else column.combine_chunks()
    if column.null_count:
        raise ValueError(
            f"binary column has {column.null_count} null rows; shards never hold nulls"
        )
    _, offsets_buffer, data = column.buffers()
    offsets = np.frombuffer(offsets_buffer, np.int32, len(column) + 1, column.offset * 4)
    first, last = int(offsets[0]), int(offsets[-1])
    if np.any(offsets % dtype.itemsize):
        raise ValueError(f"binary column rows are not whole {dtype} values")
    raw = (
        np.frombuffer(data, np.uint8, last - first, first)
        if last > first
        else np.empty(0, np.uint8)
    )
    return raw.view(dtype), (offsets - first) // dtype.itemsize


def _column(table: pa.Table, name: str) -> np.ndarray:
    values: np.ndarray = table.column(name).to_numpy()
    return values


def _check_rows(name: str, array: np.ndarray, n_rows: int) -> None:
    if len(array) != n_rows:
        raise ValueError(f"{name} must have one entry per sentence ({n_rows}), got {len(array)}")


@dataclass(frozen=True, eq=False)
class PreparedArrays:
    """A prepared shard as flat arrays.

    Attributes:
        sent_id, lengths: ``(n_sent,)``.  tokens, tags: ``(n_tokens,)``.
    """

    sent_id: np.ndarray
    lengths: np.ndarray
    tokens: np.ndarray
    tags: np.ndarray

    def to_table(self, meta: PreparedMeta) -> pa.Table:
        """Arrow table with :data:`PREPARED_SCHEMA` and ``meta`` as schema metadata."""
        n = len(self.sent_id)
        _check_rows("lengths", self.lengths, n)
        lengths = np.asarray(self.lengths, np.int64)
        arrays = [
            pa.array(np.asarray(self.sent_id, np.int64)),
            list_array(np.asarray(self.tokens, object), lengths, pa.string()),
            list_array(np.asarray(self.tags, np.int16), lengths, pa.int16()),
            pa.array(lengths.astype(np.int32)),
        ]
        return pa.Table.from_arrays(
            arrays, schema=PREPARED_SCHEMA.with_metadata(meta.to_metadata())
        )

    @classmethod
    def from_table(cls, table: pa.Table) -> PreparedArrays:
        """Inverse of :meth:`to_table`."""
        return cls(
            sent_id=_column(table, "sent_id"),
            lengths=_column(table, "length"),
            tokens=list_values(table.column("tokens"))[0],
            tags=list_values(table.column("tags"))[0],
        )


@dataclass(frozen=True, eq=False)
class FeaturesArrays:
    """A features shard as flat arrays.

    Attributes:
        sent_id, lengths: ``(n_sent,)``.  features: ``(n_tokens, dim)`` (float16 when read: a
            view of the table's buffer).
    """

    sent_id: np.ndarray
    lengths: np.ndarray
    features: np.ndarray

    def to_table(self, meta: FeaturesMeta) -> pa.Table:
        """Arrow table with :data:`FEATURES_SCHEMA` (float16 bytes per sentence) and ``meta``."""
        n = len(self.sent_id)
        _check_rows("lengths", self.lengths, n)
        lengths = np.asarray(self.lengths, np.int64)
        if self.features.shape != (int(lengths.sum()), meta.dim):
            raise ValueError(
                f"features must be (n_tokens, dim)=({int(lengths.sum())}, {meta.dim}), "
                f"got {self.features.shape}"
            )
        with np.errstate(over="ignore"):  # overflow becomes inf, reported just below
            half = np.ascontiguousarray(self.features, FEATURE_DTYPE)
        bad = _rows_any(~np.isfinite(half), np.repeat(np.arange(n), lengths), n)
        if bad.any():
            first = int(np.flatnonzero(bad)[0])
            raise InputError(
                f"sent_id {int(self.sent_id[first])}", "features NaN or beyond float16"
            )
        arrays = [
            pa.array(np.asarray(self.sent_id, np.int64)),
            pa.array(lengths.astype(np.int32)),
            binary_array(half.reshape(-1), lengths * meta.dim),
        ]
        return pa.Table.from_arrays(
            arrays, schema=FEATURES_SCHEMA.with_metadata(meta.to_metadata())
        )

    @classmethod
    def from_table(cls, table: pa.Table, *, dim: int) -> FeaturesArrays:
        """Inverse of :meth:`to_table`; ``dim`` from :class:`FeaturesMeta`."""
        return cls(
            sent_id=_column(table, "sent_id"),
            lengths=_column(table, "length"),
            features=binary_values(table.column("features"), FEATURE_DTYPE)[0].reshape(-1, dim),
        )


@dataclass(frozen=True, eq=False)
class KnowledgeArrays:
    """A knowledge shard as flat arrays (columns: ``schemas.KNOWLEDGE_COLUMNS``).

    Attributes:
        sent_id, lengths, log_z, k_valid: ``(n_sent,)``.
        topk_tags: ``(k * n_tokens,)``; sentence i occupies ``[k*o_i, k*o_{i+1})`` with
            ``o = cumsum(lengths)``, laid out path-major ``(k, n_i)``; -1 for paths >= k_valid.
        topk_scores: ``(n_sent, k)`` non-increasing, ``-inf`` exactly for paths >= k_valid.
        log_marginals, emissions: ``(n_tokens, n_tags)``.
        edge_sums: ``(n_sent, n_tags, n_tags)``, sentence i's edge marginals summed over its
            positions (zero for one token), or None.
    """

    sent_id: np.ndarray
    lengths: np.ndarray
    log_z: np.ndarray
    topk_tags: np.ndarray
    topk_scores: np.ndarray
    k_valid: np.ndarray
    log_marginals: np.ndarray
    emissions: np.ndarray
    edge_sums: np.ndarray | None = None

    def validate(self, meta: KnowledgeMeta) -> None:
        """Check shapes (ValueError) and teacher outputs (InputError naming the sentence).

        NaN anywhere, +inf anywhere, -inf in log Z or emissions, or k-best padding that does not
        follow the contract is a teacher bug that must never reach the student. Shapes come
        from :data:`~structkd.storage.schemas.KNOWLEDGE_COLUMNS`.
        """
        n, k, n_tags = len(self.sent_id), meta.k, meta.n_tags
        specs = [KNOWLEDGE_COLUMNS[name] for name in meta.columns]
        for name in ("lengths", *(s.name for s in specs if s.axis == "sentence")):
            _check_rows(name, getattr(self, name), n)
        lengths = np.asarray(self.lengths, np.int64)
        if n and lengths.min() < 1:
            raise ValueError(f"lengths must be >= 1, got {lengths.min()}")
        if not meta.edge_marginals and self.edge_sums is not None:
            raise ValueError("edge_sums given but meta.edge_marginals is False")
        for spec in specs:
            if spec.axis != "sentence":
                want = spec.flat_shape(lengths, k, n_tags)
                got = None if (value := getattr(self, spec.name)) is None else value.shape
                if want != got:
                    raise ValueError(f"{spec.name} must have shape {want}, got {got}")
        tok_sent = np.repeat(np.arange(n), lengths)
        bad = {
            "log_z is not finite": ~np.isfinite(self.log_z),
            "emissions contain NaN or inf": _rows_any(~np.isfinite(self.emissions), tok_sent, n),
            "log_marginals contain NaN or +inf": _rows_any(
                np.isnan(self.log_marginals) | (self.log_marginals == np.inf), tok_sent, n
            ),
        }
        if self.edge_sums is not None:
            sums = np.asarray(self.edge_sums, np.float64)
            bad["edge_sums contain NaN or inf"] = _rows_any(~np.isfinite(sums), np.arange(n), n)
            # Σ_ab of the matrix counts the sentence's edges: n - 1 (0 if it has no path)
            total = sums.sum(axis=(1, 2))
            bad["edge_sums do not sum to length - 1"] = np.isfinite(total) & ~np.isclose(
                total, lengths - 1, rtol=1e-4, atol=1e-3
            )
        k_valid = np.asarray(self.k_valid, np.int64)
        pad = np.arange(k)[None, :] >= k_valid[:, None]
        scores = np.asarray(self.topk_scores, np.float64)
        bad["k_valid out of [1, k]"] = (k_valid < 1) | (k_valid > k)
        # a real path must score finite; a missing one (pad) must be -inf, nothing else
        bad["topk_scores must be finite for real paths and -inf for missing ones"] = (
            (np.isfinite(scores) == pad) | (pad & (scores != -np.inf))
        ).any(axis=1)
        bad["topk_scores increase"] = ((scores[:, 1:] > scores[:, :-1]) & ~pad[:, 1:]).any(axis=1)
        # path index of every flat topk_tags entry, to check that padding paths hold -1 only
        n_tok = int(lengths.sum())
        path = np.arange(k * n_tok) - np.repeat(k * ragged.offsets(lengths)[:-1], k * lengths)
        path //= np.repeat(lengths, k * lengths)
        tags = np.asarray(self.topk_tags, np.int64)
        pad_tok = path >= np.repeat(k_valid, k * lengths)
        wrong = np.where(pad_tok, tags != -1, (tags < 0) | (tags >= n_tags))
        bad["topk_tags must be label ids for real paths and -1 for missing ones"] = _rows_any(
            wrong, np.repeat(np.arange(n), k * lengths), n
        )
        for problem, rows in bad.items():
            if rows.any():
                first = int(np.flatnonzero(rows)[0])
                raise InputError(f"sent_id {int(self.sent_id[first])}", problem)

    def to_table(self, meta: KnowledgeMeta) -> pa.Table:
        """Validated Arrow table with ``meta.schema()`` (dtypes and metadata from ``meta``).

        Values are validated once, as stored, after the cast to their column dtype, so an
        emission that overflows float16 is caught rather than stored as inf.
        """
        specs = [KNOWLEDGE_COLUMNS[name] for name in meta.columns]
        dtypes = {s.name: s.stored_dtype(meta.dtypes) for s in specs}
        with np.errstate(over="ignore"):
            stored = dataclasses.replace(
                self,
                **{
                    name: np.asarray(getattr(self, name), dtype)
                    for name, dtype in dtypes.items()
                    if dtype.kind == "f" and getattr(self, name) is not None
                },
            )
        stored.validate(meta)
        lengths = np.asarray(self.lengths, np.int64)
        arrays = [pa.array(np.asarray(self.sent_id, np.int64)), pa.array(lengths.astype(np.int32))]
        for spec in specs:
            value = np.asarray(getattr(stored, spec.name), dtypes[spec.name])
            if spec.axis == "sentence":
                arrays.append(pa.array(value))
            else:
                sizes = spec.sizes(lengths, meta.k, meta.n_tags)
                arrays.append(
                    list_array(value.reshape(-1), sizes, spec.arrow_type(meta.dtypes).value_type)
                )
        return pa.Table.from_arrays(arrays, schema=meta.schema())

    def tokens(self, i: int) -> slice:
        """Rows of sentence ``i`` in the per-token arrays (``log_marginals``, ``emissions``)."""
        offs = ragged.offsets(np.asarray(self.lengths, np.int64))
        return slice(int(offs[i]), int(offs[i + 1]))

    def paths(self, i: int) -> np.ndarray:
        """``(k, n_i)`` k-best tag paths of sentence ``i``, rank by rank (-1 for missing ones)."""
        k, span = self.topk_scores.shape[1], self.tokens(i)
        return self.topk_tags[k * span.start : k * span.stop].reshape(k, span.stop - span.start)

    @classmethod
    def from_table(cls, table: pa.Table, *, k: int, n_tags: int) -> KnowledgeArrays:
        """Inverse of :meth:`to_table`; ``k`` and ``n_tags`` from :class:`KnowledgeMeta`."""
        names = [n for n in KNOWLEDGE_COLUMNS if n in table.column_names]
        lengths = _column(table, "length")
        columns = read_knowledge(table, names, lengths=lengths, k=k, n_tags=n_tags)
        return cls(sent_id=_column(table, "sent_id"), lengths=lengths, **columns)


def read_knowledge(
    source: pa.Table | pa.RecordBatch,
    names: Sequence[KnowledgeColumn],
    *,
    lengths: np.ndarray,
    k: int,
    n_tags: int,
    k_out: int | None = None,
    where: Callable[[int], str] = lambda row: f"row {row}",
) -> dict[str, np.ndarray]:
    """The one reader of knowledge columns: flat arrays laid out as in :class:`KnowledgeArrays`.

    Every row's value count is checked against its column's size rule, and with ``k_out < k``
    only the best ``k_out`` paths are kept (``topk_tags``, ``topk_scores``; ``k_valid`` clamped),
    so a reader never pads paths it does not use.

    Args:
        source: the table or record batch holding the columns.
        names: columns to read.
        lengths: ``(n_rows,)`` sentence lengths of the rows.
        k, n_tags: the shard's K and L (:class:`KnowledgeMeta`).
        k_out: paths to keep; None keeps all K.
        where: names row j in an error ("<path>: row 12").

    Raises:
        StructkdError: a row holds the wrong number of values for its column.
    """
    lengths = np.asarray(lengths, np.int64)
    out: dict[str, np.ndarray] = {}
    for name in names:
        spec = KNOWLEDGE_COLUMNS[name]
        if spec.axis == "sentence":
            out[name] = source.column(name).to_numpy()
            continue
        values, offsets = list_values(source.column(name))
        got, want = np.diff(offsets), spec.sizes(lengths, k, n_tags)
        if not np.array_equal(got, want):
            j = int(np.flatnonzero(got != want)[0])
            raise StructkdError(f"{where(j)}: {name} has {got[j]} values, expected {want[j]}")
        out[name] = values.reshape(spec.flat_shape(lengths, k, n_tags))
    if k_out is not None and k_out < k:
        out = _keep_paths(out, lengths, k, k_out)
    return out


def _keep_paths(
    columns: dict[str, np.ndarray], lengths: np.ndarray, k: int, k_out: int
) -> dict[str, np.ndarray]:
    """The columns with only each sentence's best ``k_out`` of ``k`` paths."""
    out = dict(columns)
    if "topk_tags" in out:  # sentence i: k blocks of n_i tags from k * offsets[i]; keep k_out
        within = np.arange(len(out["topk_tags"])) - np.repeat(
            k * ragged.offsets(lengths)[:-1], k * lengths
        )
        out["topk_tags"] = out["topk_tags"][within < np.repeat(k_out * lengths, k * lengths)]
    if "topk_scores" in out:
        out["topk_scores"] = out["topk_scores"][:, :k_out]
    if "k_valid" in out:
        out["k_valid"] = np.minimum(out["k_valid"], k_out).astype(out["k_valid"].dtype)
    return out


def _rows_any(flags: np.ndarray, row_of: np.ndarray, n_rows: int) -> np.ndarray:
    """Per-sentence OR of per-element ``flags``; ``row_of`` maps leading index -> sentence."""
    if len(row_of) == 0:
        return np.zeros(n_rows, bool)
    per_item = flags.reshape(len(row_of), -1).any(axis=1)
    return np.bincount(row_of[per_item], minlength=n_rows) > 0
