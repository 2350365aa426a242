"""In-memory splits (prepared tokens + tags zipped with their features) and their batches.

Teachers train on one language and every model is evaluated split by split, so these fit in
memory; the student's training set is streamed instead (``pipeline.batching``). Batching and
padding are :mod:`structkd.pipeline.batching`'s.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from structkd.errors import InputError, StructkdError
from structkd.pipeline.batching import Batch, Padder, budget_batches
from structkd.storage import ragged
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
        bounds = ragged.offsets(p.lengths)
        for i in range(len(p.sent_id)):
            tokens.append([str(t) for t in ragged.row(p.tokens, bounds, i)])
            tags.append(np.asarray(ragged.row(p.tags, bounds, i), np.int64))
            feats.append(ragged.row(f.features, bounds, i))
        sent_ids.append(p.sent_id)
    return Split(lang, name, scheme, np.concatenate(sent_ids), tokens, tags, feats)


def collate(split: Split, index: Sequence[int]) -> Batch:
    """Pad the sentences ``index`` of ``split`` into one batch (:class:`Padder`)."""
    rows = np.arange(len(index))
    lengths = np.array([len(split.tokens[i]) for i in index], np.int64)
    padder = Padder(lengths)
    features = np.concatenate([split.features[i] for i in index])
    tags = np.concatenate([split.tags[i] for i in index])
    return Batch(
        features=torch.from_numpy(padder.tokens(features, rows, dtype=np.float32)),
        mask=torch.from_numpy(padder.mask(rows)),
        tags=torch.from_numpy(padder.tokens(tags, rows, dtype=np.int64)),
        lengths=torch.from_numpy(lengths),
        tokens=[split.tokens[i] for i in index],
        index=list(index),
    )


def iterate(
    split: Split, max_tokens: int, *, epoch: int | None = None, seed: int = 0
) -> Iterator[Batch]:
    """Batches of ``split``; shuffled by ``(seed, epoch)`` when an epoch is given, else in order."""
    groups = budget_batches([len(t) for t in split.tokens], max_tokens)
    if epoch is not None:
        np.random.default_rng((seed, epoch)).shuffle(groups)
    for group in groups:
        yield collate(split, group)
