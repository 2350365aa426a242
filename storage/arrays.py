"""Shards as flat numpy arrays, and their conversion to and from Arrow tables.

Ragged data goes in and out as flat numpy arrays plus per-sentence lengths (offsets are their
cumulative sums), so no Python loop ever runs per sentence: ``pa.ListArray.from_arrays`` builds
the columns and :func:`list_values` reads them back as zero-copy numpy views. The tables' schemas
and metadata are in :mod:`structkd.storage.schemas`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from structkd.errors import InputError
from structkd.storage.schemas import (
    ARROW_FLOAT,
    FEATURES_SCHEMA,
    PREPARED_SCHEMA,
    FeaturesMeta,
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
    offsets = np.zeros(len(sizes) + 1, np.int64)
    np.cumsum(sizes, out=offsets[1:])
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


def _column(table: pa.Table, name: str) -> np.ndarray:
    return table.column(name).to_numpy()


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
        sent_id, lengths: ``(n_sent,)``.  features: ``(n_tokens, dim)``.
    """

    sent_id: np.ndarray
    lengths: np.ndarray
    features: np.ndarray

    def to_table(self, meta: FeaturesMeta) -> pa.Table:
        """Arrow table with :data:`FEATURES_SCHEMA` (float16 features) and ``meta``."""
        n = len(self.sent_id)
        _check_rows("lengths", self.lengths, n)
        lengths = np.asarray(self.lengths, np.int64)
        if self.features.shape != (int(lengths.sum()), meta.dim):
            raise ValueError(
                f"features must be (n_tokens, dim)=({int(lengths.sum())}, {meta.dim}), "
                f"got {self.features.shape}"
            )
        with np.errstate(over="ignore"):  # overflow becomes inf, reported just below
            half = np.ascontiguousarray(self.features, np.float16)
        bad = _rows_any(~np.isfinite(half), np.repeat(np.arange(n), lengths), n)
        if bad.any():
            first = int(np.flatnonzero(bad)[0])
            raise InputError(
                f"sent_id {int(self.sent_id[first])}", "features NaN or beyond float16"
            )
        flat = half.reshape(-1)
        arrays = [
            pa.array(np.asarray(self.sent_id, np.int64)),
            pa.array(lengths.astype(np.int32)),
            list_array(flat, lengths * meta.dim, pa.float16()),
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
            features=list_values(table.column("features"))[0].reshape(-1, dim),
        )


@dataclass(frozen=True, eq=False)
class KnowledgeArrays:
    """A knowledge shard as flat arrays (design.md §3).

    Attributes:
        sent_id, lengths, log_z, k_valid: ``(n_sent,)``.
        topk_tags: ``(k * n_tokens,)``; sentence i occupies ``[k*o_i, k*o_{i+1})`` with
            ``o = cumsum(lengths)``, laid out path-major ``(k, n_i)``; -1 for paths >= k_valid.
        topk_scores: ``(n_sent, k)`` non-increasing, ``-inf`` exactly for paths >= k_valid.
        log_marginals, emissions: ``(n_tokens, n_tags)``.
        edge_marginals: ``(n_edges, n_tags, n_tags)`` with ``n_edges = sum(lengths - 1)``, or None.
    """

    sent_id: np.ndarray
    lengths: np.ndarray
    log_z: np.ndarray
    topk_tags: np.ndarray
    topk_scores: np.ndarray
    k_valid: np.ndarray
    log_marginals: np.ndarray
    emissions: np.ndarray
    edge_marginals: np.ndarray | None = None

    def validate(self, meta: KnowledgeMeta) -> None:
        """Check shapes (ValueError) and teacher outputs (InputError naming the sentence).

        NaN anywhere, +inf anywhere, -inf in log Z or emissions, or k-best padding that does not
        follow the contract is a teacher bug that must never reach the student.
        """
        n, k, n_tags = len(self.sent_id), meta.k, meta.n_tags
        for name in ("lengths", "log_z", "k_valid"):
            _check_rows(name, getattr(self, name), n)
        lengths = np.asarray(self.lengths, np.int64)
        if n and lengths.min() < 1:
            raise ValueError(f"lengths must be >= 1, got {lengths.min()}")
        n_tok = int(lengths.sum())
        shapes = {
            "topk_tags": ((k * n_tok,), self.topk_tags.shape),
            "topk_scores": ((n, k), self.topk_scores.shape),
            "log_marginals": ((n_tok, n_tags), self.log_marginals.shape),
            "emissions": ((n_tok, n_tags), self.emissions.shape),
        }
        if meta.edge_marginals:
            edges = self.edge_marginals
            shapes["edge_marginals"] = (
                (n_tok - n, n_tags, n_tags),
                None if edges is None else edges.shape,
            )
        elif self.edge_marginals is not None:
            raise ValueError("edge_marginals given but meta.edge_marginals is False")
        for name, (want, got) in shapes.items():
            if want != got:
                raise ValueError(f"{name} must have shape {want}, got {got}")
        tok_sent = np.repeat(np.arange(n), lengths)
        bad = {
            "log_z is not finite": ~np.isfinite(self.log_z),
            "emissions contain NaN or inf": _rows_any(~np.isfinite(self.emissions), tok_sent, n),
            "log_marginals contain NaN or +inf": _rows_any(
                np.isnan(self.log_marginals) | (self.log_marginals == np.inf), tok_sent, n
            ),
        }
        if self.edge_marginals is not None:
            edge_sent = np.repeat(np.arange(n), lengths - 1)
            bad["edge_marginals contain NaN or inf"] = _rows_any(
                ~np.isfinite(self.edge_marginals), edge_sent, n
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
        path = np.arange(k * n_tok) - np.repeat(k * (np.cumsum(lengths) - lengths), k * lengths)
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

        Values are validated as stored, after the cast to their column dtype, so an emission
        that overflows float16 is caught rather than stored as inf.
        """
        with np.errstate(over="ignore"):
            stored = dataclasses.replace(
                self,
                topk_scores=np.asarray(self.topk_scores, np.float32),
                log_marginals=np.asarray(self.log_marginals, meta.marginals_dtype),
                emissions=np.asarray(self.emissions, meta.emissions_dtype),
                edge_marginals=(
                    None
                    if self.edge_marginals is None
                    else np.asarray(self.edge_marginals, np.float16)
                ),
            )
        stored.validate(meta)
        lengths = np.asarray(self.lengths, np.int64)
        k, n_tags = meta.k, meta.n_tags
        arrays = [
            pa.array(np.asarray(self.sent_id, np.int64)),
            pa.array(lengths.astype(np.int32)),
            pa.array(np.asarray(self.log_z, np.float64)),
            list_array(np.asarray(self.topk_tags, np.int16), lengths * k, pa.int16()),
            list_array(stored.topk_scores.reshape(-1), np.full(len(lengths), k), pa.float32()),
            pa.array(np.asarray(self.k_valid, np.int16)),
            list_array(
                stored.log_marginals.reshape(-1),
                lengths * n_tags,
                ARROW_FLOAT[meta.marginals_dtype],
            ),
            list_array(
                stored.emissions.reshape(-1), lengths * n_tags, ARROW_FLOAT[meta.emissions_dtype]
            ),
        ]
        if stored.edge_marginals is not None:
            flat = stored.edge_marginals.reshape(-1)
            arrays.append(list_array(flat, (lengths - 1) * n_tags * n_tags, pa.float16()))
        return pa.Table.from_arrays(arrays, schema=meta.schema())

    @classmethod
    def from_table(cls, table: pa.Table, *, k: int, n_tags: int) -> KnowledgeArrays:
        """Inverse of :meth:`to_table`; ``k`` and ``n_tags`` from :class:`KnowledgeMeta`."""
        edges = None
        if "edge_marginals" in table.column_names:
            edges = list_values(table.column("edge_marginals"))[0].reshape(-1, n_tags, n_tags)
        return cls(
            sent_id=_column(table, "sent_id"),
            lengths=_column(table, "length"),
            log_z=_column(table, "log_z"),
            topk_tags=list_values(table.column("topk_tags"))[0],
            topk_scores=list_values(table.column("topk_scores"))[0].reshape(-1, k),
            k_valid=_column(table, "k_valid"),
            log_marginals=list_values(table.column("log_marginals"))[0].reshape(-1, n_tags),
            emissions=list_values(table.column("emissions"))[0].reshape(-1, n_tags),
            edge_marginals=edges,
        )


def _rows_any(flags: np.ndarray, row_of: np.ndarray, n_rows: int) -> np.ndarray:
    """Per-sentence OR of per-element ``flags``; ``row_of`` maps leading index -> sentence."""
    if len(row_of) == 0:
        return np.zeros(n_rows, bool)
    per_item = flags.reshape(len(row_of), -1).any(axis=1)
    return np.bincount(row_of[per_item], minlength=n_rows) > 0
