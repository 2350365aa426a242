"""Exact linear-chain CRF inference on ragged batches (numpy in, numpy out; numba inside).

A linear-chain CRF (Lafferty et al. 2001) scores a tag sequence y_1..y_n as
``start[y_1] + sum_t emissions[t, y_t] + sum_{t>=2} transitions[y_{t-1}, y_t] + end[y_n]``
(``transitions[i, j]`` = score of moving FROM tag i TO tag j; no START/STOP pseudo-tags).

Batches are ragged, never padded: ``emissions (n_tokens, n_tags)`` stacks all sentences and
``offsets (n_sents + 1,)`` int64 delimits them (sentence b = rows ``offsets[b]:offsets[b+1]``,
every sentence has >= 1 token). Optional boolean constraints ``allowed (n_tags, n_tags)``,
``start_allowed (n_tags,)`` and ``end_allowed (n_tags,)`` give forbidden entries score ``-inf``:
probability exactly 0 in the partition function, the marginals and decoding alike. Scores may
also contain ``-inf`` directly; NaN and ``+inf`` are rejected. A sentence that has no allowed
path at all gets ``log_z = -inf``, log marginals ``-inf``, edge marginals 0, Viterbi tags -1
and ``k_valid = 0``.

Every public function is a keyword-only wrapper that validates its inputs (``ValueError``
naming the argument, what was expected and what was received), converts them to contiguous
float64 (float32 emissions are read as they are; all arithmetic is float64), allocates the
outputs with numpy and calls one private kernel from ``kernels_marginals`` / ``kernels_decode``.
Kernels run sentences in parallel (``numba.prange`` over token-balanced chunks; inputs under
``SERIAL_BELOW_TOKENS`` tokens run on the calling thread). Marginals use a scaled
probability-space forward-backward with an automatic, exact log-space fallback for extreme
scores (see ``kernels_marginals``). Decoding ties follow one documented rule (see
``kernels_decode``): k-best rank 0 is always the Viterbi path.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Literal, NamedTuple

import numba
import numpy as np

from structkd.pipeline.kernels_decode import kbest_kernel, viterbi_kernel
from structkd.pipeline.kernels_marginals import forward_backward_kernel, log_partition_kernel

__all__ = [
    "KBest",
    "Marginals",
    "Posteriors",
    "ViterbiPaths",
    "edge_marginals",
    "forward_backward",
    "kbest",
    "log_partition",
    "posteriors",
    "viterbi",
]


class Posteriors(NamedTuple):
    """``log_z (n_sents,)`` and ``log_marginals (n_tokens, n_tags)`` = log q(y_t = j | x)."""

    log_z: np.ndarray
    log_marginals: np.ndarray


class Marginals(NamedTuple):
    """What the export takes from one forward-backward pass: :class:`Posteriors` plus, when asked
    for, ``edge_sums (n_sents, n_tags, n_tags)``: sentence b's edge marginals summed over its
    positions, ``sum_t q(y_t = i, y_{t+1} = j | x)`` (all zero for a one-token sentence), else
    None."""

    log_z: np.ndarray
    log_marginals: np.ndarray
    edge_sums: np.ndarray | None


EdgeMode = Literal["none", "positions", "sums"]
"""Edge marginals a forward-backward pass returns: none, one matrix per position, or their
per-sentence sum (computed in the kernel, never materialising the per-position ones)."""


class ViterbiPaths(NamedTuple):
    """``tags (n_tokens,) int64`` (-1 where no path) and ``best_scores (n_sents,) float64``."""

    tags: np.ndarray
    best_scores: np.ndarray


class KBest(NamedTuple):
    """Exact k best paths per sentence.

    ``kbest_tags (k * n_tokens,) int16``: sentence b's block is rows ``k*offsets[b] :
    k*offsets[b+1]``, path-major, i.e. ``.reshape(k, n_b)`` gives its paths rank by rank; ranks
    >= ``k_valid[b]`` are all -1. ``kbest_scores (n_sents, k) float64``: non-increasing,
    ``-inf`` for missing ranks. ``k_valid (n_sents,) int64``: number of real (distinct) paths,
    min(k, number of allowed paths).
    """

    kbest_tags: np.ndarray
    kbest_scores: np.ndarray
    k_valid: np.ndarray


class _Prepared(NamedTuple):
    emissions: np.ndarray
    offsets: np.ndarray
    chunks: np.ndarray
    transitions: np.ndarray
    start: np.ndarray
    end: np.ndarray


def _float_array(
    name: str, value: object, shape: tuple[int, ...], dims: str, keep32: bool = False
) -> np.ndarray:
    """Validate a score array (any float dtype, no NaN/+inf); return it C-contiguous float64.

    With ``keep32``, float32 stays float32: the kernels read it and compute in float64, which
    saves a full copy of the largest input (float32 -> float64 is exact either way).
    """
    arr = np.asarray(value)
    if arr.dtype.kind != "f":
        raise ValueError(f"{name} must be a float array, got dtype {arr.dtype}")
    if arr.shape != shape:
        raise ValueError(f"{name} must have shape {dims}={shape}, got {arr.shape}")
    dtype = np.float32 if keep32 and arr.dtype == np.float32 else np.float64
    arr = np.ascontiguousarray(arr, dtype=dtype)
    if not bool(np.all(arr < np.inf)):
        raise ValueError(f"{name} must not contain NaN or +inf")
    return arr


def _bool_array(name: str, value: object, shape: tuple[int, ...], dims: str) -> np.ndarray:
    arr = np.asarray(value)
    if arr.dtype != np.bool_:
        raise ValueError(f"{name} must be a bool array, got dtype {arr.dtype}")
    if arr.shape != shape:
        raise ValueError(f"{name} must have shape {dims}={shape}, got {arr.shape}")
    return arr


# Below this many tokens a call runs on the calling thread only: a parallel launch costs more
# than the work, and on a busy machine OpenMP barriers can wait for a descheduled thread for ms.
SERIAL_BELOW_TOKENS = 2048


@contextmanager
def _threads_for(n_tokens: int) -> Iterator[None]:
    """Run the enclosed kernel serially for small inputs (numba's thread count is thread-local)."""
    if n_tokens >= SERIAL_BELOW_TOKENS:
        yield
        return
    previous = numba.get_num_threads()
    numba.set_num_threads(1)
    try:
        yield
    finally:
        numba.set_num_threads(previous)


def _chunks(offsets: np.ndarray) -> np.ndarray:
    """Sentence boundaries of parallel work items holding about equal numbers of tokens."""
    n_sents = offsets.size - 1
    n_chunks = min(n_sents, 16 * numba.get_num_threads())
    targets = np.linspace(0, offsets[-1], n_chunks + 1)[1:-1]
    inner = np.searchsorted(offsets, targets, side="left")
    return np.unique(np.concatenate(([0], inner, [n_sents]))).astype(np.int64)


def _prepare(
    emissions: np.ndarray,
    offsets: np.ndarray,
    transitions: np.ndarray,
    start: np.ndarray,
    end: np.ndarray,
    allowed: np.ndarray | None,
    start_allowed: np.ndarray | None,
    end_allowed: np.ndarray | None,
) -> _Prepared:
    em = np.asarray(emissions)
    if em.ndim != 2 or em.shape[1] < 1:
        raise ValueError(f"emissions must have shape (n_tokens, n_tags), got {em.shape}")
    n_tokens, n_tags = em.shape
    em = _float_array("emissions", em, (n_tokens, n_tags), "(n_tokens, n_tags)", keep32=True)
    off = np.asarray(offsets)
    if off.dtype.kind not in "iu" or off.ndim != 1 or off.size < 2:
        raise ValueError(
            f"offsets must be a 1-d integer array (n_sents + 1,) with n_sents >= 1, "
            f"got dtype {off.dtype} shape {off.shape}"
        )
    off = np.ascontiguousarray(off, dtype=np.int64)
    if off[0] != 0 or off[-1] != n_tokens:
        raise ValueError(
            f"offsets must start at 0 and end at n_tokens={n_tokens}, got {off[0]} ... {off[-1]}"
        )
    if not bool(np.all(off[1:] > off[:-1])):
        bad = int(np.argmin(off[1:] > off[:-1]))
        raise ValueError(
            f"offsets must be strictly increasing (every sentence length >= 1), "
            f"got sentence {bad} with length {off[bad + 1] - off[bad]}"
        )
    trans = _float_array("transitions", transitions, (n_tags, n_tags), "(n_tags, n_tags)")
    st = _float_array("start", start, (n_tags,), "(n_tags,)")
    en = _float_array("end", end, (n_tags,), "(n_tags,)")
    if allowed is not None:
        trans = np.where(
            _bool_array("allowed", allowed, (n_tags, n_tags), "(n_tags, n_tags)"), trans, -np.inf
        )
    if start_allowed is not None:
        st = np.where(
            _bool_array("start_allowed", start_allowed, (n_tags,), "(n_tags,)"), st, -np.inf
        )
    if end_allowed is not None:
        en = np.where(_bool_array("end_allowed", end_allowed, (n_tags,), "(n_tags,)"), en, -np.inf)
    return _Prepared(em, off, _chunks(off), trans, st, en)


def _forward_backward(
    p: _Prepared, edges: EdgeMode
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Run the forward-backward kernel: ``(log_z, marg, edges, fast)`` (see the kernel)."""
    n_tokens, n_tags = p.emissions.shape
    n_sents = p.offsets.size - 1
    log_z = np.empty(n_sents)
    marg = np.empty((n_tokens, n_tags))
    eps = np.empty((n_tokens, n_tags))
    rows = {"none": 0, "positions": n_tokens - n_sents, "sums": n_sents}[edges]
    pairs = np.empty((rows, n_tags, n_tags))
    fast = np.empty(n_sents, dtype=np.bool_)
    with _threads_for(n_tokens):
        forward_backward_kernel(*p, False, log_z, marg, eps, pairs, edges == "sums", fast)
    return log_z, marg, pairs, fast


def log_partition(
    *,
    emissions: np.ndarray,
    offsets: np.ndarray,
    transitions: np.ndarray,
    start: np.ndarray,
    end: np.ndarray,
    allowed: np.ndarray | None = None,
    start_allowed: np.ndarray | None = None,
    end_allowed: np.ndarray | None = None,
) -> np.ndarray:
    """Log-partition function log Z(x) of every sentence.

    Args:
        emissions: ``(n_tokens, n_tags)`` float scores, sentences stacked.
        offsets: ``(n_sents + 1,)`` int; sentence b is rows ``offsets[b]:offsets[b+1]``.
        transitions: ``(n_tags, n_tags)``; ``[i, j]`` scores tag i followed by tag j.
        start: ``(n_tags,)`` score of the first tag.
        end: ``(n_tags,)`` score of the last tag.
        allowed: optional ``(n_tags, n_tags)`` bool; False forbids the transition i -> j.
        start_allowed: optional ``(n_tags,)`` bool; False forbids starting with the tag.
        end_allowed: optional ``(n_tags,)`` bool; False forbids ending with the tag.

    Returns:
        ``(n_sents,)`` float64; ``-inf`` for a sentence without any allowed path.

    Raises:
        ValueError: an argument has the wrong shape or dtype, NaN/+inf, or bad offsets.
    """
    p = _prepare(emissions, offsets, transitions, start, end, allowed, start_allowed, end_allowed)
    log_z = np.empty(p.offsets.size - 1)
    with _threads_for(p.emissions.shape[0]):
        log_partition_kernel(*p, False, log_z)
    return log_z


def forward_backward(
    *,
    emissions: np.ndarray,
    offsets: np.ndarray,
    transitions: np.ndarray,
    start: np.ndarray,
    end: np.ndarray,
    allowed: np.ndarray | None = None,
    start_allowed: np.ndarray | None = None,
    end_allowed: np.ndarray | None = None,
) -> Posteriors:
    """Log-partition and unary posterior marginals log q(y_t = j | x).

    Args: as ``log_partition``.

    Returns:
        ``Posteriors(log_z (n_sents,), log_marginals (n_tokens, n_tags))``, float64. Each row of
        ``exp(log_marginals)`` sums to 1; forbidden or unreachable tags are exactly ``-inf``.

    Raises:
        ValueError: as ``log_partition``.
    """
    p = _prepare(emissions, offsets, transitions, start, end, allowed, start_allowed, end_allowed)
    return Posteriors(*_posteriors(p, edge_sums=False)[:2])


def posteriors(
    *,
    emissions: np.ndarray,
    offsets: np.ndarray,
    transitions: np.ndarray,
    start: np.ndarray,
    end: np.ndarray,
    allowed: np.ndarray | None = None,
    start_allowed: np.ndarray | None = None,
    end_allowed: np.ndarray | None = None,
    edge_sums: bool = False,
) -> Marginals:
    """Log Z, log marginals and (``edge_sums=True``) summed edge marginals from one pass.

    What an export needs at once: log Z and log marginals equal :func:`forward_backward`'s bit
    for bit; the sums equal those of :func:`edge_marginals` over each sentence's positions (up
    to float64 summation order), without ever holding the (n - 1)·L² per-position values.

    Args: as ``log_partition``; ``edge_sums`` also returns the summed pairwise marginals.

    Returns:
        ``Marginals(log_z, log_marginals, edge_sums or None)``.

    Raises:
        ValueError: as ``log_partition``.
    """
    p = _prepare(emissions, offsets, transitions, start, end, allowed, start_allowed, end_allowed)
    return _posteriors(p, edge_sums=edge_sums)


def _posteriors(p: _Prepared, edge_sums: bool) -> Marginals:
    """One forward-backward pass, marginal probabilities turned into logs where still needed."""
    log_z, marg, pairs, fast = _forward_backward(p, "sums" if edge_sums else "none")
    with np.errstate(divide="ignore"):  # log(0) = -inf is the intended "impossible"
        if fast.all():
            np.log(marg, out=marg)
        else:
            rows = np.repeat(fast, np.diff(p.offsets))
            marg[rows] = np.log(marg[rows])
    return Marginals(log_z, marg, pairs if edge_sums else None)


def edge_marginals(
    *,
    emissions: np.ndarray,
    offsets: np.ndarray,
    transitions: np.ndarray,
    start: np.ndarray,
    end: np.ndarray,
    allowed: np.ndarray | None = None,
    start_allowed: np.ndarray | None = None,
    end_allowed: np.ndarray | None = None,
) -> np.ndarray:
    """Pairwise posterior marginals q(y_{t-1} = i, y_t = j | x) (probabilities, not logs).

    Args: as ``log_partition``.

    Returns:
        ``(n_tokens - n_sents, n_tags, n_tags)`` float64. Sentence b has ``n_b - 1`` edges, at
        rows ``offsets[b] - b : offsets[b+1] - b - 1``; its edge between tokens t-1 and t
        (sentence-local t = 1..n_b-1) is row ``offsets[b] - b + t - 1``. Each (n_tags, n_tags)
        block sums to 1 and its row/column sums are the unary marginals at t-1 / t.

    Raises:
        ValueError: as ``log_partition``.
    """
    p = _prepare(emissions, offsets, transitions, start, end, allowed, start_allowed, end_allowed)
    return _forward_backward(p, "positions")[2]


def viterbi(
    *,
    emissions: np.ndarray,
    offsets: np.ndarray,
    transitions: np.ndarray,
    start: np.ndarray,
    end: np.ndarray,
    allowed: np.ndarray | None = None,
    start_allowed: np.ndarray | None = None,
    end_allowed: np.ndarray | None = None,
) -> ViterbiPaths:
    """Highest-scoring tag sequence of every sentence.

    Ties: the best-scoring path whose reversed tag sequence is lexicographically smallest.

    Args: as ``log_partition``.

    Returns:
        ``ViterbiPaths(tags (n_tokens,) int64, best_scores (n_sents,) float64)``; a sentence
        without any allowed path gets tags -1 and score ``-inf``.

    Raises:
        ValueError: as ``log_partition``.
    """
    p = _prepare(emissions, offsets, transitions, start, end, allowed, start_allowed, end_allowed)
    tags = np.empty(p.emissions.shape[0], dtype=np.int64)
    best = np.empty(p.offsets.size - 1)
    with _threads_for(p.emissions.shape[0]):
        viterbi_kernel(*p, tags, best)
    return ViterbiPaths(tags, best)


def kbest(
    *,
    emissions: np.ndarray,
    offsets: np.ndarray,
    transitions: np.ndarray,
    start: np.ndarray,
    end: np.ndarray,
    k: int,
    allowed: np.ndarray | None = None,
    start_allowed: np.ndarray | None = None,
    end_allowed: np.ndarray | None = None,
) -> KBest:
    """Exact k best distinct tag sequences of every sentence (list Viterbi).

    Ties follow ``viterbi``'s rule extended to ranks (score descending, then reversed tag
    sequence ascending), so rank 0 equals the Viterbi path and score exactly.

    Args:
        k: number of paths per sentence, >= 1 (may exceed the number of possible paths).
        Others: as ``log_partition``; ``n_tags`` must be <= 32767 (tags are int16).

    Returns:
        ``KBest(kbest_tags (k*n_tokens,) int16, kbest_scores (n_sents, k), k_valid (n_sents,))``;
        see ``KBest`` for the layout.

    Raises:
        ValueError: as ``log_partition``, or ``k`` < 1, or too many tags for int16.
    """
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"k must be an integer >= 1, got {k!r}")
    p = _prepare(emissions, offsets, transitions, start, end, allowed, start_allowed, end_allowed)
    if p.emissions.shape[1] > np.iinfo(np.int16).max:
        raise ValueError(
            f"n_tags must be <= 32767 for int16 kbest_tags, got {p.emissions.shape[1]}"
        )
    n_tokens = p.emissions.shape[0]
    tags = np.empty(k * n_tokens, dtype=np.int16)
    scores = np.empty((p.offsets.size - 1, k))
    k_valid = np.empty(p.offsets.size - 1, dtype=np.int64)
    with _threads_for(n_tokens):
        kbest_kernel(*p, int(k), tags, scores, k_valid)
    return KBest(tags, scores, k_valid)
