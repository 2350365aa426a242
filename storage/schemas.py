"""Parquet schemas of the three tables structkd writes, and flat-array <-> Arrow conversion.

Tables (one row per sentence, ``n`` = sentence length, ``L`` = n_tags, ``K`` = k-best size):

* prepared corpus shard ``data/prepared/<lang>/<split>/part-NNNNN.parquet``: tokens and gold tags.
* features shard ``data/features/<encoder>/<lang>/<split>/part-NNNNN.parquet``: frozen encoder
  features, same sentences in the same order as the prepared shard of the same index.
* knowledge shard ``knowledge/<lang>/part-NNNNN.parquet``: the teacher's structured knowledge
  (design.md §3), same sentences in the same order as the prepared shard of the same index.

Ragged data goes in and out as flat numpy arrays plus per-sentence lengths (offsets are their
cumulative sums), so no Python loop ever runs per sentence: ``pa.ListArray.from_arrays`` builds
the columns and :func:`list_values` reads them back as zero-copy numpy views.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import pyarrow as pa

from structkd.pipeline.errors import InputError

SCHEMA_VERSION = 1
"""Version of every table below; bump it when a column or metadata key changes meaning."""

FloatDtype = Literal["float16", "float32"]
TableKind = Literal["prepared", "features", "knowledge"]

_INT32_MAX = 2**31 - 1
_ARROW_FLOAT = {"float16": pa.float16(), "float32": pa.float32()}


def _base_metadata(kind: TableKind) -> dict[str, str]:
    return {"schema_version": str(SCHEMA_VERSION), "table": kind}


PREPARED_SCHEMA = pa.schema(
    [
        pa.field("sent_id", pa.int64(), nullable=False),
        pa.field("tokens", pa.list_(pa.string()), nullable=False),
        pa.field("tags", pa.list_(pa.int16()), nullable=False),
        pa.field("length", pa.int32(), nullable=False),
    ],
    metadata=_base_metadata("prepared"),
)

FEATURES_SCHEMA = pa.schema(
    [
        pa.field("sent_id", pa.int64(), nullable=False),
        pa.field("length", pa.int32(), nullable=False),
        pa.field("features", pa.list_(pa.float16()), nullable=False),
    ],
    metadata=_base_metadata("features"),
)


def knowledge_schema(
    *,
    marginals_dtype: FloatDtype = "float32",
    emissions_dtype: FloatDtype = "float32",
    edge_marginals: bool = False,
) -> pa.Schema:
    """Knowledge shard schema for the chosen dtypes; ``edge_marginals`` adds the optional column."""
    fields = [
        pa.field("sent_id", pa.int64(), nullable=False),
        pa.field("length", pa.int32(), nullable=False),
        pa.field("log_z", pa.float64(), nullable=False),
        pa.field("topk_tags", pa.list_(pa.int16()), nullable=False),
        pa.field("topk_scores", pa.list_(pa.float32()), nullable=False),
        pa.field("k_valid", pa.int16(), nullable=False),
        pa.field("log_marginals", pa.list_(_ARROW_FLOAT[marginals_dtype]), nullable=False),
        pa.field("emissions", pa.list_(_ARROW_FLOAT[emissions_dtype]), nullable=False),
    ]
    if edge_marginals:
        fields.append(pa.field("edge_marginals", pa.list_(pa.float16()), nullable=False))
    return pa.schema(fields, metadata=_base_metadata("knowledge"))


KNOWLEDGE_SCHEMA = knowledge_schema()
"""The default knowledge schema (float32 marginals and emissions, no edge marginals)."""


def labels_digest(labels: Sequence[str]) -> str:
    """sha256 of the label list as canonical JSON: equal digests mean the same ids -> labels."""
    return hashlib.sha256(json.dumps(list(labels), ensure_ascii=True).encode()).hexdigest()


def decode_metadata(metadata: Mapping[bytes, bytes] | Mapping[str, str] | None) -> dict[str, str]:
    """Arrow/Parquet key-value metadata (bytes or str) as a ``str -> str`` dict."""
    out: dict[str, str] = {}
    for key, value in (metadata or {}).items():
        k = key.decode() if isinstance(key, bytes) else key
        out[k] = value.decode() if isinstance(value, bytes) else value
    return out


def _require(meta: Mapping[str, str], key: str, kind: str) -> str:
    if key not in meta:
        raise ValueError(f"{kind} shard metadata lacks {key!r}; got keys {sorted(meta)}")
    return meta[key]


@dataclass(frozen=True)
class PreparedMeta:
    """File metadata of a prepared shard: where it came from and which label set its ids use."""

    lang: str
    split: str
    source: str
    scheme: str
    labels_digest: str

    def to_metadata(self) -> dict[str, str]:
        """Key-value metadata including schema version and table kind."""
        return {
            **_base_metadata("prepared"),
            "lang": self.lang,
            "split": self.split,
            "source": self.source,
            "scheme": self.scheme,
            "labels_digest": self.labels_digest,
        }

    @classmethod
    def from_metadata(cls, metadata: Mapping[bytes, bytes] | Mapping[str, str]) -> PreparedMeta:
        """Parse what :meth:`to_metadata` wrote."""
        m = decode_metadata(metadata)
        keys = ("lang", "split", "source", "scheme", "labels_digest")
        return cls(*(_require(m, k, "prepared") for k in keys))


@dataclass(frozen=True)
class FeaturesMeta:
    """File metadata of a features shard: feature width and the encoder that produced it."""

    dim: int
    encoder_digest: str
    layer: str

    def to_metadata(self) -> dict[str, str]:
        """Key-value metadata including schema version and table kind."""
        return {
            **_base_metadata("features"),
            "dim": str(self.dim),
            "encoder_digest": self.encoder_digest,
            "layer": self.layer,
        }

    @classmethod
    def from_metadata(cls, metadata: Mapping[bytes, bytes] | Mapping[str, str]) -> FeaturesMeta:
        """Parse what :meth:`to_metadata` wrote."""
        m = decode_metadata(metadata)
        return cls(
            dim=int(_require(m, "dim", "features")),
            encoder_digest=_require(m, "encoder_digest", "features"),
            layer=_require(m, "layer", "features"),
        )


@dataclass(frozen=True, eq=False)
class KnowledgeMeta:
    """File metadata of a knowledge shard: the teacher's CRF and what the shard was made from.

    Attributes:
        labels: label list; ids in ``topk_tags`` index it.
        transitions: ``(n_tags, n_tags)``, ``transitions[i, j]`` scores moving from i to j.
        start: ``(n_tags,)`` start scores.  end: ``(n_tags,)`` end scores.
        k: k-best size K.
        cache_key: content key of the cache entry (storage.cache.cache_key).
        digests: the input digests the key was computed from.
    """

    labels: tuple[str, ...]
    transitions: np.ndarray
    start: np.ndarray
    end: np.ndarray
    k: int
    cache_key: str
    digests: Mapping[str, str] = field(default_factory=dict)
    marginals_dtype: FloatDtype = "float32"
    emissions_dtype: FloatDtype = "float32"
    edge_marginals: bool = False

    @property
    def n_tags(self) -> int:
        """Number of labels L."""
        return len(self.labels)

    def schema(self) -> pa.Schema:
        """The knowledge schema with these dtypes and this metadata."""
        base = knowledge_schema(
            marginals_dtype=self.marginals_dtype,
            emissions_dtype=self.emissions_dtype,
            edge_marginals=self.edge_marginals,
        )
        return base.with_metadata(self.to_metadata())

    def to_metadata(self) -> dict[str, str]:
        """Key-value metadata; CRF parameters as JSON (``-Infinity`` kept for forbidden moves)."""
        return {
            **_base_metadata("knowledge"),
            "labels": json.dumps(list(self.labels)),
            "transitions": json.dumps(np.asarray(self.transitions, np.float64).tolist()),
            "start": json.dumps(np.asarray(self.start, np.float64).tolist()),
            "end": json.dumps(np.asarray(self.end, np.float64).tolist()),
            "k": str(self.k),
            "dtypes": json.dumps(
                {"log_marginals": self.marginals_dtype, "emissions": self.emissions_dtype}
            ),
            "edge_marginals": json.dumps(self.edge_marginals),
            "cache_key": self.cache_key,
            "digests": json.dumps(dict(self.digests), sort_keys=True),
        }

    @classmethod
    def from_metadata(cls, metadata: Mapping[bytes, bytes] | Mapping[str, str]) -> KnowledgeMeta:
        """Parse what :meth:`to_metadata` wrote."""
        m = decode_metadata(metadata)
        dtypes = json.loads(_require(m, "dtypes", "knowledge"))
        return cls(
            labels=tuple(json.loads(_require(m, "labels", "knowledge"))),
            transitions=np.asarray(json.loads(_require(m, "transitions", "knowledge")), np.float64),
            start=np.asarray(json.loads(_require(m, "start", "knowledge")), np.float64),
            end=np.asarray(json.loads(_require(m, "end", "knowledge")), np.float64),
            k=int(_require(m, "k", "knowledge")),
            cache_key=_require(m, "cache_key", "knowledge"),
            digests=json.loads(_require(m, "digests", "knowledge")),
            marginals_dtype=dtypes["log_marginals"],
            emissions_dtype=dtypes["emissions"],
            edge_marginals=json.loads(_require(m, "edge_marginals", "knowledge")),
        )


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
                _ARROW_FLOAT[meta.marginals_dtype],
            ),
            list_array(
                stored.emissions.reshape(-1), lengths * n_tags, _ARROW_FLOAT[meta.emissions_dtype]
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
