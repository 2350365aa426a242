"""Student losses: gold CRF NLL, the paper's distillation losses, the λ schedule and the
registry of distillation methods (:data:`KD_METHODS`).

Every loss is a scalar **summed over tokens (and paths, labels) and divided by the number of
sentences B**, as in the paper (Wang et al., ACL 2020, arXiv 2004.03846) and the authors' code
(``Alibaba-NLP/MultilangStructureKD``), never by the number of tokens. Shapes: B sentences,
N tokens (padded), L tags, K k-best ranks.

Padding is handled here, not trusted to the caller: padded positions of every input (student
emissions, teacher log-marginals, emissions, tags) are replaced by constants
before any arithmetic, so whatever the pads hold (zeros, huge numbers, NaN) changes neither the
losses nor their gradients.

Teacher log-marginals may hold ``-inf`` where a constraint forbids a tag (probability exactly 0);
the KL terms treat ``0 · log 0`` as 0 instead of NaN.

A new distillation method is one loss function, one adapter reading its columns from a batch
(:class:`KDInputs`) and one :class:`KDMethod` entry in :data:`KD_METHODS` (plus its name in
``params.Method``, which a test checks against the registry).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from structkd.errors import ConfigError
from structkd.pipeline.crf import CRF
from structkd.pipeline.params import METHODS, Method
from structkd.storage.schemas import KnowledgeColumn

Mixture = Literal["sum", "mean"]


def _tokens(x: Tensor, mask: Tensor) -> Tensor:
    """``x: (B, N, ...)`` with every padded token (``mask: (B, N)`` False) replaced by 0."""
    keep = mask.reshape(mask.shape + (1,) * (x.dim() - mask.dim()))
    return torch.where(keep, x, torch.zeros((), dtype=x.dtype, device=x.device))


def _log_z(crf: CRF, emissions: Tensor, mask: Tensor, log_z: Tensor | None) -> Tensor:
    """The student's ``log Z (B,)``: ``log_z`` when the caller shares one, else computed once."""
    return crf.log_partition(emissions, mask) if log_z is None else log_z


def _check_temperature(temperature: float) -> None:
    if not (temperature > 0 and math.isfinite(temperature)):
        raise ConfigError(f"temperature must be a positive number, got {temperature}")


def _kl_sum(teacher_logits: Tensor, student_logits: Tensor, mask: Tensor, t: float) -> Tensor:
    """``T² · Σ_tokens KL(softmax(teacher/T) ‖ softmax(student/T))`` (over the last axis).

    ``0 · (log 0 − log 0)`` counts as 0, so tags forbidden for both sides (``-inf``) are fine.
    """
    log_p = F.log_softmax(_tokens(teacher_logits, mask) / t, dim=-1)
    log_q = F.log_softmax(_tokens(student_logits, mask) / t, dim=-1)
    p = log_p.exp()
    kl = torch.where(p > 0, p * (log_p - log_q), torch.zeros_like(p))
    return t * t * _tokens(kl, mask).sum()


def gold_nll(
    crf: CRF, emissions: Tensor, tags: Tensor, mask: Tensor, *, log_z: Tensor | None = None
) -> Tensor:
    """CRF negative log-likelihood of the gold tags, summed over sentences and divided by B.

    Args:
        crf: the student CRF.
        emissions: ``(B, N, L)`` student emission scores.
        tags: ``(B, N)`` gold tag ids (pads may hold anything, e.g. -1).
        mask: ``(B, N)`` bool, True on real tokens (every sentence has >= 1).
        log_z: optional ``(B,)`` ``crf.log_partition(emissions, mask)`` already computed (and
            differentiable), shared with a KD term by :func:`student_loss`.
    """
    emissions = _tokens(emissions, mask)
    tags = torch.where(mask, tags.long(), 0)
    nll = _log_z(crf, emissions, mask, log_z) - crf.score(emissions, tags, mask)
    return nll.sum() / mask.shape[0]


def emission_kd(
    student_emissions: Tensor, teacher_emissions: Tensor, mask: Tensor, temperature: float = 1.0
) -> Tensor:
    """Emission KD (paper Eq. 5, authors' code): ``T²/B · Σ_t KL(softmax(E_t/T) ‖ softmax(E_s/T))``.

    Transitions are ignored on both sides: each token's emission softmax is matched on its own.

    Args:
        student_emissions: ``(B, N, L)``.
        teacher_emissions: ``(B, N, L)`` (any float dtype; pads ignored).
        mask: ``(B, N)`` bool.
        temperature: T > 0; T = 1 is the paper's Eq. 5 up to the teacher entropy (a constant).
    """
    _check_temperature(temperature)
    teacher = teacher_emissions.to(student_emissions.dtype)
    return _kl_sum(teacher, student_emissions, mask, temperature) / mask.shape[0]


def _valid_path_nll(
    crf: CRF,
    student_emissions: Tensor,
    topk_tags: Tensor,
    k_valid: Tensor,
    mask: Tensor,
    log_z: Tensor | None,
) -> tuple[Tensor, Tensor, Tensor]:
    """``−log p_s(ŷ_bk)`` for every real teacher path, the student log Z computed once per sentence.

    Pad ranks (``k >= k_valid[b]``) are never scored. All real paths are scored in one batched
    ``crf.score`` call on emissions gathered per path; ``log Z`` is computed B times, not B·K.

    Returns:
        ``nll (V,)``, ``b (V,)`` and ``k (V,)``: the V real (sentence, rank) pairs, in that order.
    """
    emissions = _tokens(student_emissions, mask)
    n_ranks = topk_tags.shape[1]
    real = torch.arange(n_ranks, device=mask.device) < k_valid.to(mask.device).long()[:, None]
    b, k = real.nonzero(as_tuple=True)
    paths = topk_tags[b, k].long()
    paths = torch.where(mask[b], paths, 0)
    log_z = _log_z(crf, emissions, mask, log_z)
    nll = log_z[b] - crf.score(emissions[b], paths, mask[b])
    return nll, b, k


def topk_kd(
    crf: CRF,
    student_emissions: Tensor,
    topk_tags: Tensor,
    k_valid: Tensor,
    mask: Tensor,
    *,
    log_z: Tensor | None = None,
) -> Tensor:
    """Top-K KD (paper Eq. 8): ``1/B · Σ_b 1/k_b · Σ_{k < k_b} −log p_s(ŷ_bk | x_b)``.

    The mean is over each sentence's ``k_valid`` real paths, never over the padded K, so a
    sentence with fewer than K distinct paths is not down-weighted. A sentence with
    ``k_valid = 0`` contributes 0.

    Args:
        crf: the student CRF.
        student_emissions: ``(B, N, L)``.
        topk_tags: ``(B, K, N)`` teacher k-best paths (ranks beyond ``k_valid`` ignored).
        k_valid: ``(B,)`` number of real paths per sentence.
        mask: ``(B, N)`` bool.
        log_z: optional shared student ``log Z (B,)`` (see :func:`gold_nll`).
    """
    nll, b, _ = _valid_path_nll(crf, student_emissions, topk_tags, k_valid, mask, log_z)
    weights = 1.0 / k_valid.to(nll.device)[b].to(nll.dtype)
    return (weights * nll).sum() / mask.shape[0]


def topk_weights(topk_scores: Tensor, k_valid: Tensor) -> Tensor:
    """Top-WK weights ``p'_t``: softmax of the real paths' scores per sentence, pads exactly 0.

    Computed in log space (Z_t cancels, so unnormalised path scores and log-probabilities give
    the same weights). Returns ``(B, K)`` float64; rows with ``k_valid = 0`` are all 0.
    """
    n_ranks = topk_scores.shape[1]
    real = torch.arange(n_ranks, device=topk_scores.device) < k_valid.long()[:, None]
    scores = torch.where(real, topk_scores.double(), -math.inf)
    top = scores.amax(dim=1, keepdim=True)
    top = torch.where(torch.isfinite(top), top, 0.0)
    shifted = (scores - top).exp()
    return shifted / shifted.sum(dim=1, keepdim=True).clamp_min(torch.finfo(torch.float64).tiny)


def topwk_kd(
    crf: CRF,
    student_emissions: Tensor,
    topk_tags: Tensor,
    topk_scores: Tensor,
    k_valid: Tensor,
    mask: Tensor,
    *,
    log_z: Tensor | None = None,
) -> Tensor:
    """Weighted Top-K KD (paper Eq. 9): ``1/B · Σ_b Σ_k p'_t(ŷ_bk) · −log p_s(ŷ_bk | x_b)``.

    ``p'_t`` renormalises the teacher's path probabilities over its real k-best paths
    (:func:`topk_weights`); not divided by K. With K covering every path this is the exact
    sequence-level cross-entropy ``−Σ_y p_t(y) log p_s(y)``.

    Args:
        crf: the student CRF.
        student_emissions: ``(B, N, L)``.
        topk_tags: ``(B, K, N)`` teacher k-best paths.
        topk_scores: ``(B, K)`` their teacher scores (``-inf`` beyond ``k_valid``).
        k_valid: ``(B,)``.
        mask: ``(B, N)`` bool.
        log_z: optional shared student ``log Z (B,)`` (see :func:`gold_nll`).
    """
    nll, b, k = _valid_path_nll(crf, student_emissions, topk_tags, k_valid, mask, log_z)
    weights = topk_weights(topk_scores.to(nll.device), k_valid.to(nll.device))[b, k]
    return (weights.to(nll.dtype) * nll).sum() / mask.shape[0]


def posterior_kd(
    crf: CRF,
    student_emissions: Tensor,
    teacher_log_marginals: Tensor,
    mask: Tensor,
    temperature: float = 1.0,
) -> Tensor:
    """Posterior KD (paper Eq. 13, authors' form): ``T²/B · Σ_t KL(P_t ‖ P_s)``.

    ``P_t = softmax(log q_t / T)`` and ``P_s = softmax(log q_s / T)`` per token, where ``q`` are
    the CRFs' marginals from forward-backward at T = 1 (the student's differentiably). The
    temperature sharpens or flattens each token's marginal (``∝ q^{1/T}``); it does not temper
    the CRF potentials. At T = 1 this is Eq. 13 minus the teacher entropy (a constant).

    Args:
        crf: the student CRF.
        student_emissions: ``(B, N, L)``.
        teacher_log_marginals: ``(B, N, L)`` teacher ``log q(y_t = j)`` (``-inf`` = forbidden).
        mask: ``(B, N)`` bool.
        temperature: T > 0 (authors: 2.25 for the paper's numbers, 4 claimed better).
    """
    _check_temperature(temperature)
    student = crf.log_marginals(_tokens(student_emissions, mask), mask)
    teacher = teacher_log_marginals.to(student.dtype)
    return _kl_sum(teacher, student, mask, temperature) / mask.shape[0]


def structural_kd(
    crf: CRF,
    student_emissions: Tensor,
    teacher_unary: Tensor,
    teacher_edge_sums: Tensor,
    mask: Tensor,
    *,
    log_z: Tensor | None = None,
) -> Tensor:
    """Exact structural KD, CRF ⇒ CRF (Wang et al. 2021, arXiv 2010.05010, "Case 1a").

    ``1/B · Σ_b [log Z_s(x_b) − E_{q_t}[score_s(y, x_b)]] = −1/B · Σ_b Σ_y p_t(y) log p_s(y)``:
    the full sequence-level cross-entropy, with no k-best approximation, because the student score
    is linear in factors whose teacher expectations are the unary marginals and the edge
    marginals summed over positions (the expected transition counts). There is no temperature:
    this is the T = 1 objective, exact only because the teacher factors are the consistent
    marginals of one sequence distribution (sentences whose value comes out below 0 from
    rounding of float16 marginals are clamped to 0, as the authors do).

    Args:
        crf: the student CRF.
        student_emissions: ``(B, N, L)``.
        teacher_unary: ``(B, N, L)`` teacher ``q(y_t = j)`` (probabilities, e.g.
            ``log_marginals.exp()``).
        teacher_edge_sums: ``(B, L, L)`` teacher ``Σ_t q(y_t = a, y_{t+1} = b)`` per sentence.
        mask: ``(B, N)`` bool.
        log_z: optional shared student ``log Z (B,)`` (see :func:`gold_nll`).
    """
    emissions = _tokens(student_emissions, mask)
    unary = _tokens(teacher_unary.to(emissions.dtype), mask)
    expected = crf.expected_score(emissions, unary, teacher_edge_sums, mask)
    per_sentence = _log_z(crf, emissions, mask, log_z) - expected
    return per_sentence.clamp_min(0).sum() / mask.shape[0]


def pos_topwk_kd(
    crf: CRF,
    student_emissions: Tensor,
    teacher_log_marginals: Tensor,
    topk_tags: Tensor,
    topk_scores: Tensor,
    k_valid: Tensor,
    mask: Tensor,
    temperature: float = 1.0,
    mixture: Mixture = "sum",
    *,
    log_z: Tensor | None = None,
) -> Tensor:
    """Pos.+Top-WK: posterior KD (at ``temperature``) plus Top-WK (at T = 1).

    ``mixture="sum"`` adds them (the authors' code); ``"mean"`` halves the sum (the paper's
    "averaging of Eq. 9, 13"). ``log_z`` is an optional shared student ``log Z`` for Top-WK.
    """
    if mixture not in ("sum", "mean"):
        raise ConfigError(f"mixture must be 'sum' or 'mean', got {mixture!r}")
    total = posterior_kd(
        crf, student_emissions, teacher_log_marginals, mask, temperature
    ) + topwk_kd(crf, student_emissions, topk_tags, topk_scores, k_valid, mask, log_z=log_z)
    return total if mixture == "sum" else total / 2


def lambda_at(epoch: int, anneal_rate_percent: float) -> float:
    """Teacher-annealing weight of the KD loss: ``λ_e = max(0, 1 − e·a/100)``, e 0-based.

    The rate is in **percent per epoch**, as the authors' code reads its ``anneal_factor``: a = 0.5
    gives λ = 1 at epoch 0 (pure KD, no gold loss) and reaches 0 at epoch 200.
    """
    if epoch < 0:
        raise ValueError(f"epoch must be >= 0, got {epoch}")
    if not (anneal_rate_percent >= 0 and math.isfinite(anneal_rate_percent)):
        raise ConfigError(
            f"anneal_rate must be >= 0 (percent per epoch), got {anneal_rate_percent}"
        )
    return max(0.0, 1.0 - epoch * anneal_rate_percent / 100.0)


def total_loss(kd: Tensor, gold: Tensor, lam: float) -> Tensor:
    """``λ·L_KD + (1−λ)·L_gold`` (paper §3.3)."""
    return lam * kd + (1.0 - lam) * gold


def _column(batch: Mapping[str, Tensor] | Any, name: str, method: str, device: Any) -> Tensor:
    """Column ``name`` of ``batch`` (a mapping or an object with attributes), on ``device``."""
    try:
        value = batch[name] if isinstance(batch, Mapping) else getattr(batch, name)
    except (KeyError, AttributeError):
        raise KeyError(f"batch has no '{name}', which method '{method}' needs") from None
    return value.to(device)


def _batch_gold_nll(
    method: str,
    crf: CRF,
    student_emissions: Tensor,
    batch: Mapping[str, Tensor] | Any,
    log_z: Tensor | None = None,
) -> Tensor:
    device = student_emissions.device
    mask = _column(batch, "mask", method, device).bool()
    tags = _column(batch, "tags", method, device)
    return gold_nll(crf, student_emissions, tags, mask, log_z=log_z)


@dataclass(frozen=True)
class KDInputs:
    """One batch as a method's KD function sees it: the student side, the settings, and the
    knowledge columns the method declares (so a method cannot read what the stream did not load).
    """

    method: KDMethod
    crf: CRF
    emissions: Tensor
    mask: Tensor
    batch: Mapping[str, Tensor] | Any
    temperature: float
    mixture: Mixture
    log_z: Tensor | None

    def column(self, name: KnowledgeColumn) -> Tensor:
        """Knowledge column ``name`` on the student's device; it must be one the method declares."""
        if name not in self.method.columns:
            raise AssertionError(f"method '{self.method.name}' reads undeclared column '{name}'")
        return _column(self.batch, name, self.method.name, self.emissions.device)


@dataclass(frozen=True)
class KDMethod:
    """One distillation method: the knowledge it reads and how its KD term is computed.

    Attributes:
        name: its ``params.Method`` choice.
        columns: the knowledge-shard columns it reads (gold ``tags`` and ``mask`` come from the
            corpus); the student streams only these.
        shares_log_z: its KD term needs the student's log Z, which :func:`student_loss` then
            computes once for both terms (posterior KD gets it inside forward-backward, which
            does not expose it).
        uses_temperature: ``student.temperature`` changes its loss.
        kd: its KD term ``L_KD``; None for the baseline, which has none (its loss is the gold NLL).
        touches_crf: its KD term reads the student's CRF; where it does not (emission), the loss
            at λ = 1 leaves the CRF without a gradient, which DDP must be told to expect.
    """

    name: Method
    columns: tuple[KnowledgeColumn, ...]
    shares_log_z: bool
    uses_temperature: bool
    kd: Callable[[KDInputs], Tensor] | None
    touches_crf: bool = True


def _emission(x: KDInputs) -> Tensor:
    return emission_kd(x.emissions, x.column("emissions"), x.mask, x.temperature)


def _topk(x: KDInputs) -> Tensor:
    paths, k_valid = x.column("topk_tags"), x.column("k_valid")
    return topk_kd(x.crf, x.emissions, paths, k_valid, x.mask, log_z=x.log_z)


def _topwk(x: KDInputs) -> Tensor:
    paths, scores, k_valid = x.column("topk_tags"), x.column("topk_scores"), x.column("k_valid")
    return topwk_kd(x.crf, x.emissions, paths, scores, k_valid, x.mask, log_z=x.log_z)


def _posterior(x: KDInputs) -> Tensor:
    return posterior_kd(x.crf, x.emissions, x.column("log_marginals"), x.mask, x.temperature)


def _pos_topwk(x: KDInputs) -> Tensor:
    return pos_topwk_kd(
        x.crf,
        x.emissions,
        x.column("log_marginals"),
        x.column("topk_tags"),
        x.column("topk_scores"),
        x.column("k_valid"),
        x.mask,
        x.temperature,
        x.mixture,
        log_z=x.log_z,
    )


def _structural(x: KDInputs) -> Tensor:
    unary = x.column("log_marginals").to(x.emissions.dtype).exp()
    edge_sums = x.column("edge_sums")
    return structural_kd(x.crf, x.emissions, unary, edge_sums, x.mask, log_z=x.log_z)


_PATHS: tuple[KnowledgeColumn, ...] = ("topk_tags", "k_valid")
_WEIGHTED_PATHS: tuple[KnowledgeColumn, ...] = ("topk_tags", "topk_scores", "k_valid")


def _registry(*methods: KDMethod) -> Mapping[str, KDMethod]:
    return MappingProxyType({m.name: m for m in methods})


KD_METHODS: Mapping[str, KDMethod] = _registry(
    KDMethod("baseline", (), shares_log_z=False, uses_temperature=False, kd=None),
    KDMethod(
        "emission",
        ("emissions",),
        shares_log_z=False,
        uses_temperature=True,
        kd=_emission,
        touches_crf=False,
    ),
    KDMethod("topk", _PATHS, shares_log_z=True, uses_temperature=False, kd=_topk),
    KDMethod("topwk", _WEIGHTED_PATHS, shares_log_z=True, uses_temperature=False, kd=_topwk),
    KDMethod(
        "posterior", ("log_marginals",), shares_log_z=False, uses_temperature=True, kd=_posterior
    ),
    KDMethod(
        "pos+topwk",
        ("log_marginals", *_WEIGHTED_PATHS),
        shares_log_z=True,
        uses_temperature=True,
        kd=_pos_topwk,
    ),
    KDMethod(
        "structural",
        ("log_marginals", "edge_sums"),
        shares_log_z=True,
        uses_temperature=False,
        kd=_structural,
    ),
)
"""Every distillation method by name, in ``params.Method`` order (a test checks they agree)."""


def kd_method(method: str) -> KDMethod:
    """The registry entry of ``method``; an unknown name is a ConfigError listing the choices."""
    try:
        return KD_METHODS[method]
    except KeyError:
        choices = ", ".join(METHODS)
        raise ConfigError(
            f"unknown distillation method {method!r}; choose one of {choices}"
        ) from None


def distillation_loss(
    method: Method,
    crf: CRF,
    student_emissions: Tensor,
    batch: Mapping[str, Tensor] | Any,
    *,
    temperature: float = 1.0,
    mixture: Mixture = "sum",
    log_z: Tensor | None = None,
) -> Tensor:
    """The KD term ``L_KD`` of ``method`` on one batch.

    ``batch`` is a mapping (or an object with attributes) holding ``mask (B, N)`` bool, gold
    ``tags (B, N)`` and the knowledge columns ``KD_METHODS[method].columns`` as tensors:
    ``topk_tags (B, K, N)``, ``topk_scores (B, K)``, ``k_valid (B,)``, ``log_marginals (B, N, L)``,
    ``emissions (B, N, L)`` (teacher), ``edge_sums (B, L, L)``.

    For ``"baseline"`` the KD term *is* the gold NLL, so ``total_loss`` gives the gold NLL for
    every λ. ``temperature`` applies to the methods with ``uses_temperature`` (emission,
    posterior and the posterior part of ``pos+topwk``); Top-K/Top-WK use the teacher's paths at
    T = 1 and ``structural`` is the exact T = 1 cross-entropy. ``log_z`` is an optional shared
    student ``log Z (B,)`` (see :func:`gold_nll`), used by the methods with ``shares_log_z``.
    """
    spec = kd_method(method)
    if spec.kd is None:
        return _batch_gold_nll(method, crf, student_emissions, batch, log_z)
    mask = _column(batch, "mask", method, student_emissions.device).bool()
    inputs = KDInputs(spec, crf, student_emissions, mask, batch, temperature, mixture, log_z)
    return spec.kd(inputs)


def student_loss(
    method: Method,
    crf: CRF,
    student_emissions: Tensor,
    batch: Mapping[str, Tensor] | Any,
    *,
    lam: float,
    temperature: float = 1.0,
    mixture: Mixture = "sum",
) -> Tensor:
    """``total_loss`` of one batch, skipping whichever term has weight 0.

    At λ = 1 (epoch 0) the gold NLL is not computed, at λ = 0 the KD term is not, and the
    baseline computes only the gold NLL. When both terms are needed, methods with
    ``shares_log_z`` compute the student's log Z once for both.
    """
    spec = kd_method(method)
    if spec.kd is None or lam <= 0.0:
        return _batch_gold_nll(method, crf, student_emissions, batch)
    log_z = None
    if lam < 1.0 and spec.shares_log_z:
        mask = _column(batch, "mask", method, student_emissions.device).bool()
        log_z = crf.log_partition(_tokens(student_emissions, mask), mask)
    kd = distillation_loss(
        method, crf, student_emissions, batch, temperature=temperature, mixture=mixture, log_z=log_z
    )
    if lam >= 1.0:
        return kd
    gold = _batch_gold_nll(method, crf, student_emissions, batch, log_z)
    return total_loss(kd, gold, lam)


def _select(batch: Mapping[str, Tensor] | Any, rows: Tensor) -> Mapping[str, Tensor] | Any:
    """Sentences ``rows`` of a batch (a mapping of tensors, or a ``Batch``)."""
    if isinstance(batch, Mapping):
        return {name: value[rows.to(value.device)] for name, value in batch.items()}
    return batch.select(rows)


def sentence_weighted_loss(
    method: Method,
    crf: CRF,
    student_emissions: Tensor,
    batch: Mapping[str, Tensor] | Any,
    *,
    lams: Tensor,
    weights: Tensor | None = None,
    temperature: float = 1.0,
    mixture: Mixture = "sum",
) -> Tensor:
    """``1/B · Σ_b w_b·[λ_b·L_KD(b) + (1−λ_b)·L_gold(b)]``: :func:`student_loss` with a λ and a
    weight per sentence.

    Every loss is a sum over sentences divided by B, so the sentences sharing a (λ, w) are one
    :func:`student_loss` call, weighted by w and their share of the batch; a sentence with
    λ_b = 0 is trained on its gold labels alone (trust per language gives a useless teacher no
    say), one with λ_b = 1 on the KD term alone (unlabeled text, whose weight is w_b).

    Args:
        lams: ``(B,)`` the λ of every sentence.
        weights: ``(B,)`` the weight of every sentence; None: 1.
    """
    lam_values = lams.detach().cpu().double()
    weight_values = torch.ones_like(lam_values) if weights is None else weights.detach().cpu()
    pairs = torch.stack([lam_values, weight_values.double()], dim=1)
    total = student_emissions.new_zeros(())
    for lam, weight in torch.unique(pairs, dim=0).tolist():
        rows = torch.nonzero((pairs[:, 0] == lam) & (pairs[:, 1] == weight)).flatten()
        part = student_loss(
            method,
            crf,
            student_emissions[rows.to(student_emissions.device)],
            _select(batch, rows),
            lam=lam,
            temperature=temperature,
            mixture=mixture,
        )
        total = total + part * (weight * len(rows) / len(lam_values))
    return total
