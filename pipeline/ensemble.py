"""Knowledge of a teacher ensemble: the exact mixture of several CRF teachers of the same sentences.

A mixture of M CRFs with weights ``w_i`` (summing to 1) is the sequence distribution
``p_mix(y) = Σ_i w_i p_i(y)``. It is not a CRF, but everything a student distils from is exact:

* node and edge marginals are linear in the distribution, so the mixture's are the weighted
  means of the members' (any layout of the edge column: the mean is taken value by value);
  structural KD, a cross-entropy linear in the teacher distribution, then equals the weighted
  mean of the per-member cross-entropies;
* the emission target is the weighted mean of the members' per-token ``softmax(emissions)``,
  stored as its log (a per-token shift of emissions changes no softmax, so the student's
  temperature applies to the mixture);
* Top-K / Top-WK: the union of the members' k-best paths, each scored under every member
  (``log p_i(y) = score_i(y) − log Z_i``), mixed in log space, the K most probable kept;
  ``topk_scores`` are then log-probabilities and ``log_z`` is 0 (``exp(score − log_z)`` stays
  the probability for every reader).

A mixture of one teacher is that teacher: :func:`mix` returns it unchanged, so single-teacher
knowledge is what the export wrote before ensembles existed, byte for byte.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from structkd.pipeline import crf_kernels
from structkd.storage import ragged


@dataclass(frozen=True)
class TeacherKnowledge:
    """One teacher's (or one mixture's) knowledge of a shard, flat as the kernels return it.

    Attributes:
        emissions, log_marginals: ``(n_tokens, L)`` float64.
        log_z: ``(n_sents,)``.  edge_sums: ``(n_sents, L, L)`` edge marginals summed over each
            sentence's positions, or None.
        kbest_tags: ``(k * n_tokens,)``, path-major per sentence, -1 beyond ``k_valid``.
        kbest_scores: ``(n_sents, k)`` non-increasing, ``-inf`` beyond ``k_valid``.
        k_valid: ``(n_sents,)``.
        crf: ``transitions``, ``start``, ``end`` (``-inf`` = forbidden) of a single teacher;
            None for a mixture, which has no CRF of its own.
    """

    emissions: np.ndarray
    log_z: np.ndarray
    log_marginals: np.ndarray
    edge_sums: np.ndarray | None
    kbest_tags: np.ndarray
    kbest_scores: np.ndarray
    k_valid: np.ndarray
    crf: dict[str, np.ndarray] | None


def teacher_knowledge(
    emissions: np.ndarray, lengths: np.ndarray, crf: dict[str, np.ndarray], *, k: int, edges: bool
) -> TeacherKnowledge:
    """Exact knowledge of one CRF teacher from its emissions (forward-backward, list Viterbi)."""
    kwargs = {"emissions": emissions, "offsets": ragged.offsets(lengths), **crf}
    log_z, log_marginals, edge_sums = crf_kernels.posteriors(**kwargs, edge_sums=edges)
    kbest_tags, kbest_scores, k_valid = crf_kernels.kbest(**kwargs, k=k)
    return TeacherKnowledge(
        emissions, log_z, log_marginals, edge_sums, kbest_tags, kbest_scores, k_valid, crf
    )


def path_log_probs(
    paths: np.ndarray, emissions: np.ndarray, crf: dict[str, np.ndarray], log_z: float
) -> np.ndarray:
    """``log p(y) = score(y) − log Z`` of ``paths (P, n)`` under one CRF (``emissions (n, L)``)."""
    paths = np.asarray(paths, np.int64)
    n = paths.shape[1]
    with np.errstate(invalid="ignore"):  # -inf + -inf stays -inf; no +inf can occur
        score = crf["start"][paths[:, 0]] + crf["end"][paths[:, -1]]
        score = score + emissions[np.arange(n)[None, :], paths].sum(axis=1)
        if n > 1:
            score = score + crf["transitions"][paths[:, :-1], paths[:, 1:]].sum(axis=1)
    return score - log_z


def _log_weights(weights: Sequence[float] | None, m: int) -> np.ndarray:
    w = np.full(m, 1.0 / m) if weights is None else np.asarray(weights, np.float64)
    if w.shape != (m,) or (w < 0).any() or not np.isfinite(w).all() or w.sum() <= 0:
        raise ValueError(f"need {m} finite non-negative weights with a positive sum, got {weights}")
    with np.errstate(divide="ignore"):
        return np.log(w / w.sum())


def _log_mix(log_values: Sequence[np.ndarray], log_w: np.ndarray) -> np.ndarray:
    """``log Σ_i w_i exp(v_i)`` element-wise, stable, ``-inf`` where every member is ``-inf``."""
    stacked = np.stack(log_values) + log_w.reshape(-1, *([1] * log_values[0].ndim))
    top = stacked.max(axis=0)
    safe = np.where(np.isfinite(top), top, 0.0)
    with np.errstate(divide="ignore"):
        return safe + np.log(np.exp(stacked - safe).sum(axis=0))


def _log_softmax(emissions: np.ndarray) -> np.ndarray:
    top = emissions.max(axis=1, keepdims=True)
    return emissions - top - np.log(np.exp(emissions - top).sum(axis=1, keepdims=True))


def mix(
    members: Sequence[TeacherKnowledge],
    lengths: np.ndarray,
    *,
    k: int,
    weights: Sequence[float] | None = None,
) -> TeacherKnowledge:
    """The knowledge of the mixture ``Σ_i w_i p_i`` of ``members`` (same sentences, same labels).

    Args:
        members: each teacher's knowledge, with its ``crf`` (needed to score the other
            members' paths).
        lengths: ``(n_sents,)`` sentence lengths.
        k: paths kept per sentence (the K most probable of the members' union).
        weights: one per member (normalised here); None: uniform.

    Raises:
        ValueError: no members, a member without its CRF, or bad weights.
    """
    if not members:
        raise ValueError("a mixture needs at least one teacher")
    if len(members) == 1:
        return members[0]
    if any(m.crf is None for m in members):
        raise ValueError("every member of a mixture needs its CRF")
    log_w = _log_weights(weights, len(members))
    edges = None
    if members[0].edge_sums is not None:
        w = np.exp(log_w)
        edges = sum(wi * m.edge_sums for wi, m in zip(w, members, strict=True))
    tags, scores, k_valid = _mix_paths(members, np.asarray(lengths, np.int64), k, log_w)
    return TeacherKnowledge(
        emissions=_log_mix([_log_softmax(m.emissions) for m in members], log_w),
        log_z=np.zeros(len(lengths)),
        log_marginals=_log_mix([m.log_marginals for m in members], log_w),
        edge_sums=edges,
        kbest_tags=tags,
        kbest_scores=scores,
        k_valid=k_valid,
        crf=None,
    )


def _mix_paths(
    members: Sequence[TeacherKnowledge], lengths: np.ndarray, k: int, log_w: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The K most probable paths of the members' k-best union under the mixture, per sentence.

    Ties keep the kernels' order: higher probability first, then reversed tag sequence ascending.
    """
    offs = ragged.offsets(lengths)
    tags = np.full(k * int(offs[-1]), -1, np.int16)
    scores = np.full((len(lengths), k), -np.inf)
    k_valid = np.zeros(len(lengths), np.int64)
    for i, n in enumerate(lengths.tolist()):
        lo, hi = int(offs[i]), int(offs[i + 1])
        union = np.unique(
            np.concatenate(
                [
                    m.kbest_tags[m.kbest_scores.shape[1] * lo : m.kbest_scores.shape[1] * hi]
                    .reshape(-1, n)[: int(m.k_valid[i])]
                    .astype(np.int64)
                    for m in members
                ]
            ),
            axis=0,
        )
        log_p = _log_mix(
            [
                path_log_probs(union, m.emissions[lo:hi], m.crf, float(m.log_z[i]))  # type: ignore[arg-type]
                for m in members
            ],
            log_w,
        )
        order = np.lexsort((*union.T, -log_p))  # last key first: log p, then y_n, y_{n-1}, ...
        order = order[np.isfinite(log_p[order])][:k]  # a path only a 0-weight member has
        kept = len(order)
        block = np.full((k, n), -1, np.int16)
        block[:kept] = union[order]
        tags[k * lo : k * hi] = block.reshape(-1)
        scores[i, :kept] = log_p[order]
        k_valid[i] = kept
    return tags, scores, k_valid
