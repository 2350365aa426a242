"""pipeline.batching: the one token-budget batcher and the one padder."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from structkd.pipeline.batching import Padder, budget_batches, token_budget_cuts
from structkd.pipeline.data import Split, iterate
from structkd.storage import ragged
from structkd.storage.schemas import KNOWLEDGE_COLUMNS


def greedy(lengths: np.ndarray, max_tokens: int) -> list[list[int]]:
    """The greedy loop the teacher loader used: add while (count + 1) * length fits."""
    batches, current = [], []
    for i in np.argsort(lengths, kind="stable"):
        if current and (len(current) + 1) * int(lengths[i]) > max_tokens:
            batches.append(current)
            current = []
        current.append(int(i))
    return [*batches, current] if current else batches


@pytest.mark.parametrize("max_tokens", [1, 7, 40, 400])
def test_budget_batches_equal_the_greedy_packing(max_tokens):
    rng = np.random.default_rng(max_tokens)
    for _ in range(20):
        lengths = rng.integers(1, 60, rng.integers(1, 200))
        got = budget_batches(lengths, max_tokens)
        assert got == greedy(lengths, max_tokens)
        for batch in got:
            assert len(batch) * int(lengths[batch].max()) <= max_tokens or len(batch) == 1
        ordered = np.sort(lengths, kind="stable")
        assert [z - a for a, z in token_budget_cuts(ordered, max_tokens)] == [len(b) for b in got]


def test_padder_pads_and_unpads_every_column_kind():
    rng = np.random.default_rng(3)
    lengths = rng.integers(1, 9, 12)
    k, n_tags, n_tok = 3, 4, int(lengths.sum())
    padder = Padder(lengths, k=k, n_tags=n_tags)
    rows = np.array([7, 2, 11, 0])
    n, longest, offs = lengths[rows], int(lengths[rows].max()), ragged.offsets(lengths)
    values = rng.standard_normal((n_tok, n_tags)).astype(np.float32)
    padded = padder.tokens(values, rows)
    assert padded.shape == (4, longest, n_tags) and padded.dtype == np.float32
    for b, i in enumerate(rows):
        np.testing.assert_array_equal(padded[b, : n[b]], values[offs[i] : offs[i + 1]])
        assert not padded[b, n[b] :].any()
    back = np.zeros_like(values)
    padder.unpad(padded, rows, back)
    for i in rows:
        np.testing.assert_array_equal(back[offs[i] : offs[i + 1]], values[offs[i] : offs[i + 1]])
    assert padder.mask(rows).sum(1).tolist() == n.tolist()
    tags = rng.integers(0, n_tags, k * n_tok)
    paths = padder.column(KNOWLEDGE_COLUMNS["topk_tags"], tags, rows)
    assert paths.shape == (4, k, longest) and paths.dtype == np.int64
    for b, i in enumerate(rows):
        block = tags[k * offs[i] : k * offs[i + 1]].reshape(k, n[b])
        np.testing.assert_array_equal(paths[b, :, : n[b]], block)
        assert (paths[b, :, n[b] :] == -1).all()
    sums = rng.random((len(lengths), n_tags, n_tags))  # one matrix per sentence: no padding
    padded_sums = padder.column(KNOWLEDGE_COLUMNS["edge_sums"], sums, rows)
    assert padded_sums.shape == (4, n_tags, n_tags) and padded_sums.dtype == np.float32
    np.testing.assert_array_equal(padded_sums, sums[rows].astype(np.float32))
    scores = rng.standard_normal((len(lengths), k)).astype(np.float32)
    np.testing.assert_array_equal(
        padder.column(KNOWLEDGE_COLUMNS["topk_scores"], scores, rows), scores[rows]
    )


def test_iterate_pads_like_the_per_sentence_loop():
    rng = np.random.default_rng(5)
    lengths = rng.integers(1, 12, 60)
    split = Split(
        "de",
        "dev",
        "BIO",
        np.arange(60),
        [[f"w{i}"] * int(m) for i, m in enumerate(lengths)],
        [rng.integers(0, 5, m) for m in lengths],
        [rng.standard_normal((m, 3)).astype(np.float16) for m in lengths],
    )
    for batch in iterate(split, 30, epoch=1, seed=4):
        assert batch.index is not None and batch.tokens == [split.tokens[i] for i in batch.index]
        for row, i in enumerate(batch.index):
            m = len(split.tokens[i])
            assert int(batch.lengths[row]) == m and batch.mask[row].sum() == m
            assert torch.equal(batch.features[row, :m], torch.from_numpy(split.features[i]).float())
            assert torch.equal(batch.tags[row, :m], torch.from_numpy(split.tags[i]))
            assert not batch.features[row, m:].any() and not batch.tags[row, m:].any()
