"""Padded torch batches: the one ``Batch``, the one token-budget batcher, the one padder.

Everything upstream hands out flat ragged numpy arrays (sentences stacked, see
:mod:`structkd.storage.ragged`); this module is where they become ``(B, N, ...)`` tensors, for
in-memory splits (:func:`structkd.pipeline.data.iterate`), the teacher's export and the
student's stream (:class:`DistillationStream`). Knowledge columns are padded by their entry in
:data:`~structkd.storage.schemas.KNOWLEDGE_COLUMNS` (padded shape, dtype, pad value).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from structkd.errors import ConfigError
from structkd.pipeline.params import StudentParams
from structkd.storage import ragged
from structkd.storage.schemas import KNOWLEDGE_COLUMNS, ColumnSpec, KnowledgeColumn
from structkd.storage.stream import Chunk, LanguageShards, ShardStream

__all__ = [
    "Batch",
    "DistillationStream",
    "Padder",
    "budget_batches",
    "token_budget_cuts",
]


@dataclass
class Batch:
    """A padded batch (B sentences, N = longest length); optional fields are None unless read.

    Attributes:
        features: ``(B, N, dim)`` float32.  mask: ``(B, N)`` bool.  tags: ``(B, N)`` long gold
            (0 at padding).  lengths: ``(B,)`` long.
        tokens: the sentences' words (in-memory splits and the export).  index: their positions
            in the split.
        lang, sent_id: ``(B,)`` long (streamed batches); ``lang`` indexes
            :attr:`DistillationStream.langs`.
        log_z: ``(B,)`` float64.  topk_tags: ``(B, K, N)`` long, -1 at padding and missing paths.
        topk_scores: ``(B, K)`` float32, -inf for missing paths.  k_valid: ``(B,)`` long.
        log_marginals, emissions: ``(B, N, L)`` float32.  edge_sums: ``(B, L, L)`` float32.
    """

    features: torch.Tensor
    mask: torch.Tensor
    tags: torch.Tensor
    lengths: torch.Tensor
    tokens: list[list[str]] | None = None
    index: list[int] | None = None
    lang: torch.Tensor | None = None
    sent_id: torch.Tensor | None = None
    log_z: torch.Tensor | None = None
    topk_tags: torch.Tensor | None = None
    topk_scores: torch.Tensor | None = None
    k_valid: torch.Tensor | None = None
    log_marginals: torch.Tensor | None = None
    emissions: torch.Tensor | None = None
    edge_sums: torch.Tensor | None = None

    def select(self, rows: torch.Tensor) -> Batch:
        """The sentences ``rows`` (a ``(b,)`` long index) of the batch, padding kept as it is."""
        picked = rows.tolist()
        lists: dict[str, Any] = {
            name: [values[i] for i in picked]
            for name in ("tokens", "index")
            if (values := getattr(self, name)) is not None
        }
        return dataclasses.replace(self._map(lambda x: x[rows.to(x.device)]), **lists)

    def to(self, device: torch.device | str, non_blocking: bool = False) -> Batch:
        """The batch with every tensor moved to ``device``."""
        return self._map(lambda x: x.to(device, non_blocking=non_blocking))

    def pin_memory(self) -> Batch:
        """Page-locked copy (called by ``DataLoader(pin_memory=True)``)."""
        return self._map(torch.Tensor.pin_memory)

    def _map(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> Batch:
        changes: dict[str, Any] = {
            f.name: fn(v)
            for f in dataclasses.fields(self)
            if isinstance(v := getattr(self, f.name), torch.Tensor)
        }
        return dataclasses.replace(self, **changes)


def token_budget_cuts(sorted_lengths: np.ndarray, max_tokens: int) -> list[tuple[int, int]]:
    """Greedy ``[a, z)`` batches over ascending lengths with ``(z - a) * longest <= max_tokens``.

    A sentence longer than the budget forms a batch of its own. Each cut is the largest count
    that fits (binary search: the padded size only grows with the count).
    """
    cuts, a, total = [], 0, len(sorted_lengths)
    while a < total:
        lo, hi = 1, total - a  # largest count m with m * sorted_lengths[a + m - 1] <= budget
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if mid * int(sorted_lengths[a + mid - 1]) <= max_tokens:
                lo = mid
            else:
                hi = mid - 1
        cuts.append((a, a + lo))
        a += lo
    return cuts


def budget_batches(lengths: Sequence[int] | np.ndarray, max_tokens: int) -> list[list[int]]:
    """Length-sorted token-budget batches of sentence indices (:func:`token_budget_cuts`).

    Which sentences share a batch never changes between epochs (as the paper's loader);
    callers shuffle the batch order.
    """
    lengths = np.asarray(lengths)
    order = np.argsort(lengths, kind="stable")
    return [order[a:z].tolist() for a, z in token_budget_cuts(lengths[order], max_tokens)]


class Padder:
    """Pads chosen sentences of flat ragged arrays (sentences stacked) into batch arrays.

    Args:
        lengths: ``(n_sents,)`` lengths of every sentence of the flat arrays.
        k: paths per sentence of ``topk_*`` columns.  n_tags: labels L of knowledge columns.
    """

    def __init__(self, lengths: np.ndarray, *, k: int = 0, n_tags: int = 0) -> None:
        self.lengths = np.asarray(lengths, np.int64)
        self.k, self.n_tags = k, n_tags
        self._tokens = ragged.offsets(self.lengths)[:-1]

    def mask(self, rows: np.ndarray) -> np.ndarray:
        """``(B, N)`` bool: True at the real tokens of sentences ``rows``."""
        n = self.lengths[rows]
        return ragged.mask(n, int(n.max()))

    def tokens(
        self,
        values: np.ndarray,
        rows: np.ndarray,
        *,
        fill: float = 0,
        dtype: np.dtype | type = np.float32,
    ) -> np.ndarray:
        """Per-token ``values (n_tokens, ...)`` of sentences ``rows`` as ``(B, N, ...)``."""
        n = self.lengths[rows]
        return ragged.pad(values, n, self._tokens[rows], width=int(n.max()), fill=fill, dtype=dtype)

    def unpad(self, padded: np.ndarray, rows: np.ndarray, out: np.ndarray) -> None:
        """Write ``padded (B, N, ...)`` of sentences ``rows`` back into flat ``out``."""
        b, t, src = ragged.scatter_index(self.lengths[rows], self._tokens[rows])
        out[src] = padded[b, t]

    def column(self, spec: ColumnSpec, values: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """A knowledge column of sentences ``rows`` in its padded shape, dtype and pad value."""
        n = self.lengths[rows]
        longest, dtype = int(n.max()), np.dtype(spec.batch_dtype)
        if spec.axis in ("sentence", "path", "sentence_matrix"):
            return values[rows].astype(dtype)
        if spec.axis == "token":
            return self.tokens(values, rows, fill=spec.pad, dtype=dtype)
        # path_token: sentence i's k paths are k consecutive blocks of n_i tags
        k = self.k
        starts = (k * self._tokens[rows])[:, None] + np.arange(k)[None, :] * n[:, None]
        padded = ragged.pad(
            values, np.repeat(n, k), starts.reshape(-1), width=longest, fill=spec.pad, dtype=dtype
        )
        return padded.reshape(spec.padded_shape(len(rows), longest, k, self.n_tags))


class DistillationStream(ShardStream, IterableDataset[Batch]):
    """Length-bucketed, token-budget batches mixing languages, sharded over ranks and workers.

    Reading, sharding and pooling are :class:`~structkd.storage.stream.ShardStream`'s; here
    each pool is cut into batches of at most ``max_tokens`` padded tokens, emitted in random
    order. Use with ``DataLoader(stream, batch_size=None)``.

    Args:
        sources, knowledge_columns, k, shuffle, seed, buffer_size, interleave, read_rows: as
            :class:`~structkd.storage.stream.ShardStream` (``k`` projects the k-best paths, so
            batches hold only ``k`` of them and ``k_valid <= k``).
        max_tokens: padded tokens per batch (B * N); a longer sentence forms its own batch.
        rank, world_size: this process in distributed training; None asks torch.distributed.
    """

    def __init__(
        self,
        sources: Sequence[LanguageShards],
        *,
        max_tokens: int = StudentParams.max_tokens,
        knowledge_columns: Sequence[KnowledgeColumn] = (),
        k: int | None = None,
        shuffle: bool = True,
        seed: int = 0,
        buffer_size: int = StudentParams.shuffle_buffer,
        interleave: int = 8,
        read_rows: int = 256,
        rank: int | None = None,
        world_size: int | None = None,
    ) -> None:
        if max_tokens < 1:
            raise ConfigError(f"max_tokens must be >= 1, got {max_tokens}")
        self.max_tokens = max_tokens
        dist = torch.distributed.is_available() and torch.distributed.is_initialized()
        super().__init__(
            sources,
            knowledge_columns=knowledge_columns,
            k=k,
            shuffle=shuffle,
            seed=seed,
            buffer_size=buffer_size,
            interleave=interleave,
            read_rows=read_rows,
            rank=rank if rank is not None else (torch.distributed.get_rank() if dist else 0),
            world_size=(
                world_size
                if world_size is not None
                else (torch.distributed.get_world_size() if dist else 1)
            ),
        )

    def __iter__(self) -> Iterator[Batch]:
        info = get_worker_info()
        return (
            self.iter_consumer(0, 1)
            if info is None
            else self.iter_consumer(info.id, info.num_workers)
        )

    def iter_consumer(self, worker_id: int, num_workers: int) -> Iterator[Batch]:
        """Batches of dataloader worker ``worker_id`` of ``num_workers`` on this rank."""
        rng = self.consumer_rng(worker_id, num_workers)
        for pool in self.pools(worker_id, num_workers, rng):
            yield from self._drain(pool, rng)

    def _drain(self, pool: Chunk, rng: np.random.Generator) -> Iterator[Batch]:
        """Cut a whole pool into length-bucketed token-budget batches."""
        lengths = pool["lengths"]
        if self.shuffle:  # random order among equal lengths, then sort by length
            perm = rng.permutation(len(lengths))
            order = perm[np.argsort(lengths[perm], kind="stable")]
        else:
            order = np.argsort(lengths, kind="stable")
        cuts = token_budget_cuts(lengths[order], self.max_tokens)
        padder = Padder(lengths, k=self.k or 0, n_tags=self.n_tags)
        for b in rng.permutation(len(cuts)) if self.shuffle else range(len(cuts)):
            a, z = cuts[b]
            yield self._batch(pool, padder, order[a:z])

    def _batch(self, pool: Mapping[str, np.ndarray], padder: Padder, rows: np.ndarray) -> Batch:
        """Pad pooled sentences ``rows`` into a :class:`Batch` (vectorised gathers, no loop)."""
        knowledge: dict[str, Any] = {
            name: torch.from_numpy(padder.column(KNOWLEDGE_COLUMNS[name], pool[name], rows))
            for name in self.knowledge_columns
        }
        return Batch(
            features=torch.from_numpy(
                padder.tokens(pool["features"].reshape(-1, self.dim), rows, dtype=np.float32)
            ),
            mask=torch.from_numpy(padder.mask(rows)),
            tags=torch.from_numpy(padder.tokens(pool["tags"], rows, dtype=np.int64)),
            lengths=torch.from_numpy(pool["lengths"][rows].astype(np.int64)),
            lang=torch.from_numpy(pool["lang"][rows]),
            sent_id=torch.from_numpy(pool["sent_id"][rows].astype(np.int64)),
            **knowledge,
        )
