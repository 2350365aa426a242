"""Private numba kernels for the CRF log-partition and posterior marginals (forward-backward).

No validation here: callers (``structkd.pipeline.crf_kernels``) pass C-contiguous float64 arrays,
``offsets`` int64 with every sentence length >= 1, ``chunks`` (sentence boundaries of the
parallel work items) and scores in which forbidden entries already are ``-inf``.

Two exact algorithms compute the same quantities (Lafferty et al. 2001; scaling as in Rabiner 1989):

* **Scaled probability space** (fast path). Emissions become ``exp(E_t - max_j E_t)`` and the
  transitions ``exp(transitions - max)`` once per call; forward and backward vectors are
  renormalised to sum 1 at every token, with the logs of the forward normalisers accumulated in
  float64 for ``log_z``. A step is a mat-vec of multiply-adds: no ``exp``/``log`` in the
  label-pair loop, only L of each per token.
* **Log space** (fallback), for the whole call when the finite transitions/start/end span more than
  ``-log(TINY)`` nats, and per sentence as soon as the fast path meets a factor in (0, TINY)
  relative to its step (a token whose finite emissions span > 161 nats, starving forward or
  backward vectors, a token or sentence without any possible label sequence).

Why TINY = 1e-70: every quantity the fast path multiplies (at most four factors, for an edge
marginal) is then either exactly 0 or >= 1e-280, above float64's smallest normal (2.2e-308), so
nothing underflows silently; the fast path is as accurate as log space whenever it answers.
Marginals at each token are normalised by their own sum, so the backward pass needs no log
accumulator.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

# Reassociation/contraction let LLVM vectorise the mat-vecs; no "nnan"/"ninf": -inf marks
# forbidden entries and NaN is the fast path's "redo in log space" signal.
FASTMATH = {"nsz", "arcp", "contract", "reassoc"}
TINY = 1e-70
LOG_TINY = float(np.log(TINY))


@njit(cache=True)
def _shift_exp(x: np.ndarray) -> tuple[np.ndarray, float, bool]:
    """``exp(x - max(x))``, the max (0 if all -inf), and whether finite entries stay >= TINY."""
    flat = x.ravel()
    shift = -np.inf
    for v in flat:
        shift = max(shift, v)
    if shift == -np.inf:
        shift = 0.0
    out = np.empty_like(flat)
    tame = True
    for idx in range(flat.size):
        d = flat[idx] - shift
        if d < LOG_TINY and d > -np.inf:
            tame = False
        out[idx] = np.exp(d)
    return out.reshape(x.shape), shift, tame


@njit(cache=True)
def prob_params(transitions, start, end):
    """Exponentiated parameters for the fast path.

    Returns ``(et (L, L), ett (L, L) its transpose, es (L,), ee (L,), shifts (3,), tame)`` where
    ``shifts`` = maxima of (transitions, start, end) and ``tame`` is False when the call must run
    in log space.
    """
    et, tshift, t_ok = _shift_exp(transitions)
    es, sshift, s_ok = _shift_exp(start)
    ee, eshift, e_ok = _shift_exp(end)
    shifts = np.array([tshift, sshift, eshift])
    return et, np.ascontiguousarray(et.T), es, ee, shifts, t_ok and s_ok and e_ok


@njit(cache=True, fastmath=FASTMATH)
def _scaled_emissions(em, row, eps) -> float:
    """Write ``exp(em[row] - max)`` into ``eps`` (L,); return the max, NaN if it needs log space."""
    n_tags = em.shape[1]
    hi = -np.inf
    lo = np.inf
    for j in range(n_tags):
        v = em[row, j]
        hi = max(hi, v)
        if v > -np.inf:
            lo = min(lo, v)
    if hi == -np.inf or lo - hi < LOG_TINY:
        return np.nan
    for j in range(n_tags):
        eps[j] = np.exp(em[row, j] - hi)
    return hi


@njit(cache=True, fastmath=FASTMATH)
def _normalise(vec) -> float:
    """Scale ``vec`` to sum 1 in place; return the sum, or NaN if an entry lands in (0, TINY)."""
    total = 0.0
    for v in vec:
        total += v
    if not total > 0.0:
        return np.nan
    inv = 1.0 / total
    small = False
    for j in range(vec.size):
        v = vec[j] * inv
        vec[j] = v
        small |= (v > 0.0) & (v < TINY)
    return np.nan if small else total


@njit(cache=True, fastmath=FASTMATH)
def _matvec(vec, mat, out) -> None:
    """``out[j] = sum_i vec[i] * mat[i, j]`` as row AXPYs (contiguous, SIMD-friendly)."""
    n = out.size
    for j in range(n):
        out[j] = 0.0
    for i in range(n):
        vi = vec[i]
        for j in range(n):
            out[j] += vi * mat[i, j]


@njit(cache=True, fastmath=FASTMATH)
def _forward_prob(em, lo, hi, et, es, ee, shifts, alpha, eps, prod) -> float:
    """Scaled forward pass over rows lo:hi; returns log Z or NaN ("redo in log space").

    ``alpha`` and ``eps`` are (n, L) row buffers (sentence-local rows 0..n-1; they may alias one
    (1, L) vector when only log Z is wanted, see ``_rows``), ``prod`` an (L,) scratch vector.
    """
    n_tags = em.shape[1]
    a0 = alpha[_rows(alpha, 0)]
    e0 = eps[_rows(eps, 0)]
    m = _scaled_emissions(em, lo, e0)
    if np.isnan(m):
        return np.nan
    for j in range(n_tags):
        a0[j] = es[j] * e0[j]
    s = _normalise(a0)
    if np.isnan(s):
        return np.nan
    logc = np.log(s) + m + shifts[1]
    for t in range(1, hi - lo):
        prev = alpha[_rows(alpha, t - 1)]
        cur = alpha[_rows(alpha, t)]
        et_t = eps[_rows(eps, t)]
        m = _scaled_emissions(em, lo + t, et_t)
        if np.isnan(m):
            return np.nan
        _matvec(prev, et, prod)
        for j in range(n_tags):
            cur[j] = prod[j] * et_t[j]
        s = _normalise(cur)
        if np.isnan(s):
            return np.nan
        logc += np.log(s) + m + shifts[0]
    last = alpha[_rows(alpha, hi - lo - 1)]
    zf = 0.0
    for j in range(n_tags):
        zf += last[j] * ee[j]
    if not zf > 0.0:
        return np.nan
    return logc + np.log(zf) + shifts[2]


@njit(cache=True)
def _rows(buf, t) -> int:
    """Row of buffer ``buf`` that holds sentence-local position t (row 0 if it is a single row)."""
    return t if buf.shape[0] > 1 else 0


@njit(cache=True, fastmath=FASTMATH)
def _fb_prob(em, lo, hi, et, ett, es, ee, shifts, out, eps, work, edges, e_lo) -> float:
    """Scaled forward-backward for rows lo:hi; writes log marginals into ``out[lo:hi]``.

    ``eps`` is (n_tokens, L) scratch, ``work`` (2, L) scratch; edge marginals go to
    ``edges[e_lo : e_lo + n - 1]`` when ``edges`` has rows. Returns log Z or NaN.
    """
    n_tags = em.shape[1]
    alpha = out[lo:hi]
    epsn = eps[lo:hi]
    beta = work[0]
    w = work[1]
    log_z = _forward_prob(em, lo, hi, et, es, ee, shifts, alpha, epsn, w)
    if np.isnan(log_z):
        return np.nan
    n = hi - lo
    for j in range(n_tags):
        beta[j] = ee[j]
    if np.isnan(_log_marginal_row(alpha[n - 1], beta)):
        return np.nan
    want_edges = edges.shape[0] > 0
    for t in range(n - 2, -1, -1):
        for j in range(n_tags):
            w[j] = epsn[t + 1, j] * beta[j]
        _matvec(w, ett, beta)
        s = _normalise(beta)
        if np.isnan(s):
            return np.nan
        if want_edges:
            # q(i, j) ∝ alpha_t(i) et(i, j) eps_{t+1}(j) beta_{t+1}(j); sum = s * sum_i alpha*beta_t
            edge = edges[e_lo + t]
            total = 0.0
            for i in range(n_tags):
                ai = alpha[t, i]
                for j in range(n_tags):
                    v = ai * et[i, j] * w[j]
                    edge[i, j] = v
                    total += v
            inv = 1.0 / total
            for i in range(n_tags):
                for j in range(n_tags):
                    edge[i, j] *= inv
        if np.isnan(_log_marginal_row(alpha[t], beta)):
            return np.nan
    return log_z


@njit(cache=True, fastmath=FASTMATH)
def _log_marginal_row(alpha_row, beta) -> float:
    """Overwrite ``alpha_row`` (L,) with ``log(alpha*beta / sum(alpha*beta))``; NaN if sum is 0."""
    total = 0.0
    for j in range(alpha_row.size):
        p = alpha_row[j] * beta[j]
        alpha_row[j] = p
        total += p
    if not total > 0.0:
        return np.nan
    log_total = np.log(total)
    for j in range(alpha_row.size):
        alpha_row[j] = np.log(alpha_row[j]) - log_total
    return total


@njit(cache=True, fastmath=FASTMATH)
def _lse_step(vec, trans, col, extra) -> float:
    """``log sum_i exp(vec[i] + trans[i, col] + extra[i])`` with -inf guarded (no -inf - -inf)."""
    m = -np.inf
    for i in range(vec.size):
        m = max(m, vec[i] + trans[i, col] + extra[i])
    if m == -np.inf:
        return -np.inf
    s = 0.0
    for i in range(vec.size):
        s += np.exp(vec[i] + trans[i, col] + extra[i] - m)
    return m + np.log(s)


@njit(cache=True, fastmath=FASTMATH)
def _forward_log(em, lo, hi, trans, start, end, alpha, zeros) -> float:
    """Log-space forward pass; ``alpha`` (n, L) or one (1, L) row reused; returns log Z."""
    n_tags = em.shape[1]
    a0 = alpha[0]
    for j in range(n_tags):
        a0[j] = start[j] + em[lo, j]
    for t in range(1, hi - lo):
        prev = alpha[_rows(alpha, t - 1)]
        cur = alpha[_rows(alpha, t)]
        for j in range(n_tags):
            zeros[n_tags + j] = _lse_step(prev, trans, j, zeros[:n_tags]) + em[lo + t, j]
        for j in range(n_tags):
            cur[j] = zeros[n_tags + j]
    last = alpha[_rows(alpha, hi - lo - 1)]
    m = -np.inf
    for j in range(n_tags):
        m = max(m, last[j] + end[j])
    if m == -np.inf:
        return -np.inf
    s = 0.0
    for j in range(n_tags):
        s += np.exp(last[j] + end[j] - m)
    return m + np.log(s)


@njit(cache=True, fastmath=FASTMATH)
def _fb_log(em, lo, hi, trans, start, end, out, work, edges, e_lo) -> float:
    """Log-space forward-backward for rows lo:hi (same outputs as ``_fb_prob``, never NaN).

    ``work`` is (3, L) scratch. A sentence without any allowed path gets log Z = -inf, log
    marginals -inf and edge marginals 0.
    """
    n_tags = em.shape[1]
    n = hi - lo
    alpha = out[lo:hi]
    zeros = work[0]
    beta = work[1]
    w = work[2]
    zeros[:] = 0.0
    log_z = _forward_log(em, lo, hi, trans, start, end, alpha, work[0:2].ravel())
    want_edges = edges.shape[0] > 0
    if log_z == -np.inf:
        alpha[:, :] = -np.inf
        if want_edges:
            edges[e_lo : e_lo + n - 1] = 0.0
        return log_z
    zeros[:] = 0.0
    for j in range(n_tags):
        beta[j] = end[j]
        alpha[n - 1, j] += beta[j] - log_z
    for t in range(n - 2, -1, -1):
        for j in range(n_tags):
            w[j] = em[lo + t + 1, j] + beta[j]
        if want_edges:
            edge = edges[e_lo + t]
            for i in range(n_tags):
                for j in range(n_tags):
                    edge[i, j] = np.exp(alpha[t, i] + trans[i, j] + w[j] - log_z)
        for i in range(n_tags):
            beta[i] = _lse_step(w, trans.T, i, zeros)
        for i in range(n_tags):
            alpha[t, i] += beta[i] - log_z
    return log_z


@njit(cache=True, parallel=True)
def log_partition_kernel(em, offsets, chunks, trans, start, end, force_log):
    """log Z per sentence: (n_sents,). ``force_log`` skips the fast path (tests compare both)."""
    n_tags = em.shape[1]
    et, _, es, ee, shifts, tame = prob_params(trans, start, end)
    use_prob = tame and not force_log
    log_z = np.empty(offsets.size - 1)
    for c in prange(chunks.size - 1):
        work = np.empty((4, n_tags))
        for b in range(chunks[c], chunks[c + 1]):
            lo = offsets[b]
            hi = offsets[b + 1]
            z = np.nan
            if use_prob:
                z = _forward_prob(em, lo, hi, et, es, ee, shifts, work[0:1], work[1:2], work[2])
            if np.isnan(z):
                z = _forward_log(em, lo, hi, trans, start, end, work[0:1], work[1:3].ravel())
            log_z[b] = z
    return log_z


@njit(cache=True, parallel=True)
def forward_backward_kernel(em, offsets, chunks, trans, start, end, force_log, want_edges):
    """Returns ``(log_z (n_sents,), log_marginals (n_tokens, L), edges (n_edges, L, L))``.

    ``edges`` has n_tokens - n_sents rows when ``want_edges``, else 0 rows; sentence b's edge
    between its tokens t and t+1 is row ``offsets[b] - b + t``.
    """
    n_tokens, n_tags = em.shape
    n_sents = offsets.size - 1
    et, ett, es, ee, shifts, tame = prob_params(trans, start, end)
    use_prob = tame and not force_log
    log_z = np.empty(n_sents)
    out = np.empty((n_tokens, n_tags))
    eps = np.empty((n_tokens, n_tags)) if use_prob else np.empty((0, n_tags))
    edges = np.empty((n_tokens - n_sents if want_edges else 0, n_tags, n_tags))
    for c in prange(chunks.size - 1):
        work = np.empty((3, n_tags))
        for b in range(chunks[c], chunks[c + 1]):
            lo = offsets[b]
            hi = offsets[b + 1]
            z = np.nan
            if use_prob:
                z = _fb_prob(em, lo, hi, et, ett, es, ee, shifts, out, eps, work, edges, lo - b)
            if np.isnan(z):
                z = _fb_log(em, lo, hi, trans, start, end, out, work, edges, lo - b)
            log_z[b] = z
    return log_z, out, edges
