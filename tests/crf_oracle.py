"""Brute-force CRF oracle for tests: enumerate every tag sequence of a tiny sentence.

Convention as everywhere in structkd: ``score(y) = start[y_1] + sum_t emissions[t, y_t] +
sum_{t>=2} transitions[y_{t-1}, y_t] + end[y_n]``; forbidden entries are ``-inf``.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np


def enumerate_paths(n: int, n_tags: int) -> list[tuple[int, ...]]:
    """All ``n_tags ** n`` tag sequences of length ``n``."""
    return list(itertools.product(range(n_tags), repeat=n))


def path_score(
    emissions: np.ndarray,
    tags: tuple[int, ...] | np.ndarray,
    transitions: np.ndarray,
    start: np.ndarray,
    end: np.ndarray,
) -> float:
    """Score of one path; ``emissions (n, n_tags)``, ``tags (n,)``."""
    tags = [int(t) for t in tags]
    s = float(start[tags[0]]) + float(emissions[0, tags[0]])
    for t in range(1, len(tags)):
        s = s + float(transitions[tags[t - 1], tags[t]]) + float(emissions[t, tags[t]])
    return s + float(end[tags[-1]])


@dataclass(frozen=True)
class Brute:
    """Exact quantities of one sentence by enumeration.

    ``paths`` lists the allowed (finite-score) paths sorted by score descending, ties by the
    reversed tag sequence ascending (structkd's documented decoding order); ``scores`` match.
    ``marginals (n, n_tags)``, ``edges (n-1, n_tags, n_tags)`` are probabilities.
    """

    log_z: float
    marginals: np.ndarray
    edges: np.ndarray
    paths: list[tuple[int, ...]]
    scores: list[float]


def brute_force(
    emissions: np.ndarray, transitions: np.ndarray, start: np.ndarray, end: np.ndarray
) -> Brute:
    """Enumerate all paths of one sentence (``emissions (n, n_tags)``, float64)."""
    n, n_tags = emissions.shape
    scored = [
        (path_score(emissions, p, transitions, start, end), p) for p in enumerate_paths(n, n_tags)
    ]
    finite = [(s, p) for s, p in scored if s > -np.inf]
    finite.sort(key=lambda sp: (-sp[0], sp[1][::-1]))
    marginals = np.zeros((n, n_tags))
    edges = np.zeros((max(n - 1, 0), n_tags, n_tags))
    if not finite:
        return Brute(-np.inf, marginals, edges, [], [])
    all_scores = np.array([s for s, _ in finite])
    top = all_scores.max()
    log_z = float(top + np.log(np.exp(all_scores - top).sum()))
    for s, p in finite:
        prob = np.exp(s - log_z)
        for t in range(n):
            marginals[t, p[t]] += prob
        for t in range(1, n):
            edges[t - 1, p[t - 1], p[t]] += prob
    return Brute(log_z, marginals, edges, [p for _, p in finite], [s for s, _ in finite])


def random_constraints(
    rng: np.random.Generator, n_tags: int, p_forbid: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Random ``allowed (L, L)``, ``start_allowed (L,)``, ``end_allowed (L,)`` bool masks."""
    return (
        rng.random((n_tags, n_tags)) >= p_forbid,
        rng.random(n_tags) >= p_forbid,
        rng.random(n_tags) >= p_forbid,
    )


def apply_constraints(
    transitions: np.ndarray,
    start: np.ndarray,
    end: np.ndarray,
    allowed: np.ndarray,
    start_allowed: np.ndarray,
    end_allowed: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Scores with forbidden entries set to ``-inf``."""
    return (
        np.where(allowed, transitions, -np.inf),
        np.where(start_allowed, start, -np.inf),
        np.where(end_allowed, end, -np.inf),
    )


# Paper Table 1 (Wang et al. 2020): 3 tokens, values {F, T}, psi(y0, y1) = 1 and a different
# potential table for each of the two edges (rows: from F, T; columns: to F, T).
TABLE1_PSI = (
    np.array([[2.0, 0.5], [0.5, 2.0]]),  # edge y1 -> y2
    np.array([[1.0 / 3.0, 3.0], [4.0, 0.25]]),  # edge y2 -> y3
)


def table1_crf() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Table 1 as a CRF in structkd's convention: ``(emissions, transitions, start, end, masks)``.

    A CRF shares one transition matrix across positions, and Table 1's two tables differ by a
    non-additive term, so the example is encoded exactly with position-tagged labels: tag
    ``2 * k + v`` is value v (0 = F, 1 = T) at token k. ``transitions`` holds log psi between
    consecutive positions, and the constraint masks forbid everything else (start only at
    position 0, end only at position 2), so the 8 allowed paths of a 3-token sentence are
    exactly Table 1's sequences with its potentials. Emissions, start and end scores are 0.

    Returns:
        ``emissions (3, 6)``, ``transitions (6, 6)``, ``start (6,)``, ``end (6,)``,
        ``allowed (6, 6)``, ``start_allowed (6,)``, ``end_allowed (6,)`` (the last three bool)
        — seven arrays.
    """
    n_tags = 6
    transitions = np.zeros((n_tags, n_tags))
    allowed = np.zeros((n_tags, n_tags), dtype=bool)
    for k, psi in enumerate(TABLE1_PSI):
        for a in range(2):
            for b in range(2):
                transitions[2 * k + a, 2 * (k + 1) + b] = np.log(psi[a, b])
                allowed[2 * k + a, 2 * (k + 1) + b] = True
    start_allowed = np.array([True, True, False, False, False, False])
    end_allowed = np.array([False, False, False, False, True, True])
    return (
        np.zeros((3, n_tags)),
        transitions,
        np.zeros(n_tags),
        np.zeros(n_tags),
        allowed,
        start_allowed,
        end_allowed,
    )


def table1_values(tags: np.ndarray) -> str:
    """Map position-tagged Table 1 tags to the paper's letters, e.g. ``[1, 3, 4] -> "TTF"``."""
    return "".join("FT"[int(t) % 2] for t in tags)
