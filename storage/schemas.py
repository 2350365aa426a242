"""Parquet schemas of the three tables structkd writes, and their typed metadata.

Tables (one row per sentence, ``n`` = sentence length, ``L`` = n_tags, ``K`` = k-best size):

* prepared corpus shard ``data/prepared/<lang>/<split>/part-NNNNN.parquet``: tokens and gold tags.
* features shard ``data/features/<lang>/<split>/part-NNNNN.parquet``: frozen encoder
  features, same sentences in the same order as the prepared shard of the same index.
* knowledge shard ``knowledge/<lang>/part-NNNNN.parquet``: the teacher's structured knowledge
  (the column table below), same sentences in the same order as the prepared shard of the
  same index.

The rows themselves go in and out as flat numpy arrays: :mod:`structkd.storage.arrays`.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import pyarrow as pa

SCHEMA_VERSION = 2
"""Version of every table below; bump it when a column or metadata key changes meaning.

2: knowledge holds ``edge_sums`` (one L×L matrix per sentence) instead of version 1's
per-position ``edge_marginals`` ((n - 1)·L² values); features are one binary value per sentence
(the float16 bytes) instead of ``list<float16>``, which Parquet decodes ~8x slower.
"""

FEATURE_DTYPE = np.dtype("<f2")
"""Stored features: little-endian float16, a sentence's ``(n, dim)`` values row-major."""

FloatDtype = Literal["float16", "float32"]
TableKind = Literal["prepared", "features", "knowledge"]


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
        pa.field("features", pa.binary(), nullable=False),  # n * dim FEATURE_DTYPE values
    ],
    metadata=_base_metadata("features"),
)


KnowledgeColumn = Literal[
    "log_z", "topk_tags", "topk_scores", "k_valid", "log_marginals", "emissions", "edge_sums"
]
"""A column of teacher knowledge (besides ``sent_id`` and ``length``, which every table has)."""

Axis = Literal["sentence", "path", "token", "sentence_matrix", "path_token"]
"""What one sentence's values of a column run over: 1 value, its K paths, its n tokens, one
L×L matrix, or K paths of n tags each (path-major)."""


@dataclass(frozen=True)
class ColumnSpec:
    """The one definition of a knowledge column: stored type, size per sentence, padded form.

    Attributes:
        name: column name.
        axis: what a sentence's values run over (:data:`Axis`).
        dtype: stored numpy dtype; None when the export chooses it (``KnowledgeMeta.dtypes``).
        batch_dtype: numpy dtype in a padded batch.
        pad: value at padded positions of a batch.
        optional: written only when the export asks for it.
    """

    name: KnowledgeColumn
    axis: Axis
    dtype: str | None
    batch_dtype: str
    pad: float = 0
    optional: bool = False

    def stored_dtype(self, dtypes: Mapping[str, str]) -> np.dtype:
        """Numpy dtype on disk; ``dtypes`` maps export-chosen columns to their dtype."""
        return np.dtype(self.dtype or dtypes[self.name])

    def arrow_type(self, dtypes: Mapping[str, str]) -> pa.DataType:
        """Arrow type of the column (a list type unless one value per sentence)."""
        value = pa.from_numpy_dtype(self.stored_dtype(dtypes))
        return value if self.axis == "sentence" else pa.list_(value)

    def item_shape(self, n_tags: int) -> tuple[int, ...]:
        """Trailing shape of one item (a token's values, a sentence's matrix)."""
        return {"token": (n_tags,), "sentence_matrix": (n_tags, n_tags)}.get(self.axis, ())

    def items(self, lengths: np.ndarray, k: int) -> np.ndarray:
        """Items per sentence along the ragged axis (k paths, n tokens, one matrix, ...)."""
        lengths = np.asarray(lengths, np.int64)
        return {
            "sentence": np.ones_like(lengths),
            "path": np.full_like(lengths, k),
            "token": lengths,
            "sentence_matrix": np.ones_like(lengths),
            "path_token": k * lengths,
        }[self.axis]

    def sizes(self, lengths: np.ndarray, k: int, n_tags: int) -> np.ndarray:
        """Stored values per sentence, as a function of the lengths, K and L."""
        return self.items(lengths, k) * int(np.prod(self.item_shape(n_tags), dtype=np.int64))

    def flat_shape(self, lengths: np.ndarray, k: int, n_tags: int) -> tuple[int, ...]:
        """Shape of the column's flat array (sentences stacked), as in ``KnowledgeArrays``."""
        if self.axis == "sentence":
            return (len(lengths),)
        if self.axis == "path":
            return (len(lengths), k)
        return (int(self.items(lengths, k).sum()), *self.item_shape(n_tags))

    def padded_shape(self, batch: int, longest: int, k: int, n_tags: int) -> tuple[int, ...]:
        """Shape in a batch of ``batch`` sentences padded to ``longest`` tokens."""
        return {
            "sentence": (batch,),
            "path": (batch, k),
            "token": (batch, longest, n_tags),
            "sentence_matrix": (batch, n_tags, n_tags),
            "path_token": (batch, k, longest),
        }[self.axis]


KNOWLEDGE_COLUMNS: Mapping[KnowledgeColumn, ColumnSpec] = {
    spec.name: spec
    for spec in (
        ColumnSpec("log_z", "sentence", "float64", "float64"),
        ColumnSpec("topk_tags", "path_token", "int16", "int64", pad=-1),
        ColumnSpec("topk_scores", "path", "float32", "float32"),
        ColumnSpec("k_valid", "sentence", "int16", "int64"),
        ColumnSpec("log_marginals", "token", None, "float32"),
        ColumnSpec("emissions", "token", None, "float32"),
        ColumnSpec("edge_sums", "sentence_matrix", "float32", "float32", optional=True),
    )
}
"""Every knowledge column, in table order: read by the writer, the validator and every reader.

``edge_sums[a, b] = Σ_t q(y_t = a, y_{t+1} = b)``: the teacher's edge marginals summed over the
sentence's positions. With the node marginals (whose first and last tokens give the start and
end terms) that is all the exact structural KD needs, since a CRF's score is linear in the
transition counts; float32, since a sum reaches n - 1 and float16 would keep ~3 digits of it.
"""


def knowledge_schema(
    *,
    marginals_dtype: FloatDtype = "float32",
    emissions_dtype: FloatDtype = "float32",
    edge_marginals: bool = False,
) -> pa.Schema:
    """Knowledge shard schema for the chosen dtypes; ``edge_marginals`` adds ``edge_sums``."""
    dtypes = {"log_marginals": marginals_dtype, "emissions": emissions_dtype}
    fields = [
        pa.field("sent_id", pa.int64(), nullable=False),
        pa.field("length", pa.int32(), nullable=False),
        *(
            pa.field(spec.name, spec.arrow_type(dtypes), nullable=False)
            for spec in KNOWLEDGE_COLUMNS.values()
            if edge_marginals or not spec.optional
        ),
    ]
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
        transitions: ``(n_tags, n_tags)``, ``transitions[i, j]`` scores moving from i to j
            (of a teacher ensemble: its first member's CRF; the columns hold the mixture's).
        start: ``(n_tags,)`` start scores.  end: ``(n_tags,)`` end scores.
        k: k-best size K.
        cache_key: content key of the cache entry (storage.cache.cache_key).
        digests: the input digests the key was computed from.
        prepared: the prepared shard these rows come from, relative to the knowledge shard's
            directory ("" if unknown), so readers find the words without knowing the layout.
        marginals_dtype, emissions_dtype: stored dtypes of ``log_marginals`` and ``emissions``.
        edge_marginals: the shard holds the summed edge marginals (``edge_sums``).
        teachers: the teacher languages whose (weighted) mixture the shard holds, with their
            weights ({} when unknown: shards of older exports).
    """

    labels: tuple[str, ...]
    transitions: np.ndarray
    start: np.ndarray
    end: np.ndarray
    k: int
    cache_key: str
    digests: Mapping[str, str] = field(default_factory=dict)
    prepared: str = ""
    marginals_dtype: FloatDtype = "float32"
    emissions_dtype: FloatDtype = "float32"
    edge_marginals: bool = False
    teachers: Mapping[str, float] = field(default_factory=dict)

    @property
    def n_tags(self) -> int:
        """Number of labels L."""
        return len(self.labels)

    @property
    def columns(self) -> tuple[KnowledgeColumn, ...]:
        """The knowledge columns this shard holds, in table order."""
        return tuple(
            n for n, s in KNOWLEDGE_COLUMNS.items() if self.edge_marginals or not s.optional
        )

    @property
    def dtypes(self) -> dict[str, FloatDtype]:
        """Stored dtypes of the columns the export chooses (``ColumnSpec.dtype`` is None)."""
        return {"log_marginals": self.marginals_dtype, "emissions": self.emissions_dtype}

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
            "dtypes": json.dumps(self.dtypes),
            "edge_marginals": json.dumps(self.edge_marginals),
            "cache_key": self.cache_key,
            "digests": json.dumps(dict(self.digests), sort_keys=True),
            **({"prepared": self.prepared} if self.prepared else {}),
            **({"teachers": json.dumps(dict(self.teachers))} if self.teachers else {}),
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
            prepared=m.get("prepared", ""),
            marginals_dtype=dtypes["log_marginals"],
            emissions_dtype=dtypes["emissions"],
            edge_marginals=json.loads(_require(m, "edge_marginals", "knowledge")),
            teachers=json.loads(m.get("teachers", "{}")),
        )
