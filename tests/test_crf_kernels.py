"""Numba CRF kernels against brute-force enumeration, the paper's Table 1 and hard cases."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from crf_oracle import (
    apply_constraints,
    brute_force,
    enumerate_paths,
    path_score,
    random_constraints,
    table1_crf,
    table1_values,
)

from structkd.pipeline import crf_kernels as K
from structkd.pipeline.kernels_marginals import forward_backward_kernel, log_partition_kernel


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(20200707)


def _random_batch(rng, n_tags, lens, scale=2.0):
    offsets = np.concatenate([[0], np.cumsum(lens)]).astype(np.int64)
    return {
        "emissions": rng.normal(0, scale, (int(offsets[-1]), n_tags)),
        "offsets": offsets,
        "transitions": rng.normal(0, 1, (n_tags, n_tags)),
        "start": rng.normal(0, 1, n_tags),
        "end": rng.normal(0, 1, n_tags),
    }


def _effective(batch, masks):
    if masks is None:
        return batch["transitions"], batch["start"], batch["end"]
    return apply_constraints(batch["transitions"], batch["start"], batch["end"], *masks)


def _mask_kwargs(masks):
    if masks is None:
        return {}
    return dict(zip(("allowed", "start_allowed", "end_allowed"), masks, strict=True))


def _all_results(batch, masks, k):
    kw = {**batch, **_mask_kwargs(masks)}
    return (
        K.log_partition(**kw),
        K.forward_backward(**kw),
        K.edge_marginals(**kw),
        K.viterbi(**kw),
        K.kbest(**kw, k=k),
    )


@pytest.mark.parametrize("constrained", [False, True])
def test_everything_matches_brute_force(rng, constrained):
    for _ in range(30):
        n_tags = int(rng.integers(1, 5))
        lens = rng.integers(1, 7, size=int(rng.integers(1, 5)))
        lens[0] = 1  # always include a 1-token sentence
        batch = _random_batch(rng, n_tags, lens)
        masks = random_constraints(rng, n_tags, 0.3) if constrained else None
        trans, start, end = _effective(batch, masks)
        k = int(rng.integers(1, 12))
        log_z, post, edges, best, top = _all_results(batch, masks, k)
        off = batch["offsets"]
        for b in range(lens.size):
            lo, hi = off[b], off[b + 1]
            n = hi - lo
            bf = brute_force(batch["emissions"][lo:hi], trans, start, end)
            assert log_z[b] == pytest.approx(bf.log_z, abs=1e-10)
            assert post.log_z[b] == pytest.approx(bf.log_z, abs=1e-10)
            n_valid = min(k, len(bf.paths))
            assert top.k_valid[b] == n_valid
            paths = top.kbest_tags[k * lo : k * hi].reshape(k, n)
            assert [tuple(p) for p in paths[:n_valid]] == bf.paths[:n_valid]
            np.testing.assert_allclose(
                top.kbest_scores[b, :n_valid], bf.scores[:n_valid], atol=1e-12
            )
            assert (paths[n_valid:] == -1).all()
            assert (top.kbest_scores[b, n_valid:] == -np.inf).all()
            if not bf.paths:
                assert (best.tags[lo:hi] == -1).all() and best.best_scores[b] == -np.inf
                continue
            np.testing.assert_allclose(np.exp(post.log_marginals[lo:hi]), bf.marginals, atol=1e-12)
            np.testing.assert_allclose(edges[lo - b : hi - b - 1], bf.edges, atol=1e-12)
            assert tuple(best.tags[lo:hi]) == bf.paths[0]
            assert best.best_scores[b] == top.kbest_scores[b, 0]


def test_one_token_sentences_have_n_tags_distinct_paths(rng):
    batch = _random_batch(rng, 4, np.ones(5, dtype=np.int64))
    top = K.kbest(**batch, k=10)
    assert (top.k_valid == 4).all()
    paths = top.kbest_tags.reshape(5, 10)
    for b in range(5):
        assert sorted(paths[b, :4].tolist()) == [0, 1, 2, 3]
        assert (paths[b, 4:] == -1).all()
        assert np.all(np.diff(top.kbest_scores[b, :4]) <= 0)


def test_ties_follow_the_documented_rule():
    # All-zero integer scores: every path ties exactly; order = reversed tag sequence ascending.
    n_tags, n = 3, 3
    batch = {
        "emissions": np.zeros((n, n_tags)),
        "offsets": np.array([0, n]),
        "transitions": np.zeros((n_tags, n_tags)),
        "start": np.zeros(n_tags),
        "end": np.zeros(n_tags),
    }
    top = K.kbest(**batch, k=27)
    expected = sorted(enumerate_paths(n, n_tags), key=lambda p: p[::-1])
    assert [tuple(p) for p in top.kbest_tags.reshape(27, n)] == expected
    assert tuple(K.viterbi(**batch).tags) == expected[0]
    # Integer scores with partial ties: exact in float64, so the brute-force order is exact too.
    rng = np.random.default_rng(3)
    for _ in range(10):
        ints = {key: rng.integers(-2, 3, np.shape(v)).astype(float) for key, v in batch.items()}
        ints["offsets"] = batch["offsets"]
        bf = brute_force(ints["emissions"], ints["transitions"], ints["start"], ints["end"])
        top = K.kbest(**ints, k=27)
        assert [tuple(p) for p in top.kbest_tags.reshape(27, n)] == bf.paths
        assert tuple(K.viterbi(**ints).tags) == bf.paths[0]


def test_table1_worked_example():
    em, trans, start, end, allowed, start_ok, end_ok = table1_crf()
    kw = {
        "emissions": em,
        "offsets": np.array([0, 3]),
        "transitions": trans,
        "start": start,
        "end": end,
        "allowed": allowed,
        "start_allowed": start_ok,
        "end_allowed": end_ok,
    }
    post = K.forward_backward(**kw)
    assert np.exp(post.log_z[0]) == pytest.approx(455 / 24, rel=1e-12)
    top = K.kbest(**kw, k=10)
    assert top.k_valid[0] == 8
    paths = top.kbest_tags.reshape(10, 3)
    probs = {
        table1_values(p): np.exp(s - post.log_z[0])
        for p, s in zip(paths[:8], top.kbest_scores[0][:8], strict=True)
    }
    paper = {"FFF": 0.035, "FFT": 0.316, "FTF": 0.105, "FTT": 0.007, "TFF": 0.009}
    paper |= {"TFT": 0.079, "TTF": 0.422, "TTT": 0.026}
    assert probs == pytest.approx(paper, abs=5e-4)
    assert [table1_values(p) for p in paths[:2]] == ["TTF", "FFT"]
    weights = np.exp(top.kbest_scores[0, :2] - np.logaddexp(*top.kbest_scores[0, :2]))
    np.testing.assert_allclose(weights, [0.57, 0.43], atol=5e-3)
    assert table1_values(K.viterbi(**kw).tags) == "TTF"
    # q(y_k = F), q(y_k = T) from Table 1's alpha/beta; token k only has tags 2k (F), 2k+1 (T)
    marg = np.exp(post.log_marginals)
    q = np.array([marg[k, 2 * k : 2 * k + 2] for k in range(3)])
    np.testing.assert_allclose(q[:, 0], [0.46, 0.44, 0.57], atol=5e-3)
    np.testing.assert_allclose(q[:, 1], [0.54, 0.56, 0.43], atol=5e-3)
    assert marg.sum(1) == pytest.approx(np.ones(3))
    edges = K.edge_marginals(**kw)
    np.testing.assert_allclose(edges[0, 0:2, 2:4], [[0.3516, 0.1121], [0.0879, 0.4484]], atol=5e-5)
    np.testing.assert_allclose(edges[1, 2:4, 4:6], [[0.0440, 0.3956], [0.5275, 0.0330]], atol=5e-5)


def _run_fb(batch, force_log, summed=False):
    em, off = batch["emissions"], batch["offsets"]
    n_tokens, n_tags = em.shape
    n_sents = off.size - 1
    log_z, marg, eps = np.empty(n_sents), np.empty((n_tokens, n_tags)), np.empty((n_tokens, n_tags))
    edges = np.full((n_sents if summed else n_tokens - n_sents, n_tags, n_tags), np.nan)
    fast = np.empty(n_sents, dtype=bool)
    args = (em, off, np.array([0, n_sents]), batch["transitions"], batch["start"], batch["end"])
    forward_backward_kernel(*args, force_log, log_z, marg, eps, edges, summed, fast)
    return log_z, marg, edges, fast


def _per_sentence_sums(edges, offsets):
    """Sentence b's per-position edge marginals summed (zeros for a one-token sentence)."""
    lengths = np.diff(offsets)
    first = np.cumsum(lengths - 1) - (lengths - 1)  # sentence b's edges: rows first[b] + 0..n-2
    return np.stack([edges[a : a + n - 1].sum(0) for a, n in zip(first, lengths, strict=True)])


def _both_paths(batch):
    """(log_z, log marginals, edges, fast) from the fast path, and the forced log-space path."""
    fast = _run_fb(batch, False)
    slow = _run_fb(batch, True)
    with np.errstate(divide="ignore", invalid="ignore"):
        rows = np.repeat(fast[3], np.diff(batch["offsets"]))[:, None]
        marg_fast = np.where(rows, np.log(fast[1]), fast[1])
    return (fast[0], marg_fast, fast[2], fast[3]), slow


def test_fast_path_equals_log_space(rng):
    batch = _random_batch(rng, 7, rng.integers(1, 40, size=60))
    batch["transitions"][rng.random((7, 7)) < 0.3] = -np.inf
    fast, slow = _both_paths(batch)
    assert fast[3].all()  # ordinary scores never need the fallback
    np.testing.assert_allclose(fast[0], slow[0], rtol=1e-12)
    np.testing.assert_allclose(np.exp(fast[1]), np.exp(slow[1]), atol=1e-12)
    np.testing.assert_allclose(fast[2], slow[2], atol=1e-12)
    z_only = np.empty(60)
    log_partition_kernel(
        batch["emissions"],
        batch["offsets"],
        np.array([0, 60]),
        batch["transitions"],
        batch["start"],
        batch["end"],
        True,
        z_only,
    )
    np.testing.assert_allclose(z_only, slow[0], rtol=1e-12)
    # One token with a 1000-nat emission range sends its sentence (only) to the fallback.
    batch["emissions"][batch["offsets"][5], 0] = 1000.0
    fast, slow = _both_paths(batch)
    assert not fast[3][5] and fast[3].sum() == 59
    post = K.forward_backward(**batch)
    np.testing.assert_allclose(post.log_z, slow[0], rtol=1e-12)
    np.testing.assert_allclose(np.exp(post.log_marginals), np.exp(slow[1]), atol=1e-12)
    np.testing.assert_allclose(post.log_marginals[slow[1] > -50], slow[1][slow[1] > -50], atol=1e-9)
    np.testing.assert_allclose(
        post.log_marginals[slow[1] <= -50], slow[1][slow[1] <= -50], rtol=1e-9
    )
    np.testing.assert_allclose(K.log_partition(**batch), slow[0], rtol=1e-12)
    # summed edges: both paths (one sentence falls back midway) give the per-position sums
    for force_log in (False, True):
        sums = _run_fb(batch, force_log, summed=True)[2]
        np.testing.assert_allclose(sums, _per_sentence_sums(slow[2], batch["offsets"]), atol=1e-11)


@pytest.mark.parametrize("scale", [1e2, 1e4])
def test_extreme_scores_small_cases_match_brute_force(rng, scale):
    for _ in range(10):
        batch = _random_batch(rng, 3, rng.integers(1, 6, size=3), scale=scale)
        for key in ("transitions", "start", "end"):
            batch[key] = batch[key] * scale
        log_z, post, edges, best, top = _all_results(batch, None, 5)
        off = batch["offsets"]
        for b in range(3):
            lo, hi = off[b], off[b + 1]
            bf = brute_force(
                batch["emissions"][lo:hi], batch["transitions"], batch["start"], batch["end"]
            )
            assert log_z[b] == pytest.approx(bf.log_z, rel=1e-12)
            np.testing.assert_allclose(np.exp(post.log_marginals[lo:hi]), bf.marginals, atol=1e-9)
            np.testing.assert_allclose(edges[lo - b : hi - b - 1], bf.edges, atol=1e-9)
            assert tuple(best.tags[lo:hi]) == bf.paths[0]


@pytest.mark.parametrize("scale", [1.0, 1e2, 1e4])
def test_length_1000_is_stable(rng, scale):
    n_tags = 5
    batch = _random_batch(rng, n_tags, np.array([1000, 1, 999]), scale=scale)
    batch["transitions"] = batch["transitions"] * scale
    allowed = rng.random((n_tags, n_tags)) > 0.2
    np.fill_diagonal(allowed, True)
    kw = {**batch, "allowed": allowed}
    post = K.forward_backward(**kw)
    best = K.viterbi(**kw)
    top = K.kbest(**kw, k=10)
    edges = K.edge_marginals(**kw)
    assert np.isfinite(post.log_z).all()
    assert np.all(post.log_z >= best.best_scores - 1e-9 * np.abs(best.best_scores))
    np.testing.assert_allclose(np.exp(post.log_marginals).sum(1), 1.0, atol=1e-10)
    np.testing.assert_allclose(edges.sum((1, 2)), 1.0, atol=1e-10)
    # edge row sums are the unary marginals at the earlier token (sentence 0, tokens 0..998)
    np.testing.assert_allclose(edges[:999].sum(2), np.exp(post.log_marginals[:999]), atol=1e-9)
    assert np.array_equal(top.kbest_scores[:, 0], best.best_scores)
    assert np.all(top.kbest_scores[:, 1:] <= top.kbest_scores[:, :-1])
    trans, start, end = _effective(batch, (allowed, np.ones(5, bool), np.ones(5, bool)))
    score = path_score(batch["emissions"][:1000], best.tags[:1000], trans, start, end)
    assert score == pytest.approx(best.best_scores[0], rel=1e-12)
    # Shifting all emissions by c shifts log Z by n * c exactly (up to rounding).
    shifted = K.log_partition(**{**kw, "emissions": batch["emissions"] + 3.0})
    np.testing.assert_allclose(shifted - post.log_z, 3.0 * np.array([1000, 1, 999]), rtol=1e-9)
    if scale == 1.0:
        return
    _, slow = _both_paths(
        {**batch, "transitions": np.where(allowed, batch["transitions"], -np.inf)}
    )
    np.testing.assert_allclose(post.log_z, slow[0], rtol=1e-12)
    np.testing.assert_allclose(np.exp(post.log_marginals), np.exp(slow[1]), atol=1e-12)


def test_constraints_forbidden_paths_never_appear(rng):
    n_tags = 5  # BIOES for one type: B I E S O
    b_, i_, e_, s_, o_ = range(5)
    allowed = np.zeros((5, 5), dtype=bool)
    for prev in (e_, s_, o_):
        allowed[prev, [b_, s_, o_]] = True
    allowed[b_, [i_, e_]] = True
    allowed[i_, [i_, e_]] = True
    start_ok = np.array([True, False, False, True, True])
    end_ok = np.array([False, False, True, True, True])
    batch = _random_batch(rng, n_tags, rng.integers(1, 30, size=200))
    kw = {**batch, "allowed": allowed, "start_allowed": start_ok, "end_allowed": end_ok}
    post = K.forward_backward(**kw)
    edges = K.edge_marginals(**kw)
    best = K.viterbi(**kw)
    top = K.kbest(**kw, k=10)
    off = batch["offsets"]

    def valid(path):
        ok = start_ok[path[0]] and end_ok[path[-1]]
        return ok and all(allowed[a, c] for a, c in zip(path[:-1], path[1:], strict=False))

    for b in range(off.size - 1):
        lo, hi = off[b], off[b + 1]
        assert valid(best.tags[lo:hi])
        paths = top.kbest_tags[10 * lo : 10 * hi].reshape(10, hi - lo)[: top.k_valid[b]]
        assert all(valid(p) for p in paths)
        assert len({tuple(p) for p in paths}) == len(paths)
        assert np.all(post.log_marginals[lo, ~start_ok] == -np.inf)
        assert np.all(post.log_marginals[hi - 1, ~end_ok] == -np.inf)
    assert np.all(edges[:, ~allowed] == 0.0)
    assert np.isfinite(post.log_z).all()


def test_sentence_without_any_allowed_path(rng):
    batch = _random_batch(rng, 3, np.array([2, 3]))
    allowed = np.zeros((3, 3), dtype=bool)  # no transition allowed: only 1-token paths exist
    post = K.forward_backward(**batch, allowed=allowed)
    assert np.all(post.log_z == -np.inf)
    assert np.all(post.log_marginals == -np.inf)
    assert np.all(K.edge_marginals(**batch, allowed=allowed) == 0.0)
    assert np.all(K.posteriors(**batch, allowed=allowed, edge_sums=True).edge_sums == 0.0)
    assert np.all(K.viterbi(**batch, allowed=allowed).tags == -1)
    top = K.kbest(**batch, allowed=allowed, k=3)
    assert np.all(top.k_valid == 0) and np.all(top.kbest_tags == -1)


def test_float32_emissions_are_accepted(rng):
    batch = _random_batch(rng, 4, np.array([3, 5, 1]))
    z64 = K.log_partition(**batch)
    em32 = batch["emissions"].astype(np.float32)
    z32 = K.log_partition(**{**batch, "emissions": em32})
    np.testing.assert_allclose(z32, K.log_partition(**{**batch, "emissions": em32.astype(float)}))
    np.testing.assert_allclose(z32, z64, atol=1e-5)


def _good():
    return {
        "emissions": np.zeros((4, 3)),
        "offsets": np.array([0, 1, 4]),
        "transitions": np.zeros((3, 3)),
        "start": np.zeros(3),
        "end": np.zeros(3),
    }


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"emissions": np.zeros(4)}, "emissions must have shape (n_tokens, n_tags), got (4,)"),
        (
            {"emissions": np.zeros((4, 3), dtype=int)},
            "emissions must be a float array, got dtype int64",
        ),
        ({"emissions": np.full((4, 3), np.nan)}, "emissions must not contain NaN or +inf"),
        (
            {"offsets": np.array([0, 1, 3])},
            "offsets must start at 0 and end at n_tokens=4, got 0 ... 3",
        ),
        ({"offsets": np.array([0, 1, 1, 4])}, "got sentence 1 with length 0"),
        ({"offsets": np.array([0.0, 4.0])}, "offsets must be a 1-d integer array"),
        (
            {"transitions": np.zeros((3, 2))},
            "transitions must have shape (n_tags, n_tags)=(3, 3), got (3, 2)",
        ),
        ({"start": np.zeros(4)}, "start must have shape (n_tags,)=(3,), got (4,)"),
        ({"end": np.array([0.0, np.inf, 0.0])}, "end must not contain NaN or +inf"),
        ({"allowed": np.ones((3, 3))}, "allowed must be a bool array, got dtype float64"),
        (
            {"end_allowed": np.ones(2, dtype=bool)},
            "end_allowed must have shape (n_tags,)=(3,), got (2,)",
        ),
    ],
)
def test_bad_inputs_raise_clear_errors(change, message):
    with pytest.raises(ValueError) as excinfo:
        K.forward_backward(**{**_good(), **change})
    assert message in str(excinfo.value)


@pytest.mark.parametrize("k", [0, -1, 2.5, True])
def test_bad_k(k):
    with pytest.raises(ValueError, match="k must be an integer >= 1"):
        K.kbest(**_good(), k=k)


@pytest.mark.parametrize("scale", [1.0, 1e2, 1e4])
@pytest.mark.parametrize("constrained", [False, True])
def test_posteriors_equal_the_separate_passes(rng, scale, constrained):
    """One pass (what the export runs) gives exactly forward_backward's values, and per
    sentence the sum of edge_marginals' per-position matrices."""
    n_tags = 4
    batch = _random_batch(rng, n_tags, rng.integers(1, 30, size=9), scale=scale)
    batch["transitions"] = batch["transitions"] * scale
    if constrained:
        allowed = rng.random((n_tags, n_tags)) > 0.3
        np.fill_diagonal(allowed, True)
        batch["allowed"] = allowed
    post, edges = K.forward_backward(**batch), K.edge_marginals(**batch)
    one = K.posteriors(**batch, edge_sums=True)
    np.testing.assert_array_equal(one.log_z, post.log_z)
    np.testing.assert_array_equal(one.log_marginals, post.log_marginals)
    want = _per_sentence_sums(edges, batch["offsets"])
    assert one.edge_sums is not None and one.edge_sums.shape == want.shape
    np.testing.assert_allclose(one.edge_sums, want, rtol=1e-12, atol=1e-300)
    unary = K.posteriors(**batch)
    assert unary.edge_sums is None
    np.testing.assert_array_equal(unary.log_marginals, post.log_marginals)


# One forward-backward pass over a ragged batch (L = 17, lengths 1-39, with and without
# constraints), printed as a digest of every output byte.
_POSTERIORS_DIGEST = """
import hashlib
import numpy as np
from structkd.pipeline import crf_kernels
rng = np.random.default_rng(0)
n_tags = 17
lengths = rng.integers(1, 40, size=200)
offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
crf = {
    "emissions": rng.normal(size=(offsets[-1], n_tags)) * 3,
    "offsets": offsets,
    "transitions": rng.normal(size=(n_tags, n_tags)),
    "start": rng.normal(size=n_tags),
    "end": rng.normal(size=n_tags),
}
digest = hashlib.sha256()
for allowed in (None, rng.random((n_tags, n_tags)) > 0.2):
    for part in crf_kernels.posteriors(**crf, allowed=allowed, edge_sums=True):
        digest.update(np.ascontiguousarray(part).tobytes())
print(digest.hexdigest())
"""


@pytest.mark.slow  # compiles the kernels from an empty numba cache
def test_posteriors_are_the_same_bits_compiled_or_loaded_from_the_cache(tmp_path: Path) -> None:
    """The first process compiles the kernels into an empty numba cache, the next loads them
    from it: both give the same bits (knowledge is cached and compared byte for byte; with
    LLVM's ``reassoc`` the two differed in log Z's last bit)."""
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path / "numba"))
    compiled, cached = (
        subprocess.run(
            [sys.executable, "-c", _POSTERIORS_DIGEST],
            env=env,
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        for _ in range(2)
    )
    assert compiled == cached
