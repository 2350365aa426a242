"""Torch CRF layer against pytorch-crf, the numba kernels, brute force and Table 1."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from crf_oracle import apply_constraints, brute_force, enumerate_paths, path_score, table1_crf
from torchcrf import CRF as TorchCRF

from structkd.pipeline import crf_kernels as K
from structkd.pipeline.crf import CRF

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture
def gen() -> torch.Generator:
    return torch.Generator().manual_seed(2010_05010)


def _crf(n_tags, gen, masks=None, scale=1.0):
    masks = masks or (None, None, None)
    crf = CRF(n_tags, *masks).double()
    with torch.no_grad():
        for p in (crf.transitions, crf.start, crf.end):
            p.copy_(torch.randn(p.shape, generator=gen, dtype=torch.float64) * scale)
    return crf


def _batch(gen, lens, n_tags, scale=2.0):
    lens = torch.as_tensor(lens)
    seq_len = int(lens.max())
    mask = torch.arange(seq_len)[None] < lens[:, None]
    emissions = torch.randn(len(lens), seq_len, n_tags, generator=gen, dtype=torch.float64) * scale
    return emissions, mask


def _flat(x, mask):
    """Padded (batch, seq_len, ...) -> ragged (n_tokens, ...) numpy, plus offsets."""
    lens = mask.sum(1).numpy()
    offsets = np.concatenate([[0], np.cumsum(lens)])
    return x[mask].detach().numpy(), offsets


def _bioes_masks():
    b_, i_, e_, s_, o_ = range(5)
    allowed = torch.zeros(5, 5, dtype=torch.bool)
    for prev in (e_, s_, o_):
        allowed[prev, [b_, s_, o_]] = True
    allowed[b_, [i_, e_]] = True
    allowed[i_, [i_, e_]] = True
    return (
        allowed,
        torch.tensor([1, 0, 0, 1, 1], dtype=torch.bool),
        torch.tensor([0, 0, 1, 1, 1], dtype=torch.bool),
    )


def test_matches_pytorch_crf_in_float64(gen):
    emissions, mask = _batch(gen, [7, 1, 3, 7, 2, 5, 6, 1], 5)
    crf = _crf(5, gen)
    ref = TorchCRF(5, batch_first=True).double()
    with torch.no_grad():
        ref.transitions.copy_(crf.transitions)
        ref.start_transitions.copy_(crf.start)
        ref.end_transitions.copy_(crf.end)
    tags = torch.randint(0, 5, mask.shape, generator=gen)
    nll = crf.nll(emissions, tags, mask, reduction="none")
    torch.testing.assert_close(
        nll, -ref(emissions, tags, mask, reduction="none"), rtol=0, atol=1e-12
    )
    torch.testing.assert_close(
        crf.nll(emissions, tags, mask), -ref(emissions, tags, mask, reduction="mean")
    )
    torch.testing.assert_close(
        crf.nll(emissions, tags, mask, reduction="sum"), -ref(emissions, tags, mask)
    )
    log_z = ref._compute_normalizer(emissions.transpose(0, 1), mask.transpose(0, 1))
    torch.testing.assert_close(crf.log_partition(emissions, mask), log_z, rtol=0, atol=1e-12)
    decoded = crf.decode(emissions, mask)
    for b, path in enumerate(ref.decode(emissions, mask)):
        assert decoded[b, : len(path)].tolist() == path
        assert (decoded[b, len(path) :] == -1).all()


@pytest.mark.parametrize("constrained", [False, True])
def test_matches_numba_kernels_on_padded_batches(gen, constrained):
    masks = _bioes_masks() if constrained else None
    emissions, mask = _batch(gen, torch.randint(1, 20, (40,), generator=gen), 5)
    crf = _crf(5, gen, masks)
    flat, offsets = _flat(emissions, mask)
    params = crf.numpy_params()
    post = K.forward_backward(emissions=flat, offsets=offsets, **params)
    np.testing.assert_allclose(
        crf.log_partition(emissions, mask).detach().numpy(), post.log_z, atol=1e-10
    )
    log_marg = crf.log_marginals(emissions, mask)
    np.testing.assert_allclose(
        _flat(log_marg.exp(), mask)[0], np.exp(post.log_marginals), rtol=0, atol=1e-10
    )
    assert (log_marg[~mask] == 0).all()
    best = K.viterbi(emissions=flat, offsets=offsets, **params)
    decoded = crf.decode(emissions, mask)
    assert np.array_equal(_flat(decoded, mask)[0], best.tags)
    assert (decoded[~mask] == -1).all()


def test_gradient_of_log_z_is_the_marginals(gen):
    emissions, mask = _batch(gen, [6, 1, 4, 2], 4)
    crf = _crf(4, gen, _random_masks(gen, 4))
    emissions.requires_grad_(True)
    (grad,) = torch.autograd.grad(crf.log_partition(emissions, mask).sum(), emissions)
    marg = crf.log_marginals(emissions, mask).exp() * mask[..., None]
    torch.testing.assert_close(grad, marg, rtol=0, atol=1e-12)


def _random_masks(gen, n_tags):
    allowed = torch.rand(n_tags, n_tags, generator=gen) > 0.3
    allowed[:, 0] = True  # keep every sentence feasible: tag 0 reachable, startable, endable
    start_ok = torch.rand(n_tags, generator=gen) > 0.3
    end_ok = torch.rand(n_tags, generator=gen) > 0.3
    start_ok[0] = end_ok[0] = True
    allowed[0, 0] = True
    return allowed, start_ok, end_ok


def test_brute_force_quantities(gen):
    for _ in range(10):
        n_tags = int(torch.randint(1, 5, (1,), generator=gen))
        masks = _random_masks(gen, n_tags)
        crf = _crf(n_tags, gen, masks)
        emissions, mask = _batch(gen, torch.randint(1, 6, (3,), generator=gen), n_tags)
        p = crf.numpy_params()
        log_z = crf.log_partition(emissions, mask).detach()
        log_marg = crf.log_marginals(emissions, mask).detach()
        decoded = crf.decode(emissions, mask)
        for b in range(3):
            n = int(mask[b].sum())
            bf = brute_force(emissions[b, :n].numpy(), p["transitions"], p["start"], p["end"])
            assert float(log_z[b]) == pytest.approx(bf.log_z, abs=1e-10)
            np.testing.assert_allclose(
                log_marg[b, :n].exp().detach().numpy(), bf.marginals, atol=1e-12
            )
            assert tuple(decoded[b, :n].tolist()) == bf.paths[0]


def test_expected_score_is_the_expectation_over_paths(gen):
    """E_q[score_s] with q a teacher CRF, by enumeration; log Z_s - E = cross-entropy."""
    n_tags = 3
    masks = _random_masks(gen, n_tags)
    teacher, student = _crf(n_tags, gen, masks), _crf(n_tags, gen, masks)
    emissions_t, mask = _batch(gen, [4, 1, 3], n_tags)
    emissions_s = torch.randn(emissions_t.shape, generator=gen, dtype=torch.float64)
    tp, sp = teacher.numpy_params(), student.numpy_params()
    unary = torch.zeros_like(emissions_t)
    edge_sums = torch.zeros(3, n_tags, n_tags, dtype=torch.float64)
    expected, cross_entropy = [], []
    for b in range(3):
        n = int(mask[b].sum())
        bf = brute_force(emissions_t[b, :n].numpy(), tp["transitions"], tp["start"], tp["end"])
        unary[b, :n] = torch.from_numpy(bf.marginals)
        edge_sums[b] = torch.from_numpy(bf.edges.sum(0))  # over the n - 1 positions
        student_bf = brute_force(
            emissions_s[b, :n].numpy(), sp["transitions"], sp["start"], sp["end"]
        )
        probs = np.exp(np.array(bf.scores) - bf.log_z)
        scores = [path_score(emissions_s[b, :n].numpy(), p, *sp.values()) for p in bf.paths]
        expected.append(float(probs @ scores))
        cross_entropy.append(float(probs @ (student_bf.log_z - np.array(scores))))
    unary[~mask] = float("nan")  # padded entries must be ignored
    got = student.expected_score(emissions_s, unary, edge_sums, mask)
    np.testing.assert_allclose(got.detach().numpy(), expected, atol=1e-10)
    ce = student.log_partition(emissions_s, mask) - got
    np.testing.assert_allclose(ce.detach().numpy(), cross_entropy, atol=1e-10)
    assert (ce >= -1e-12).all()


def test_table1_alpha_beta_and_marginals():
    em, trans, start, end, allowed, start_ok, end_ok = table1_crf()
    crf = CRF(6, torch.from_numpy(allowed), torch.from_numpy(start_ok), torch.from_numpy(end_ok))
    crf = crf.double()
    with torch.no_grad():
        crf.transitions.copy_(torch.from_numpy(trans))
        crf.start.zero_()
        crf.end.zero_()
    emissions = torch.from_numpy(em)[None]
    mask = torch.ones(1, 3, dtype=torch.bool)
    eff = crf.effective_params(torch.float64)
    log_alpha, log_z = CRF._forward(emissions, mask, *eff, keep=True)
    log_beta = CRF._backward(emissions, mask, eff[0], eff[2])
    alpha = np.array([log_alpha[0, k, 2 * k : 2 * k + 2].exp().tolist() for k in range(3)])
    beta = np.array([log_beta[0, k, 2 * k : 2 * k + 2].exp().tolist() for k in range(3)])
    np.testing.assert_allclose(alpha[:, 0], [1.00, 2.50, 10.83], atol=5e-3)  # alpha(y_k = F)
    np.testing.assert_allclose(alpha[:, 1], [1.00, 2.50, 8.13], atol=5e-3)
    np.testing.assert_allclose(beta[:, 0], [8.79, 3.33, 1.00], atol=5e-3)
    np.testing.assert_allclose(beta[:, 1], [10.17, 4.25, 1.00], atol=5e-3)
    assert float(log_z.detach().exp()) == pytest.approx(455 / 24)
    marg = crf.log_marginals(emissions, mask).detach().exp()[0]
    q_false = [float(marg[k, 2 * k]) for k in range(3)]
    np.testing.assert_allclose(q_false, [0.46, 0.44, 0.57], atol=5e-3)
    assert crf.decode(emissions, mask)[0].tolist() == [1, 3, 4]  # T T F


def test_constraints_give_zero_probability_and_finite_gradients(gen):
    allowed, start_ok, end_ok = _bioes_masks()
    crf = _crf(5, gen, (allowed, start_ok, end_ok))
    emissions, mask = _batch(gen, [1, 1, 4, 9, 2], 5)
    emissions.requires_grad_(True)
    tags = torch.full(mask.shape, 4)  # all O: allowed everywhere
    loss = crf.nll(emissions, tags, mask) + crf.log_marginals(emissions, mask).sum()
    loss.backward()
    for p in (emissions.grad, crf.transitions.grad, crf.start.grad, crf.end.grad):
        assert torch.isfinite(p).all()
    assert (crf.transitions.grad[~allowed] == 0).all()
    assert (crf.start.grad[~start_ok] == 0).all() and (crf.end.grad[~end_ok] == 0).all()
    marg = crf.log_marginals(emissions, mask).exp()
    lens = mask.sum(1)
    assert (marg[:, 0, ~start_ok] == 0).all()
    for b in range(5):
        assert (marg[b, lens[b] - 1, ~end_ok] == 0).all()
    torch.testing.assert_close(marg.sum(2)[mask], torch.ones(int(mask.sum()), dtype=torch.float64))
    decoded = crf.decode(emissions, mask)
    for b in range(5):
        path = decoded[b, : lens[b]].tolist()
        assert start_ok[path[0]] and end_ok[path[-1]]
        assert all(allowed[a, c] for a, c in zip(path[:-1], path[1:], strict=False))


def test_unreachable_states_have_no_nan(gen):
    allowed = torch.ones(3, 3, dtype=torch.bool)
    allowed[:, 2] = False  # tag 2 can never be entered ...
    start_ok = torch.tensor([True, True, False])  # ... nor started with
    crf = _crf(3, gen, (allowed, start_ok, None))
    emissions, mask = _batch(gen, [1, 5, 3], 3)
    emissions.requires_grad_(True)
    log_marg = crf.log_marginals(emissions, mask)
    (log_marg.exp().sum() + crf.log_partition(emissions, mask).sum()).backward()
    assert torch.isfinite(log_marg).all() and torch.isfinite(emissions.grad).all()
    assert (log_marg[..., 2][mask].exp() == 0).all()


def test_float32_matches_float64(gen):
    emissions, mask = _batch(gen, [12, 1, 7], 6)
    crf = _crf(6, gen, _random_masks(gen, 6))
    crf32 = CRF(6, crf.allowed, crf.start_allowed, crf.end_allowed)
    crf32.load_state_dict(
        {k: v.float() if v.is_floating_point() else v for k, v in crf.state_dict().items()}
    )
    em32 = emissions.float()
    assert crf32.log_partition(em32, mask).dtype == torch.float32
    torch.testing.assert_close(
        crf32.log_partition(em32, mask).double(),
        crf.log_partition(emissions, mask),
        atol=1e-4,
        rtol=0,
    )
    torch.testing.assert_close(
        crf32.log_marginals(em32, mask).exp().double(),
        crf.log_marginals(emissions, mask).exp(),
        atol=1e-5,
        rtol=0,
    )
    assert torch.equal(crf32.decode(em32, mask), crf.decode(emissions, mask))
    # half-precision emissions are computed in float32 (NEG is not finite in float16)
    assert crf32.log_partition(em32.half(), mask).dtype == torch.float32


@pytest.mark.parametrize("scale", [1.0, 1e4])
def test_length_1000_and_extreme_scores_are_stable(gen, scale):
    allowed, start_ok, end_ok = _bioes_masks()
    crf = _crf(5, gen, (allowed, start_ok, end_ok), scale=scale)
    emissions, mask = _batch(gen, [1000, 1, 437], 5, scale=scale)
    emissions.requires_grad_(True)
    log_z = crf.log_partition(emissions, mask)
    (grad,) = torch.autograd.grad(log_z.sum(), emissions)
    assert torch.isfinite(log_z).all() and torch.isfinite(grad).all()
    flat, offsets = _flat(emissions, mask)
    post = K.forward_backward(emissions=flat, offsets=offsets, **crf.numpy_params())
    np.testing.assert_allclose(log_z.detach().numpy(), post.log_z, rtol=1e-12)
    with torch.no_grad():
        marg = crf.log_marginals(emissions, mask).exp()
    np.testing.assert_allclose(_flat(marg, mask)[0], np.exp(post.log_marginals), atol=1e-8)
    # |log Z| reaches 1e7 at scale 1e4: float64 resolves its exponent to ~1e-9 per step only
    torch.testing.assert_close(grad, marg * mask[..., None], rtol=0, atol=1e-10 * scale)
    decoded = crf.decode(emissions, mask)
    best = K.viterbi(emissions=flat, offsets=offsets, **crf.numpy_params())
    assert np.array_equal(_flat(decoded, mask)[0], best.tags)


def test_nll_is_positive_and_reductions_agree(gen):
    emissions, mask = _batch(gen, [3, 5, 1], 4)
    crf = _crf(4, gen)
    tags = torch.randint(0, 4, mask.shape, generator=gen)
    tags[~mask] = -1  # padding values are ignored
    losses = crf.nll(emissions, tags, mask, reduction="none")
    assert (losses > 0).all()
    torch.testing.assert_close(crf.nll(emissions, tags, mask, reduction="mean"), losses.mean())
    torch.testing.assert_close(crf.nll(emissions, tags, mask, reduction="sum"), losses.sum())
    # p(y | x) = exp(-nll) sums to 1 over all 4**3 paths of a 3-token sentence
    paths = torch.tensor(enumerate_paths(3, 4))
    em = emissions[:1, :3].expand(len(paths), 3, 4)
    probs = crf.nll(em, paths, torch.ones(len(paths), 3, dtype=torch.bool), reduction="none")
    assert float(torch.exp(-probs.detach()).sum()) == pytest.approx(1.0, abs=1e-12)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (
            lambda c, e, m: c.log_partition(e[..., :2], m),
            "emissions must have shape (batch, seq_len, n_tags=4)",
        ),
        (lambda c, e, m: c.log_partition(e, m.long()), "mask must be a bool tensor"),
        (lambda c, e, m: c.log_partition(e, m.roll(1, 1)), "mask[:, 0] must be all True"),
        (
            lambda c, e, m: c.log_partition(e, m | (torch.arange(5) == 4)),
            "mask must be left-aligned",
        ),
        (lambda c, e, m: c.score(e, torch.zeros(3, 5), m), "tags must be a long tensor"),
        (lambda c, e, m: c.score(e, torch.full((3, 5), 4), m), "tags must be in [0, 4)"),
        (
            lambda c, e, m: c.nll(e, torch.zeros(3, 5, dtype=torch.long), m, reduction="avg"),
            "reduction must be",
        ),
        (lambda c, e, m: c.expected_score(e, e, e, m), "edge_sums must have shape"),
    ],
)
def test_bad_inputs_raise_clear_errors(gen, call, message):
    emissions, mask = _batch(gen, [5, 2, 3], 4)
    with pytest.raises(ValueError) as excinfo:
        call(_crf(4, gen), emissions, mask)
    assert message in str(excinfo.value)


def test_bad_constructor_arguments():
    with pytest.raises(ValueError, match="n_tags must be >= 1, got 0"):
        CRF(0)
    with pytest.raises(ValueError, match=r"allowed must be a bool tensor of shape \(3, 3\)"):
        CRF(3, torch.ones(3, 2, dtype=torch.bool))


def test_numpy_params_use_minus_infinity(gen):
    allowed, start_ok, end_ok = _bioes_masks()
    crf = _crf(5, gen, (allowed, start_ok, end_ok))
    p = crf.numpy_params()
    trans, start, end = apply_constraints(
        crf.transitions.detach().numpy(),
        crf.start.detach().numpy(),
        crf.end.detach().numpy(),
        allowed.numpy(),
        start_ok.numpy(),
        end_ok.numpy(),
    )
    assert np.array_equal(p["transitions"], trans)
    assert np.array_equal(p["start"], start) and np.array_equal(p["end"], end)
    assert p["transitions"].dtype == np.float64
