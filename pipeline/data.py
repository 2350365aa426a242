"""In-memory splits (prepared tokens + tags zipped with their features) and token-budget batches.

Teachers train on one language and every model is evaluated split by split, so these fit in
memory; the student's training set is streamed instead (``storage.stream``).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from structkd.errors import InputError, StructkdError
from structkd.storage.arrays import FeaturesArrays, PreparedArrays
from structkd.storage.schemas import FeaturesMeta, PreparedMeta
from structkd.storage.shards import read_shard, shard_metadata


@dataclass(frozen=True)
class Split:
    """One language's split: per sentence its tokens, gold label ids and features ``(n, dim)``."""

    lang: str
    name: str
    scheme: str
    sent_ids: np.ndarray
    tokens: list[list[str]]
    tags: list[np.ndarray]
    features: list[np.ndarray]

    def __len__(self) -> int:
        return len(self.tokens)


@dataclass
class Batch:
    """A padded batch: ``features (B, N, dim)``, ``mask``/``tags`` ``(B, N)``, words, positions."""

    features: torch.Tensor
    mask: torch.Tensor
    tags: torch.Tensor
    tokens: list[list[str]]
    index: list[int]


def shard_paths(directory: Path) -> list[Path]:
    """The ``part-NNNNN.parquet`` shards of a directory, in order."""
    paths = sorted(directory.glob("part-*.parquet"))
    if not paths:
        raise StructkdError(f"{directory}: no shards found (run the stage that writes it)")
    return paths


def load_split(prepared_dir: Path, features_dir: Path, lang: str, name: str) -> Split:
    """Read a prepared split and its features, checking that their shards line up row by row."""
    prepared, features = shard_paths(prepared_dir), shard_paths(features_dir)
    if [p.name for p in prepared] != [f.name for f in features]:
        raise InputError(
            str(features_dir), f"shards {[f.name for f in features]} do not match {prepared_dir}"
        )
    sent_ids, tokens, tags, feats = [], [], [], []
    scheme = "none"
    for p_path, f_path in zip(prepared, features, strict=True):
        scheme = PreparedMeta.from_metadata(shard_metadata(p_path)).scheme
        p = PreparedArrays.from_table(read_shard(p_path, expect_table="prepared"))
        dim = FeaturesMeta.from_metadata(shard_metadata(f_path)).dim
        f = FeaturesArrays.from_table(read_shard(f_path, expect_table="features"), dim=dim)
        if not np.array_equal(p.sent_id, f.sent_id):
            raise InputError(
                str(f_path),
                f"has {len(f.sent_id)} rows, {p_path} has {len(p.sent_id)} (or their sentence ids "
                "differ); re-run `structkd stage embed`",
            )
        bounds = np.concatenate([[0], np.cumsum(p.lengths)])
        for i in range(len(p.sent_id)):
            lo, hi = bounds[i], bounds[i + 1]
            tokens.append([str(t) for t in p.tokens[lo:hi]])
            tags.append(np.asarray(p.tags[lo:hi], np.int64))
            feats.append(f.features[lo:hi])
        sent_ids.append(p.sent_id)
    return Split(lang, name, scheme, np.concatenate(sent_ids), tokens, tags, feats)


def budget_batches(lengths: Sequence[int], max_tokens: int) -> list[list[int]]:
    """Length-sorted greedy packing: each batch's padded size ``B * max_len`` stays <= max_tokens.

    A sentence longer than the budget forms a batch of its own. Which sentences share a batch
    never changes between epochs (as the paper's loader); callers shuffle the batch order.
    """
    order = np.argsort(np.asarray(lengths), kind="stable")
    batches: list[list[int]] = []
    current: list[int] = []
    for i in order:
        if current and (len(current) + 1) * int(lengths[i]) > max_tokens:
            batches.append(current)
            current = []
        current.append(int(i))
    if current:
        batches.append(current)
    return batches


def collate(split: Split, index: Sequence[int]) -> Batch:
    """Pad the sentences ``index`` of ``split`` into one batch."""
    n = max(len(split.tokens[i]) for i in index)
    dim = split.features[index[0]].shape[1]
    features = torch.zeros(len(index), n, dim)
    mask = torch.zeros(len(index), n, dtype=torch.bool)
    tags = torch.zeros(len(index), n, dtype=torch.long)
    for row, i in enumerate(index):
        length = len(split.tokens[i])
        features[row, :length] = torch.from_numpy(split.features[i].astype(np.float32))
        mask[row, :length] = True
        tags[row, :length] = torch.from_numpy(split.tags[i])
    return Batch(features, mask, tags, [split.tokens[i] for i in index], list(index))


def iterate(
    split: Split, max_tokens: int, *, epoch: int | None = None, seed: int = 0
) -> Iterator[Batch]:
    """Batches of ``split``; shuffled by ``(seed, epoch)`` when an epoch is given, else in order."""
    groups = budget_batches([len(t) for t in split.tokens], max_tokens)
    if epoch is not None:
        np.random.default_rng((seed, epoch)).shuffle(groups)
    for group in groups:
        yield collate(split, group)
