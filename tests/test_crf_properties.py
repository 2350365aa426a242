"""Property tests (hypothesis) for the CRF kernels and layer on random shapes and scores."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from crf_oracle import brute_force, path_score
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from structkd.pipeline import crf_kernels as K
from structkd.pipeline.crf import CRF

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@st.composite
def crf_problems(draw):
    """A random ragged batch, CRF scores (possibly extreme) and optional random constraints."""
    n_tags = draw(st.integers(1, 25))
    lens = draw(st.lists(st.integers(1, 50), min_size=1, max_size=5))
    scale = draw(st.sampled_from([0.5, 3.0, 30.0, 1e3, 1e4]))
    seed = draw(st.integers(0, 2**32 - 1))
    p_forbid = draw(st.sampled_from([0.0, 0.0, 0.2, 0.6]))
    rng = np.random.default_rng(seed)
    offsets = np.concatenate([[0], np.cumsum(lens)]).astype(np.int64)
    batch = {
        "emissions": rng.normal(0, scale, (int(offsets[-1]), n_tags)),
        "offsets": offsets,
        "transitions": rng.normal(0, scale / 4, (n_tags, n_tags)),
        "start": rng.normal(0, scale / 4, n_tags),
        "end": rng.normal(0, scale / 4, n_tags),
    }
    if p_forbid:
        batch["allowed"] = rng.random((n_tags, n_tags)) >= p_forbid
        batch["start_allowed"] = rng.random(n_tags) >= p_forbid
        batch["end_allowed"] = rng.random(n_tags) >= p_forbid
    return batch, draw(st.integers(1, 12))


def _effective(batch):
    n_tags = batch["start"].size
    ones = np.ones(n_tags, dtype=bool)
    return (
        np.where(
            batch.get("allowed", np.ones((n_tags, n_tags), bool)), batch["transitions"], -np.inf
        ),
        np.where(batch.get("start_allowed", ones), batch["start"], -np.inf),
        np.where(batch.get("end_allowed", ones), batch["end"], -np.inf),
    )


@SETTINGS
@given(crf_problems())
def test_kernel_invariants(problem):
    batch, k = problem
    post = K.forward_backward(**batch)
    edges = K.edge_marginals(**batch)
    best = K.viterbi(**batch)
    top = K.kbest(**batch, k=k)
    trans, start, end = _effective(batch)
    off = batch["offsets"]
    n_tags = trans.shape[0]
    for b in range(off.size - 1):
        lo, hi = int(off[b]), int(off[b + 1])
        n = hi - lo
        scores = top.kbest_scores[b]
        paths = top.kbest_tags[k * lo : k * hi].reshape(k, n)
        kv = top.k_valid[b]
        assert np.all(np.diff(scores[:kv]) <= 0)  # sorted
        assert len({tuple(p) for p in paths[:kv]}) == kv  # unique
        assert np.all(paths[kv:] == -1) and np.all(scores[kv:] == -np.inf)
        assert kv <= min(k, n_tags**n)
        for q in range(kv):
            assert np.isclose(
                path_score(batch["emissions"][lo:hi], paths[q], trans, start, end), scores[q]
            )
        if kv == 0:
            assert post.log_z[b] == -np.inf and best.best_scores[b] == -np.inf
            assert np.all(best.tags[lo:hi] == -1)
            continue
        assert scores[0] == best.best_scores[b]  # top-1 == Viterbi, bit for bit
        assert np.array_equal(paths[0], best.tags[lo:hi])
        slack = 1e-12 * max(1.0, abs(best.best_scores[b]))
        assert best.best_scores[b] - slack <= post.log_z[b]
        assert post.log_z[b] <= best.best_scores[b] + n * np.log(n_tags) + slack
        marg = np.exp(post.log_marginals[lo:hi])
        np.testing.assert_allclose(marg.sum(1), 1.0, atol=1e-9)
        if n > 1:
            e = edges[lo - b : hi - b - 1]
            np.testing.assert_allclose(e.sum((1, 2)), 1.0, atol=1e-9)
            np.testing.assert_allclose(e.sum(2), marg[:-1], atol=1e-9)
            np.testing.assert_allclose(e.sum(1), marg[1:], atol=1e-9)
        if n_tags**n <= 256:
            bf = brute_force(batch["emissions"][lo:hi], trans, start, end)
            assert np.isclose(post.log_z[b], bf.log_z, rtol=1e-12, atol=1e-10)
            np.testing.assert_allclose(marg, bf.marginals, atol=1e-9)
            assert kv == min(k, len(bf.paths))
            np.testing.assert_allclose(scores[:kv], bf.scores[:kv], rtol=1e-12, atol=1e-10)


@SETTINGS
@given(crf_problems())
def test_torch_layer_agrees_with_kernels(problem):
    batch, _ = problem
    n_tags = batch["start"].size
    masks = [
        torch.from_numpy(batch[key]) if key in batch else None
        for key in ("allowed", "start_allowed", "end_allowed")
    ]
    crf = CRF(n_tags, *masks).double()
    with torch.no_grad():
        crf.transitions.copy_(torch.from_numpy(batch["transitions"]))
        crf.start.copy_(torch.from_numpy(batch["start"]))
        crf.end.copy_(torch.from_numpy(batch["end"]))
    off = batch["offsets"]
    lens = np.diff(off)
    mask = torch.arange(int(lens.max()))[None] < torch.from_numpy(lens)[:, None]
    emissions = torch.zeros(mask.shape + (n_tags,), dtype=torch.float64)
    emissions[mask] = torch.from_numpy(batch["emissions"])
    post = K.forward_backward(**batch)
    best = K.viterbi(**batch)
    feasible = torch.from_numpy(post.log_z > -np.inf)
    with torch.no_grad():
        log_z = crf.log_partition(emissions, mask).numpy()
        log_marg = crf.log_marginals(emissions, mask)
        decoded = crf.decode(emissions, mask)
    ok = feasible.numpy()
    np.testing.assert_allclose(log_z[ok], post.log_z[ok], rtol=1e-9, atol=1e-9)
    tok = np.repeat(ok, lens)
    np.testing.assert_allclose(
        log_marg[mask].exp().numpy()[tok], np.exp(post.log_marginals[tok]), atol=1e-7
    )
    trans, start, end = _effective(batch)
    for b in np.flatnonzero(ok):
        path = decoded[b, : lens[b]].numpy()
        got = path_score(batch["emissions"][off[b] : off[b + 1]], path, trans, start, end)
        assert np.isclose(got, best.best_scores[b], rtol=1e-12, atol=1e-9)
