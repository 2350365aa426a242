"""Parquet schemas of the three tables structkd writes, and their typed metadata.

Tables (one row per sentence, ``n`` = sentence length, ``L`` = n_tags, ``K`` = k-best size):

* prepared corpus shard ``data/prepared/<lang>/<split>/part-NNNNN.parquet``: tokens and gold tags.
* features shard ``data/features/<encoder>/<lang>/<split>/part-NNNNN.parquet``: frozen encoder
  features, same sentences in the same order as the prepared shard of the same index.
* knowledge shard ``knowledge/<lang>/part-NNNNN.parquet``: the teacher's structured knowledge
  (design.md §3), same sentences in the same order as the prepared shard of the same index.

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

SCHEMA_VERSION = 1
"""Version of every table below; bump it when a column or metadata key changes meaning."""

FloatDtype = Literal["float16", "float32"]
TableKind = Literal["prepared", "features", "knowledge"]

ARROW_FLOAT = {"float16": pa.float16(), "float32": pa.float32()}


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
        pa.field("log_marginals", pa.list_(ARROW_FLOAT[marginals_dtype]), nullable=False),
        pa.field("emissions", pa.list_(ARROW_FLOAT[emissions_dtype]), nullable=False),
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
