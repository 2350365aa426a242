"""Distillation losses against direct computation by enumerating every label sequence."""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import pytest
import torch

from structkd.errors import ConfigError
from structkd.pipeline.crf import CRF
from structkd.pipeline.losses import (
    KD_METHODS,
    distillation_loss,
    emission_kd,
    gold_nll,
    lambda_at,
    pos_topwk_kd,
    posterior_kd,
    structural_kd,
    student_loss,
    topk_kd,
    topk_weights,
    topwk_kd,
    total_loss,
)
from structkd.pipeline.params import METHODS

LENGTHS = (3, 1, 4, 2)


@dataclass
class Rules:
    """Allowed-transition constraints shared by teacher and student (None = unconstrained)."""

    allowed: torch.Tensor
    start_allowed: torch.Tensor
    end_allowed: torch.Tensor


def random_rules(n_tags: int, gen: torch.Generator) -> Rules:
    """Random constraints that still leave tag 0 (allowed to start, end and repeat) feasible."""
    allowed = torch.rand(n_tags, n_tags, generator=gen) < 0.6
    start_allowed = torch.rand(n_tags, generator=gen) < 0.6
    end_allowed = torch.rand(n_tags, generator=gen) < 0.6
    allowed[0, 0] = start_allowed[0] = end_allowed[0] = True
    return Rules(allowed, start_allowed, end_allowed)


def make_crf(n_tags: int, rules: Rules | None, gen: torch.Generator) -> CRF:
    """A float64 CRF with N(0, 1) transitions, start and end."""
    if rules is None:
        crf = CRF(n_tags)
    else:
        crf = CRF(n_tags, rules.allowed, rules.start_allowed, rules.end_allowed)
    crf = crf.double()
    with torch.no_grad():
        crf.transitions.copy_(torch.randn(n_tags, n_tags, generator=gen, dtype=torch.float64))
        crf.start.copy_(torch.randn(n_tags, generator=gen, dtype=torch.float64))
        crf.end.copy_(torch.randn(n_tags, generator=gen, dtype=torch.float64))
    return crf


def path_log_probs(crf: CRF, rules: Rules | None, emissions: torch.Tensor) -> dict[tuple, float]:
    """``log p(y)`` of every feasible label sequence of one sentence (``emissions: (n, L)``)."""
    trans, start, end = (p.detach().double() for p in (crf.transitions, crf.start, crf.end))
    n, n_tags = emissions.shape
    scores = {}
    for path in itertools.product(range(n_tags), repeat=n):
        if rules is not None and not (
            rules.start_allowed[path[0]]
            and rules.end_allowed[path[-1]]
            and all(rules.allowed[a, b] for a, b in itertools.pairwise(path))
        ):
            continue
        s = start[path[0]] + end[path[-1]] + sum(emissions[t, y] for t, y in enumerate(path))
        s = s + sum(trans[a, b] for a, b in itertools.pairwise(path))
        scores[path] = float(s)
    log_z = torch.logsumexp(torch.tensor(list(scores.values()), dtype=torch.float64), 0).item()
    return {path: s - log_z for path, s in scores.items()}


@dataclass
class Case:
    """A padded batch with the student, its teacher's exact knowledge and exact references."""

    student: CRF
    rules: Rules | None
    emissions: torch.Tensor
    batch: dict[str, torch.Tensor]
    teacher_paths: list[dict[tuple, float]]

    def student_paths(self, b: int) -> dict[tuple, float]:
        n = int(self.batch["mask"][b].sum())
        return path_log_probs(self.student, self.rules, self.emissions[b, :n].detach())

    def sequence_cross_entropy(self) -> float:
        """``1/B Σ_b −Σ_y p_t(y) log p_s(y)`` by enumeration."""
        total = 0.0
        for b, teacher in enumerate(self.teacher_paths):
            student = self.student_paths(b)
            total -= sum(math.exp(lp) * student[path] for path, lp in teacher.items())
        return total / len(self.teacher_paths)


def make_case(
    seed: int,
    n_tags: int = 3,
    constrained: bool = False,
    k: int | None = None,
    lengths: tuple[int, ...] = LENGTHS,
) -> Case:
    """Teacher and student CRFs on a padded batch; the teacher's k-best (default K = all paths)."""
    gen = torch.Generator().manual_seed(seed)
    rules = random_rules(n_tags, gen) if constrained else None
    teacher = make_crf(n_tags, rules, gen)
    student = make_crf(n_tags, rules, gen)
    n_sent, width = len(lengths), max(lengths)
    mask = torch.arange(width)[None, :] < torch.tensor(lengths)[:, None]
    teacher_emissions = 2 * torch.randn(n_sent, width, n_tags, generator=gen, dtype=torch.float64)
    emissions = 2 * torch.randn(n_sent, width, n_tags, generator=gen, dtype=torch.float64)
    teacher_emissions, emissions = teacher_emissions * mask[..., None], emissions * mask[..., None]
    n_ranks = k if k is not None else n_tags ** max(lengths)
    topk_tags = torch.full((n_sent, n_ranks, width), -1, dtype=torch.long)
    topk_scores = torch.full((n_sent, n_ranks), -math.inf, dtype=torch.float64)
    k_valid = torch.zeros(n_sent, dtype=torch.long)
    log_marginals = torch.zeros(n_sent, width, n_tags, dtype=torch.float64)
    edge_sums = torch.zeros(n_sent, n_tags, n_tags, dtype=torch.float64)
    tags = torch.full((n_sent, width), -1, dtype=torch.long)
    teacher_paths = []
    for b, n in enumerate(lengths):
        paths = path_log_probs(teacher, rules, teacher_emissions[b, :n])
        teacher_paths.append(paths)
        ranked = sorted(paths.items(), key=lambda item: -item[1])[:n_ranks]
        k_valid[b] = len(ranked)
        for rank, (path, lp) in enumerate(ranked):
            topk_tags[b, rank, :n] = torch.tensor(path)
            topk_scores[b, rank] = lp + 7.0  # an arbitrary shift: only differences matter
        unary = torch.zeros(n, n_tags, dtype=torch.float64)
        for path, lp in paths.items():
            for t, y in enumerate(path):
                unary[t, y] += math.exp(lp)
            for a, c in itertools.pairwise(path):  # Σ_t q(y_t = a, y_t+1 = c)
                edge_sums[b, a, c] += math.exp(lp)
        log_marginals[b, :n] = unary.log()
        tags[b, :n] = torch.tensor(ranked[-1][0])
    batch = {
        "mask": mask,
        "tags": tags,
        "topk_tags": topk_tags,
        "topk_scores": topk_scores,
        "k_valid": k_valid,
        "log_marginals": log_marginals,
        "emissions": teacher_emissions,
        "edge_sums": edge_sums,
    }
    return Case(student, rules, emissions.requires_grad_(), batch, teacher_paths)


@pytest.mark.parametrize("constrained", [False, True])
def test_gold_nll_matches_enumeration(constrained: bool) -> None:
    case = make_case(1, constrained=constrained)
    got = gold_nll(case.student, case.emissions, case.batch["tags"], case.batch["mask"])
    want = 0.0
    for b, n in enumerate(LENGTHS):
        want -= case.student_paths(b)[tuple(case.batch["tags"][b, :n].tolist())]
    assert got.item() == pytest.approx(want / len(LENGTHS), rel=1e-9)


@pytest.mark.parametrize("constrained", [False, True])
def test_topwk_with_every_path_is_the_sequence_cross_entropy(constrained: bool) -> None:
    case = make_case(2, n_tags=3, constrained=constrained)
    assert (case.batch["k_valid"] < case.batch["topk_tags"].shape[1]).any()  # pad ranks exist
    b = case.batch
    got = topwk_kd(
        case.student, case.emissions, b["topk_tags"], b["topk_scores"], b["k_valid"], b["mask"]
    )
    assert got.item() == pytest.approx(case.sequence_cross_entropy(), rel=1e-9)


@pytest.mark.parametrize("constrained", [False, True])
def test_structural_is_the_sequence_cross_entropy(constrained: bool) -> None:
    case = make_case(3, n_tags=4, constrained=constrained)
    b = case.batch
    unary = b["log_marginals"].exp()
    got = structural_kd(case.student, case.emissions, unary, b["edge_sums"], b["mask"])
    assert got.item() == pytest.approx(case.sequence_cross_entropy(), rel=1e-9)
    via_dispatch = distillation_loss("structural", case.student, case.emissions, b)
    assert via_dispatch.item() == pytest.approx(got.item(), rel=1e-12)


def test_topk_is_the_mean_nll_over_real_paths_only() -> None:
    case = make_case(4, n_tags=3, k=5)
    b = case.batch
    k_valid = torch.tensor([3, 1, 5, 2])
    got = topk_kd(case.student, case.emissions, b["topk_tags"], k_valid, b["mask"])
    want = 0.0
    for s, n in enumerate(LENGTHS):
        student = case.student_paths(s)
        paths = [tuple(b["topk_tags"][s, r, :n].tolist()) for r in range(int(k_valid[s]))]
        want -= sum(student[p] for p in paths) / len(paths)
    assert got.item() == pytest.approx(want / len(LENGTHS), rel=1e-9)
    # Ranks beyond k_valid (real paths here, or -1 pads) are never counted.
    padded = b["topk_tags"].clone()
    padded[torch.arange(5)[None, :] >= k_valid[:, None]] = -1
    again = topk_kd(case.student, case.emissions, padded, k_valid, b["mask"])
    assert again.item() == pytest.approx(got.item(), rel=1e-12)


def test_topwk_ignores_scores_and_paths_beyond_k_valid() -> None:
    case = make_case(5, n_tags=3, k=4)
    b = case.batch
    k_valid = torch.tensor([2, 1, 3, 4])
    scores = b["topk_scores"].clone()
    got = topwk_kd(case.student, case.emissions, b["topk_tags"], scores, k_valid, b["mask"])
    beyond = torch.arange(4)[None, :] >= k_valid[:, None]
    scores[beyond] = 1e4  # garbage that would dominate a softmax
    tags = b["topk_tags"].clone()
    tags[beyond] = 0
    again = topwk_kd(case.student, case.emissions, tags, scores, k_valid, b["mask"])
    assert again.item() == pytest.approx(got.item(), rel=1e-12)
    want = 0.0
    for s, n in enumerate(LENGTHS):
        student = case.student_paths(s)
        paths = [tuple(b["topk_tags"][s, r, :n].tolist()) for r in range(int(k_valid[s]))]
        teacher = torch.tensor([case.teacher_paths[s][p] for p in paths], dtype=torch.float64)
        teacher = teacher.softmax(0)
        want -= sum(w.item() * student[p] for w, p in zip(teacher, paths, strict=True))
    assert got.item() == pytest.approx(want / len(LENGTHS), rel=1e-9)


def test_topk_weights_table1_example() -> None:
    # Paper Table 1: the top-2 paths TTF and FFT have unnormalised probabilities 8 and 6.
    scores = torch.tensor([[math.log(8), math.log(6), -math.inf]], dtype=torch.float64)
    weights = topk_weights(scores, torch.tensor([2]))
    assert weights[0].tolist() == pytest.approx([8 / 14, 6 / 14, 0.0], abs=1e-12)


def test_log_partition_once_per_sentence() -> None:
    rows: list[int] = []

    class CountingCRF(CRF):
        def log_partition(self, emissions: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
            rows.append(emissions.shape[0])
            return super().log_partition(emissions, mask)

    case = make_case(6, n_tags=3, k=5)
    crf = CountingCRF(3).double()
    crf.load_state_dict(case.student.state_dict())
    sharing = tuple(name for name, spec in KD_METHODS.items() if spec.shares_log_z)
    assert sharing == ("topk", "topwk", "pos+topwk", "structural")
    for method in sharing:
        rows.clear()
        distillation_loss(method, crf, case.emissions, case.batch)
        assert sum(rows) == len(LENGTHS)
        # student_loss shares the one log Z between the KD term and the gold NLL.
        rows.clear()
        student_loss(method, crf, case.emissions, case.batch, lam=0.5)
        assert sum(rows) == len(LENGTHS)


@pytest.mark.parametrize("temperature", [1.0, 2.25])
def test_posterior_matches_enumerated_marginals(temperature: float) -> None:
    case = make_case(7, n_tags=3, constrained=True)
    b = case.batch
    got = posterior_kd(case.student, case.emissions, b["log_marginals"], b["mask"], temperature)
    want = 0.0
    for s, n in enumerate(LENGTHS):
        student = torch.zeros(n, 3, dtype=torch.float64)
        for path, lp in case.student_paths(s).items():
            for t, y in enumerate(path):
                student[t, y] += math.exp(lp)
        p = (b["log_marginals"][s, :n] / temperature).softmax(-1)
        q = (student.log() / temperature).softmax(-1)
        want += temperature**2 * torch.where(p > 0, p * (p.log() - q.log()), 0.0).sum().item()
    assert got.item() == pytest.approx(want / len(LENGTHS), rel=1e-8, abs=1e-12)


@pytest.mark.parametrize("constrained", [False, True])
def test_posterior_of_identical_models_is_zero_with_zero_gradient(constrained: bool) -> None:
    case = make_case(8, constrained=constrained)
    mask = case.batch["mask"]
    teacher = case.student.log_marginals(case.emissions, mask).detach()
    loss = posterior_kd(case.student, case.emissions, teacher, mask, temperature=1.0)
    loss.backward()
    assert loss.item() == pytest.approx(0.0, abs=1e-12)
    assert case.emissions.grad.abs().max().item() < 1e-10
    assert case.student.transitions.grad.abs().max().item() < 1e-10


def test_emission_kd() -> None:
    case = make_case(9)
    mask, teacher = case.batch["mask"], case.batch["emissions"]
    same = emission_kd(case.emissions, case.emissions.detach(), mask, temperature=3.0)
    assert same.item() == pytest.approx(0.0, abs=1e-12)
    got = emission_kd(case.emissions, teacher, mask, temperature=2.0)
    p = (teacher / 2.0).log_softmax(-1)
    q = (case.emissions.detach() / 2.0).log_softmax(-1)
    want = 4.0 * ((p.exp() * (p - q)).sum(-1) * mask).sum() / len(LENGTHS)
    assert got.item() == pytest.approx(want.item(), rel=1e-10)


def test_pos_topwk_mixture() -> None:
    case = make_case(10, k=4)
    b = case.batch
    pos = posterior_kd(case.student, case.emissions, b["log_marginals"], b["mask"], 4.0)
    wk = topwk_kd(
        case.student, case.emissions, b["topk_tags"], b["topk_scores"], b["k_valid"], b["mask"]
    )
    args = (b["log_marginals"], b["topk_tags"], b["topk_scores"], b["k_valid"], b["mask"], 4.0)
    summed = pos_topwk_kd(case.student, case.emissions, *args, mixture="sum")
    mean = pos_topwk_kd(case.student, case.emissions, *args, mixture="mean")
    assert summed.item() == pytest.approx((pos + wk).item(), rel=1e-12)
    assert mean.item() == pytest.approx((pos + wk).item() / 2, rel=1e-12)


def test_lambda_schedule() -> None:
    assert lambda_at(0, 0.5) == 1.0
    assert lambda_at(1, 0.5) == pytest.approx(0.995)
    assert lambda_at(100, 0.5) == pytest.approx(0.5)
    assert lambda_at(200, 0.5) == 0.0
    assert lambda_at(250, 0.5) == 0.0
    assert lambda_at(99, 1.0) == pytest.approx(0.01)
    assert lambda_at(7, 0.0) == 1.0
    with pytest.raises(ConfigError):
        lambda_at(3, -1.0)


@pytest.mark.parametrize("method", METHODS)
def test_student_loss_combines_and_skips_zero_weight_terms(method: str) -> None:
    case = make_case(11, k=4)
    emissions, batch = case.emissions, case.batch
    for lam in (0.0, 0.3, 1.0):
        kd = distillation_loss(method, case.student, emissions, batch, temperature=2.0)
        gold = gold_nll(case.student, emissions, batch["tags"], batch["mask"])
        want = total_loss(kd, gold, lam)
        (want_grad,) = torch.autograd.grad(want, emissions)
        got = student_loss(method, case.student, emissions, batch, lam=lam, temperature=2.0)
        (got_grad,) = torch.autograd.grad(got, emissions)
        assert got.item() == pytest.approx(want.item(), rel=1e-12)
        torch.testing.assert_close(got_grad, want_grad, rtol=1e-10, atol=1e-12)
    if method == "baseline":
        assert kd.item() == pytest.approx(gold.item(), rel=1e-12)
    gold_only = {k: v for k, v in batch.items() if k in ("mask", "tags")}
    at_zero = student_loss(method, case.student, emissions, gold_only, lam=0.0)
    assert at_zero.item() == pytest.approx(gold.item(), rel=1e-12)


@pytest.mark.parametrize("method", METHODS)
def test_required_columns_suffice(method: str) -> None:
    case = make_case(12, k=4)
    columns = KD_METHODS[method].columns
    keep = set(columns) | {"mask"} | ({"tags"} if method == "baseline" else set())
    projected = {k: v for k, v in case.batch.items() if k in keep}
    full = distillation_loss(method, case.student, case.emissions, case.batch, temperature=2.0)
    got = distillation_loss(method, case.student, case.emissions, projected, temperature=2.0)
    assert got.item() == pytest.approx(full.item(), rel=1e-12)
    for name in columns:  # and every declared column is read
        without = {k: v for k, v in projected.items() if k != name}
        with pytest.raises(KeyError, match=f"batch has no '{name}'"):
            distillation_loss(method, case.student, case.emissions, without, temperature=2.0)


def test_registry_is_the_params_choices() -> None:
    assert tuple(KD_METHODS) == METHODS
    assert all(spec.name == name for name, spec in KD_METHODS.items())
    assert [name for name, spec in KD_METHODS.items() if spec.kd is None] == ["baseline"]


@pytest.mark.parametrize("method", METHODS)
def test_uses_temperature_is_true(method: str) -> None:
    case = make_case(21, k=4)
    at = [
        distillation_loss(method, case.student, case.emissions, case.batch, temperature=t).item()
        for t in (1.0, 2.0)
    ]
    assert (at[0] != pytest.approx(at[1], rel=1e-9)) == KD_METHODS[method].uses_temperature


@pytest.mark.parametrize("seed", [13, 14, 15])
@pytest.mark.parametrize("method", METHODS)
def test_gradients_reach_the_student_and_are_finite(method: str, seed: int) -> None:
    case = make_case(seed, n_tags=4, constrained=True, k=6)
    loss = distillation_loss(method, case.student, case.emissions, case.batch, temperature=2.0)
    loss.backward()
    assert torch.isfinite(loss)
    grad = case.emissions.grad
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0
    assert (grad[~case.batch["mask"]] == 0).all()
    crf_params = (case.student.transitions, case.student.start, case.student.end)
    # what DDP is told to expect (find_unused_parameters): a KD term that skips the CRF
    assert all(p.grad is not None for p in crf_params) == KD_METHODS[method].touches_crf
    if KD_METHODS[method].touches_crf:
        for param in crf_params:
            assert torch.isfinite(param.grad).all()
        assert case.student.start.grad.abs().sum() > 0


@pytest.mark.parametrize("method", METHODS)
def test_length_one_batch(method: str) -> None:
    case = make_case(16, n_tags=4, constrained=True, k=3, lengths=(1, 1, 1))
    assert not case.batch["edge_sums"].any()  # no edges
    loss = distillation_loss(method, case.student, case.emissions, case.batch, temperature=1.5)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(case.emissions.grad).all()
    grad = case.student.transitions.grad  # transitions play no part in length-1 sentences
    assert grad is None or torch.isfinite(grad).all()


def _loss_and_grad(method: str, case: Case, emissions: torch.Tensor, batch: dict) -> tuple:
    emissions = emissions.detach().clone().requires_grad_()
    case.student.zero_grad()
    loss = distillation_loss(method, case.student, emissions, batch, temperature=2.0)
    loss.backward()
    mask = batch["mask"]
    return loss.item(), emissions.grad[mask], case.student.transitions.grad


@pytest.mark.parametrize("method", METHODS)
def test_garbage_in_pads_changes_nothing(method: str) -> None:
    case = make_case(17, n_tags=4, constrained=True, k=6)
    gen = torch.Generator().manual_seed(18)
    mask = case.batch["mask"]
    clean = _loss_and_grad(method, case, case.emissions, case.batch)

    def garbage(x: torch.Tensor, pads: torch.Tensor) -> torch.Tensor:
        noise = 1e30 * torch.randn(x.shape, generator=gen, dtype=torch.float64)
        noise[noise > 1e30] = math.nan
        while pads.dim() < x.dim():
            pads = pads.unsqueeze(-1)
        return torch.where(pads, noise.to(x.dtype), x)

    dirty = dict(case.batch)
    pads = ~mask
    for name in ("log_marginals", "emissions"):
        dirty[name] = garbage(case.batch[name], pads)
    dirty["tags"] = torch.where(pads, torch.randint(0, 4, pads.shape, generator=gen), dirty["tags"])
    path_pads = pads[:, None, :].expand_as(case.batch["topk_tags"])
    random_tags = torch.randint(0, 4, path_pads.shape, generator=gen)
    dirty["topk_tags"] = torch.where(path_pads, random_tags, case.batch["topk_tags"])
    got = _loss_and_grad(method, case, garbage(case.emissions.detach(), pads), dirty)
    assert got[0] == pytest.approx(clean[0], rel=1e-12)
    torch.testing.assert_close(got[1], clean[1], rtol=1e-10, atol=1e-12)
    if clean[2] is not None:
        torch.testing.assert_close(got[2], clean[2], rtol=1e-10, atol=1e-12)


def test_bad_settings_are_config_errors() -> None:
    case = make_case(19, k=2)
    with pytest.raises(ConfigError, match="temperature"):
        distillation_loss("posterior", case.student, case.emissions, case.batch, temperature=0.0)
    with pytest.raises(ConfigError, match="unknown distillation method"):
        distillation_loss("token", case.student, case.emissions, case.batch)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="mixture"):
        distillation_loss("pos+topwk", case.student, case.emissions, case.batch, mixture="avg")  # type: ignore[arg-type]


@pytest.mark.parametrize("method", METHODS)
def test_storage_dtypes(method: str) -> None:
    """Knowledge as the shards can store it (int16 ids, float16 marginals and emissions, float32
    edge sums) with a float32 student."""
    case = make_case(20, n_tags=4, constrained=True, k=5)
    exact = distillation_loss(method, case.student, case.emissions, case.batch, temperature=2.0)
    stored = dict(case.batch)
    for name in ("topk_tags", "k_valid", "tags"):
        stored[name] = case.batch[name].to(torch.int16)
    for name in ("log_marginals", "emissions"):
        stored[name] = case.batch[name].to(torch.float16)
    stored["edge_sums"] = case.batch["edge_sums"].float()
    stored["topk_scores"] = case.batch["topk_scores"].float()
    student = case.student.float()
    emissions = case.emissions.detach().float().requires_grad_()
    got = distillation_loss(method, student, emissions, stored, temperature=2.0)
    got.backward()
    assert got.dtype == torch.float32 and torch.isfinite(emissions.grad).all()
    assert got.item() == pytest.approx(exact.item(), rel=2e-3, abs=2e-3)
