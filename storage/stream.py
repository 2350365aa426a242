"""Streaming pools of training sentences from features, gold tags and teacher knowledge shards.

Shard i of a language's features, prepared corpus and knowledge hold the same sentences in the
same order, so they are zipped row by row, never joined (a row count, sent_id or length mismatch
is an error naming both files). Each consumer (rank x dataloader worker) reads only its own
contiguous block of shards (huggingface/datasets ``split_shard_indices_by_worker``); with fewer
shards than consumers it falls back to row groups, then to every n-th sentence, so that every
sentence is yielded exactly once per epoch across all consumers.

Memory is bounded by the shuffle buffer plus one read batch per open shard, whatever the number
of shards: sentences are pooled until ``buffer_size`` and each pool is handed out as flat numpy
arrays (:data:`Chunk`). This module is numpy only; cutting a pool into padded torch batches is
``structkd.pipeline.batching.DistillationStream``.

Note for DistributedDataParallel: ranks may get different numbers of batches; the trainer must
cope (e.g. ``Join`` or a fixed step count per epoch).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from structkd.errors import ConfigError, InputError, StructkdError
from structkd.storage import ragged
from structkd.storage.arrays import binary_values, list_values, read_knowledge
from structkd.storage.io import parquet_errors
from structkd.storage.schemas import (
    FEATURE_DTYPE,
    KNOWLEDGE_COLUMNS,
    FeaturesMeta,
    KnowledgeColumn,
    KnowledgeMeta,
    PreparedMeta,
    TableKind,
    labels_digest,
)
from structkd.storage.shards import check_metadata, open_shard

_KINDS: tuple[TableKind, ...] = ("prepared", "features", "knowledge")
_BASE_COLUMNS = ["sent_id", "length"]
_SAME_ORDER = "(shards must hold the same sentences in the same order)"


@dataclass(frozen=True)
class LanguageShards:
    """One language's shard lists of one split; index i of each list covers the same
    sentences. ``name`` tells the sources apart: ``<lang>`` for a training split,
    ``<split>/<lang>`` otherwise (``unlabeled/fr``, as its knowledge entry)."""

    lang: str
    prepared: Sequence[Path]
    features: Sequence[Path]
    knowledge: Sequence[Path] | None = None
    split: str = "train"

    @property
    def name(self) -> str:
        """The source's name among the stream's sources (:attr:`ShardStream.langs`)."""
        return self.lang if self.split == "train" else f"{self.split}/{self.lang}"


@dataclass(frozen=True)
class _Shard:
    lang_id: int
    paths: tuple[Path, ...]  # prepared, features[, knowledge]
    rows: int
    row_groups: tuple[int, ...]  # row-group boundaries of the features file: 0, ..., rows


_Unit = tuple[int, int, int]  # shard index, first row, stop row
Chunk = dict[str, np.ndarray]
"""Flat numpy columns of consecutive sentences: ``lang``, ``sent_id``, ``lengths`` ``(n,)``,
``tags`` ``(n_tokens,)``, ``features`` ``(n_tokens * dim,)`` float16 and the knowledge columns read,
laid out as in :class:`~structkd.storage.arrays.KnowledgeArrays` (with only K paths)."""


class ShardStream:
    """Pools of sentences mixing languages, sharded over ranks and workers (numpy only).

    Args:
        sources: one :class:`LanguageShards` per language.
        knowledge_columns: knowledge columns to read (only what the KD method needs).
        k: k-best paths to keep (``topk_*`` columns; ``k_valid`` clamped); None keeps every
            path the shards hold.
        shuffle: shuffle shard order (per epoch) and the reads; False gives a deterministic
            order for evaluation.
        seed: base seed; epoch e uses ``(seed, e)``.
        buffer_size: sentences pooled before a pool is handed out (the shuffle window).
        interleave: shards read at once when shuffling, so a pool mixes shards and languages.
        read_rows: rows per read; ``buffer_size >= interleave * read_rows`` lets every pool
            draw from all open shards.
        rank, world_size: this process in distributed training.

    Attributes:
        stored_k: K of the knowledge shards (None when no knowledge is read).
        k: paths per sentence in the pools: ``k`` when given, else ``stored_k``.
        dim, labels: feature width and the knowledge's label list, from the footers.
    """

    def __init__(
        self,
        sources: Sequence[LanguageShards],
        *,
        knowledge_columns: Sequence[KnowledgeColumn] = (),
        k: int | None = None,
        shuffle: bool = True,
        seed: int = 0,
        buffer_size: int,
        interleave: int = 8,
        read_rows: int = 256,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        for name, value in [
            ("buffer_size", buffer_size),
            ("interleave", interleave),
            ("read_rows", read_rows),
            ("k", 1 if k is None else k),
        ]:
            if value < 1:
                raise ConfigError(f"{name} must be >= 1, got {value}")
        unknown = set(knowledge_columns) - set(KNOWLEDGE_COLUMNS)
        if unknown:
            raise ConfigError(f"unknown knowledge columns {sorted(unknown)}")
        self.world_size, self.rank = world_size, rank
        if not 0 <= self.rank < self.world_size:
            raise ConfigError(f"rank must be in [0, world_size={self.world_size}), got {self.rank}")
        self.langs = tuple(s.name for s in sources)
        if not self.langs or len(set(self.langs)) != len(self.langs):
            raise ConfigError(f"sources must name distinct languages, got {list(self.langs)}")
        self.knowledge_columns = tuple(dict.fromkeys(knowledge_columns))
        self.shuffle, self.seed = shuffle, seed
        self.buffer_size, self.interleave, self.read_rows = buffer_size, interleave, read_rows
        self.epoch = 0
        self.peak_pool_sentences = 0
        self.dim = 0
        self.stored_k: int | None = None
        self.labels: tuple[str, ...] | None = None
        self._labels_digest: tuple[str, Path] | None = None
        self._shards = [sh for i, src in enumerate(sources) for sh in self._scan(i, src)]
        if k is not None and self.stored_k is not None and k > self.stored_k:
            raise ConfigError(f"k = {k} but the knowledge holds only K = {self.stored_k} paths")
        self.k = self.stored_k if k is None or self.stored_k is None else k

    @property
    def n_tags(self) -> int:
        """Number of labels L of the knowledge (0 when none is read)."""
        return len(self.labels or ())

    @property
    def total_sentences(self) -> int:
        """Sentences per epoch over all consumers."""
        return sum(sh.rows for sh in self._shards)

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch's shuffle (call before creating the epoch's iterator)."""
        self.epoch = epoch

    def consumer_rng(self, worker_id: int, num_workers: int) -> np.random.Generator:
        """The random stream of one consumer's epoch; pass it to :meth:`pools` and reuse it to
        batch the pools, so one seed fixes the whole order."""
        if not 0 <= worker_id < num_workers:
            raise ValueError(f"worker_id must be in [0, {num_workers}), got {worker_id}")
        return np.random.default_rng([self.seed, self.epoch, self.rank * num_workers + worker_id])

    def pools(self, worker_id: int, num_workers: int, rng: np.random.Generator) -> Iterator[Chunk]:
        """Pools of about ``buffer_size`` sentences of dataloader worker ``worker_id`` of
        ``num_workers`` on this rank, each one :data:`Chunk`; ``rng`` from :meth:`consumer_rng`."""
        if not 0 <= worker_id < num_workers:
            raise ValueError(f"worker_id must be in [0, {num_workers}), got {worker_id}")
        n_consumers = self.world_size * num_workers
        consumer = self.rank * num_workers + worker_id
        units, stride = self._plan(n_consumers, consumer)
        pool: list[Chunk] = []
        pooled = 0
        for chunk in self._chunks(units, stride, consumer, rng):
            pool.append(chunk)
            pooled += len(chunk["sent_id"])
            self.peak_pool_sentences = max(self.peak_pool_sentences, pooled)
            if pooled >= self.buffer_size:
                yield {name: np.concatenate([c[name] for c in pool]) for name in pool[0]}
                pool, pooled = [], 0
        if pool:
            yield {name: np.concatenate([c[name] for c in pool]) for name in pool[0]}

    # ---- planning -------------------------------------------------------------------------

    def _scan(self, lang_id: int, src: LanguageShards) -> list[_Shard]:
        """Read every footer once: row counts, row groups, and cross-file consistency."""
        lists = [list(src.prepared), list(src.features)]
        if self.knowledge_columns:
            if src.knowledge is None:
                raise ConfigError(
                    f"knowledge columns {list(self.knowledge_columns)} requested but language "
                    f"{src.lang!r} has no knowledge shards"
                )
            lists.append(list(src.knowledge))
        if len({len(x) for x in lists}) != 1:
            counts = ", ".join(f"{k} {len(x)}" for k, x in zip(_KINDS, lists, strict=False))
            raise StructkdError(f"language {src.lang!r}: shard counts differ ({counts})")
        shards = []
        for paths in zip(*lists, strict=True):
            footers = [
                self._footer(Path(p), kind, src.lang)
                for p, kind in zip(paths, _KINDS, strict=False)
            ]
            rows = [f.num_rows for f in footers]
            for path, n in zip(paths[1:], rows[1:], strict=False):
                if n != rows[0]:
                    raise StructkdError(
                        f"{paths[0]} has {rows[0]} rows but {path} has {n} {_SAME_ORDER}"
                    )
            sizes = [footers[1].row_group(i).num_rows for i in range(footers[1].num_row_groups)]
            bounds = tuple(int(b) for b in ragged.offsets(np.asarray(sizes, np.int64)))
            shards.append(_Shard(lang_id, tuple(Path(p) for p in paths), rows[0], bounds))
        return shards

    def _footer(self, path: Path, kind: TableKind, lang: str) -> pq.FileMetaData:
        with parquet_errors(path):
            footer = pq.read_metadata(path)
        raw = check_metadata(path, footer.metadata, expect_table=kind)
        try:
            self._check_meta(path, kind, lang, raw, footer)
        except (ValueError, KeyError, TypeError) as e:
            raise StructkdError(f"{path}: malformed {kind} metadata ({e})") from e
        return footer

    def _check_meta(
        self, path: Path, kind: TableKind, lang: str, raw: dict[str, str], footer: pq.FileMetaData
    ) -> None:
        if kind == "prepared":
            meta = PreparedMeta.from_metadata(raw)
            if meta.lang != lang:
                raise StructkdError(f"{path}: holds language {meta.lang!r}, listed as {lang!r}")
            self._same_labels(meta.labels_digest, path)
        elif kind == "features":
            dim = FeaturesMeta.from_metadata(raw).dim
            if self.dim and dim != self.dim:
                raise StructkdError(f"{path}: feature dim {dim}, other shards have {self.dim}")
            self.dim = dim
        else:
            self._check_knowledge(path, KnowledgeMeta.from_metadata(raw), footer)

    def _same_labels(self, digest: str, path: Path) -> None:
        if self._labels_digest is None:
            self._labels_digest = (digest, path)
        elif digest != self._labels_digest[0]:
            raise StructkdError(
                f"{path}: label set differs from that of {self._labels_digest[1]} "
                "(one label set per task)"
            )

    def _check_knowledge(self, path: Path, meta: KnowledgeMeta, footer: pq.FileMetaData) -> None:
        names = footer.schema.to_arrow_schema().names
        if absent := [c for c in self.knowledge_columns if c not in names]:
            raise ConfigError(f"{path}: has no column {absent[0]} (re-export with it)")
        if self.stored_k is not None and meta.k != self.stored_k:
            raise StructkdError(
                f"{path}: exported with K={meta.k}, other shards have K={self.stored_k}"
            )
        self.stored_k, self.labels = meta.k, meta.labels
        self._same_labels(labels_digest(meta.labels), path)

    def _plan(self, n_consumers: int, consumer: int) -> tuple[list[_Unit], int | None]:
        """This consumer's units in reading order, and the stride for every-n-th fallback."""
        units = [(i, 0, sh.rows) for i, sh in enumerate(self._shards) if sh.rows]
        if len(units) < n_consumers:  # too few shards: split them at row-group boundaries
            units = [
                (i, a, b)
                for i, sh in enumerate(self._shards)
                for a, b in pairwise(sh.row_groups)
                if b > a
            ]
        if self.shuffle:
            order = np.random.default_rng([self.seed, self.epoch]).permutation(len(units))
            units = [units[j] for j in order]
        if len(units) < n_consumers:  # still too few: everyone reads all, keeps every n-th
            return units, n_consumers
        per, extra = divmod(len(units), n_consumers)
        start = consumer * per + min(consumer, extra)
        return units[start : start + per + (consumer < extra)], None

    # ---- reading --------------------------------------------------------------------------

    def _chunks(
        self, units: list[_Unit], stride: int | None, consumer: int, rng: np.random.Generator
    ) -> Iterator[Chunk]:
        """Chunks of the units, drawn at random from ``interleave`` open units when shuffling."""
        bases = ragged.offsets(np.array([b - a for _, a, b in units], np.int64))
        pending = iter(range(len(units)))
        keep = None if stride is None else (stride, consumer)

        def open_next() -> Iterator[Chunk] | None:
            j = next(pending, None)
            return None if j is None else self._unit_chunks(units[j], int(bases[j]), keep)

        width = self.interleave if self.shuffle else 1
        active = [r for r in (open_next() for _ in range(width)) if r is not None]
        while active:
            i = int(rng.integers(len(active))) if self.shuffle else 0
            chunk = next(active[i], None)
            if chunk is not None:
                yield chunk
            elif (replacement := open_next()) is not None:
                active[i] = replacement
            else:
                active.pop(i)

    def _unit_chunks(self, unit: _Unit, base: int, keep: tuple[int, int] | None) -> Iterator[Chunk]:
        index, start, stop = unit
        shard = self._shards[index]
        columns = [
            [*_BASE_COLUMNS, "tags"],
            [*_BASE_COLUMNS, "features"],
            [*_BASE_COLUMNS, *self.knowledge_columns],
        ]
        with contextlib.ExitStack() as stack:
            streams = []
            for path, kind, cols in zip(shard.paths, _KINDS, columns, strict=False):
                f = stack.enter_context(open_shard(path, expect_table=kind))
                streams.append(_read_range(f, path, cols, start, stop, self.read_rows))
            row = start
            for batches in _zip_aligned(streams, shard.paths):
                n = batches[0].num_rows
                if keep is not None:
                    rows = np.flatnonzero((base + row - start + np.arange(n)) % keep[0] == keep[1])
                    batches = [b.take(pa.array(rows)) for b in batches]
                    chunk = self._to_chunk(batches, shard, row, rows)
                else:
                    chunk = self._to_chunk(batches, shard, row, np.arange(n))
                row += n
                if len(chunk["sent_id"]):
                    yield chunk

    def _to_chunk(
        self, batches: list[pa.RecordBatch], shard: _Shard, row: int, rows: np.ndarray
    ) -> Chunk:
        """Numpy columns of aligned record batches, after checking they are the same sentences."""
        ids = batches[0].column("sent_id").to_numpy()
        lengths = batches[0].column("length").to_numpy().astype(np.int64)
        for batch, path in zip(batches[1:], shard.paths[1:], strict=True):
            for name, ref in (("sent_id", ids), ("length", lengths)):
                other = batch.column(name).to_numpy()
                if not np.array_equal(other, ref):
                    j = int(np.flatnonzero(other != ref)[0])
                    raise StructkdError(
                        f"{shard.paths[0]}: row {row + rows[j]} has {name} {ref[j]} but {path} "
                        f"has {name} {other[j]} {_SAME_ORDER}"
                    )
        if len(lengths) and lengths.min() < 1:
            j = int(np.argmin(lengths))
            raise InputError(f"{shard.paths[0]}: sentence {row + rows[j]}", "empty sentence")
        chunk: Chunk = {
            "lang": np.full(len(ids), shard.lang_id, np.int64),
            "sent_id": ids,
            "lengths": lengths,
            "tags": _ragged(batches[0], "tags", lengths, shard.paths[0], row, rows),
            "features": _ragged(
                batches[1], "features", lengths * self.dim, shard.paths[1], row, rows, FEATURE_DTYPE
            ),
        }
        if self.knowledge_columns:
            path = shard.paths[2]
            chunk |= read_knowledge(
                batches[2],
                self.knowledge_columns,
                lengths=lengths,
                k=self.stored_k or 0,
                n_tags=self.n_tags,
                k_out=self.k,
                where=lambda j: f"{path}: row {row + rows[j]}",
            )
        return chunk


def _ragged(
    batch: pa.RecordBatch,
    name: str,
    sizes: np.ndarray,
    path: Path,
    row: int,
    rows: np.ndarray,
    binary: np.dtype | None = None,
) -> np.ndarray:
    """Flat values of list column ``name`` (a binary column of ``binary`` values, when given)
    after checking every row has ``sizes`` values."""
    column = batch.column(name)
    values, offsets = list_values(column) if binary is None else binary_values(column, binary)
    got = np.diff(offsets)
    if not np.array_equal(got, sizes):
        j = int(np.flatnonzero(got != sizes)[0])
        raise StructkdError(
            f"{path}: row {row + rows[j]}: {name} has {got[j]} values, expected {sizes[j]}"
        )
    return values


def _read_range(
    shard: pq.ParquetFile, path: Path, columns: list[str], start: int, stop: int, batch_rows: int
) -> Iterator[pa.RecordBatch]:
    """Record batches of rows ``[start, stop)``, reading only the row groups that overlap."""
    meta = shard.metadata
    bounds = ragged.offsets(
        np.array([meta.row_group(i).num_rows for i in range(meta.num_row_groups)], np.int64)
    )
    first = int(np.searchsorted(bounds, start, side="right")) - 1
    last = int(np.searchsorted(bounds, stop, side="left"))
    pos = int(bounds[first])
    with parquet_errors(path):
        for batch in shard.iter_batches(
            batch_size=batch_rows,
            row_groups=list(range(first, last)),
            columns=columns,
            use_threads=False,
        ):
            lo, hi = max(start - pos, 0), min(stop - pos, batch.num_rows)
            if hi > lo:
                yield batch.slice(lo, hi - lo)
            pos += batch.num_rows
            if pos >= stop:
                return


def _zip_aligned(
    streams: list[Iterator[pa.RecordBatch]], paths: tuple[Path, ...]
) -> Iterator[list[pa.RecordBatch]]:
    """Equal-length slices of several record-batch streams (their batch sizes may differ)."""
    fronts: list[pa.RecordBatch | None] = [None] * len(streams)
    while True:
        for i, stream in enumerate(streams):
            while fronts[i] is None or fronts[i].num_rows == 0:  # type: ignore[union-attr]
                fronts[i] = next(stream, None)
                if fronts[i] is None:
                    break
        ended = [f is None for f in fronts]
        if all(ended):
            return
        if any(ended):
            raise StructkdError(
                f"{paths[ended.index(True)]} ended before {paths[ended.index(False)]} {_SAME_ORDER}"
            )
        n = min(f.num_rows for f in fronts if f is not None)
        yield [f.slice(0, n) for f in fronts if f is not None]
        fronts = [f.slice(n) for f in fronts if f is not None]
