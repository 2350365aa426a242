"""Private numba kernels for the CRF log-partition and posterior marginals (forward-backward).

No validation here: callers (``structkd.pipeline.crf_kernels``) pass C-contiguous float64 arrays
(emissions may be float32; arithmetic is float64), ``offsets`` int64 with every sentence length
>= 1, ``chunks`` (sentence boundaries of the parallel work items) and scores in which forbidden
entries already are ``-inf``.

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

# Contraction lets LLVM fuse the mat-vecs' multiply-adds. No "reassoc": a reassociated sum made
# a kernel compiled in the process differ in log Z's last bit from the same kernel loaded from
# numba's on-disk cache (tests/test_crf_kernels.py), and knowledge is compared byte for byte. No
# "nnan"/"ninf": -inf marks forbidden entries and NaN is the fast path's "redo in log space" signal.
FASTMATH = {"nsz", "arcp", "contract"}
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
def _forward_prob(em, lo, hi, et, es, ee, shifts, alpha, eps, store, a, p) -> float:
    """Scaled forward pass over rows lo:hi; returns log Z or NaN ("redo in log space").

    ``a``, ``p``: (L,) scratch; the final forward vector is left in ``a``. With ``store``, the
    normalised forward vector of row t goes to ``alpha[t]`` and its scaled emissions
    ``exp(E_t - max E_t)`` to ``eps[t]`` (for the backward pass); without, ``alpha`` and ``eps``
    are (2, L) dummies written at row ``t & 1``. Few fused loops, no helper calls, no views:
    at L = 9..20 loop overhead and numba's reference counting of views cost more than the
    arithmetic.
    """
    n_tags = em.shape[1]
    logc = shifts[1] - shifts[0]
    bad = False
    for t in range(lo, hi):
        r = t if store else t & 1
        m = -np.inf
        for j in range(n_tags):
            m = max(m, em[t, j])
        if m == -np.inf:
            return np.nan
        if t == lo:
            for j in range(n_tags):
                p[j] = es[j]
        else:
            v = a[0]
            for j in range(n_tags):
                p[j] = v * et[0, j]
            for i in range(1, n_tags):
                v = a[i]
                for j in range(n_tags):
                    p[j] += v * et[i, j]
        s = 0.0
        for j in range(n_tags):
            d = em[t, j] - m
            bad |= (d < LOG_TINY) & (d > -np.inf)  # exp(d) would be < TINY or underflow
            e = np.exp(d)
            eps[r, j] = e
            x = p[j] * e
            a[j] = x
            s += x
        if bad or not s > 0.0:
            return np.nan
        inv = 1.0 / s
        for j in range(n_tags):
            v = a[j] * inv
            a[j] = v
            alpha[r, j] = v
            bad |= (v > 0.0) & (v < TINY)
        if bad:
            return np.nan
        logc += np.log(s) + m + shifts[0]
    zf = 0.0
    for j in range(n_tags):
        zf += a[j] * ee[j]
    if not zf > 0.0:
        return np.nan
    return logc + np.log(zf) + shifts[2]


@njit(cache=True, fastmath=FASTMATH)
def _fb_prob(em, lo, hi, et, ett, es, ee, shifts, out, eps, a, p, edges, e_lo, summed) -> float:
    """Scaled forward-backward for rows lo:hi; writes marginals (probabilities) to ``out[lo:hi]``.

    ``eps`` is (n_tokens, L) scratch, ``a``/``p`` (L,) scratch. When ``edges`` has rows, edge
    marginals go to ``edges[e_lo : e_lo + n - 1]``, or with ``summed`` are added over the
    sentence's positions into ``edges[e_lo]`` (zeroed here). Returns log Z or NaN.

    Backward step for token t (``beta`` = normalised backward vector of t+1 on entry):
    ``w = eps_{t+1} * beta``, ``beta_t = et @ w`` (unnormalised, sum s); the marginal is
    ``alpha_t * beta_t / total`` with ``total = sum(alpha_t * beta_t)``, which is also the sum
    of the edge terms ``alpha_t(i) et(i, j) w(j)``; then ``beta_t /= s`` for the next step.
    """
    n_tags = em.shape[1]
    log_z = _forward_prob(em, lo, hi, et, es, ee, shifts, out, eps, True, a, p)
    if np.isnan(log_z):
        return np.nan
    want_edges = edges.shape[0] > 0
    if want_edges and summed:
        edges[e_lo] = 0.0
    beta = a
    w = p
    for j in range(n_tags):
        beta[j] = ee[j]
    for row in range(hi - 1, lo - 1, -1):
        if row < hi - 1:
            for j in range(n_tags):
                w[j] = eps[row + 1, j] * beta[j]
            v = w[0]
            for i in range(n_tags):
                beta[i] = v * ett[0, i]
            for j in range(1, n_tags):
                v = w[j]
                for i in range(n_tags):
                    beta[i] += v * ett[j, i]
        s = 0.0
        total = 0.0
        for i in range(n_tags):
            s += beta[i]
            total += out[row, i] * beta[i]
        if not total > 0.0:
            return np.nan
        inv = 1.0 / total
        if want_edges and row < hi - 1:
            if summed:
                for i in range(n_tags):
                    ai = out[row, i] * inv
                    for j in range(n_tags):
                        edges[e_lo, i, j] += ai * et[i, j] * w[j]
            else:
                e = e_lo + row - lo
                for i in range(n_tags):
                    ai = out[row, i] * inv
                    for j in range(n_tags):
                        edges[e, i, j] = ai * et[i, j] * w[j]
        inv_s = 1.0 / s
        bad = False
        for i in range(n_tags):
            b = beta[i]
            out[row, i] = out[row, i] * b * inv
            b *= inv_s
            beta[i] = b
            bad |= (b > 0.0) & (b < TINY)
        if bad:
            return np.nan
    return log_z


@njit(cache=True, fastmath=FASTMATH)
def _lse_col(buf, r, mat, col) -> float:
    """``log sum_i exp(buf[r, i] + mat[i, col])``, -inf guarded (never -inf - -inf)."""
    m = -np.inf
    for i in range(mat.shape[0]):
        m = max(m, buf[r, i] + mat[i, col])
    if m == -np.inf:
        return -np.inf
    s = 0.0
    for i in range(mat.shape[0]):
        s += np.exp(buf[r, i] + mat[i, col] - m)
    return m + np.log(s)


@njit(cache=True, fastmath=FASTMATH)
def _lse_row(buf, r, mat, row) -> float:
    """``log sum_j exp(buf[r, j] + mat[row, j])``, -inf guarded."""
    m = -np.inf
    for j in range(mat.shape[1]):
        m = max(m, buf[r, j] + mat[row, j])
    if m == -np.inf:
        return -np.inf
    s = 0.0
    for j in range(mat.shape[1]):
        s += np.exp(buf[r, j] + mat[row, j] - m)
    return m + np.log(s)


@njit(cache=True, fastmath=FASTMATH)
def _forward_log(em, lo, hi, trans, start, end, alpha, base) -> float:
    """Log-space forward pass; returns log Z (``-inf`` if no path is allowed).

    Position t's log forward vector goes to ``alpha[base + t]``, or to the rolling rows
    ``t & 1`` if ``base < 0`` (log Z only).
    """
    n_tags = em.shape[1]
    r = base if base >= 0 else 0
    for j in range(n_tags):
        alpha[r, j] = start[j] + em[lo, j]
    for t in range(1, hi - lo):
        prev = r
        r = base + t if base >= 0 else t & 1
        for j in range(n_tags):
            alpha[r, j] = _lse_col(alpha, prev, trans, j) + em[lo + t, j]
    m = -np.inf
    for j in range(n_tags):
        m = max(m, alpha[r, j] + end[j])
    if m == -np.inf:
        return -np.inf
    s = 0.0
    for j in range(n_tags):
        s += np.exp(alpha[r, j] + end[j] - m)
    return m + np.log(s)


@njit(cache=True, fastmath=FASTMATH)
def _fb_log(em, lo, hi, trans, start, end, out, work, edges, e_lo, summed) -> float:
    """Log-space forward-backward for rows lo:hi (same outputs as ``_fb_prob``, never NaN).

    ``work`` is (2, L) scratch (backward vector, emission-weighted backward vector). A sentence
    without any allowed path gets log Z = -inf, log marginals -inf and edge marginals 0.
    """
    n_tags = em.shape[1]
    log_z = _forward_log(em, lo, hi, trans, start, end, out, lo)
    want_edges = edges.shape[0] > 0
    if want_edges:
        if summed:
            edges[e_lo] = 0.0
        elif log_z == -np.inf:
            edges[e_lo : e_lo + hi - lo - 1] = 0.0
    if log_z == -np.inf:
        out[lo:hi] = -np.inf
        return log_z
    for j in range(n_tags):
        work[0, j] = end[j]
        out[hi - 1, j] += end[j] - log_z
    for row in range(hi - 2, lo - 1, -1):
        for j in range(n_tags):
            work[1, j] = em[row + 1, j] + work[0, j]
        if want_edges:
            e = e_lo if summed else e_lo + row - lo
            for i in range(n_tags):
                for j in range(n_tags):
                    v = np.exp(out[row, i] + trans[i, j] + work[1, j] - log_z)
                    edges[e, i, j] = edges[e, i, j] + v if summed else v
        for i in range(n_tags):
            work[0, i] = _lse_row(work, 1, trans, i)
        for i in range(n_tags):
            out[row, i] += work[0, i] - log_z
    return log_z


@njit(cache=True, parallel=True)
def log_partition_kernel(em, offsets, chunks, trans, start, end, force_log, log_z) -> None:
    """Fill ``log_z (n_sents,)``. ``force_log`` skips the fast path (tests compare both)."""
    n_tags = em.shape[1]
    et, _, es, ee, shifts, tame = prob_params(trans, start, end)
    use_prob = tame and not force_log
    for c in prange(chunks.size - 1):
        work = np.empty((2, n_tags))
        dummy = np.empty((2, n_tags))
        a = np.empty(n_tags)
        p = np.empty(n_tags)
        for b in range(chunks[c], chunks[c + 1]):
            lo = offsets[b]
            hi = offsets[b + 1]
            z = np.nan
            if use_prob:
                z = _forward_prob(em, lo, hi, et, es, ee, shifts, work, dummy, False, a, p)
            if np.isnan(z):
                z = _forward_log(em, lo, hi, trans, start, end, work, -1)
            log_z[b] = z


@njit(cache=True, parallel=True)
def forward_backward_kernel(
    em, offsets, chunks, trans, start, end, force_log, log_z, marg, eps, edges, summed, fast
) -> None:
    """Fill ``log_z (n_sents,)``, ``marg (n_tokens, L)``, ``edges`` and ``fast (n_sents,)``.

    Outputs and the scratch ``eps (n_tokens, L)`` are allocated by the caller with numpy: fresh
    NRT allocations are page-faulted in 4 KiB pages, which cost as much as the whole forward
    pass here, while numpy's large allocations use huge pages and get reused by malloc.

    ``marg`` rows of sentences with ``fast[b]`` get marginal *probabilities* (the caller takes
    the log with numpy's SIMD ``log``, ~4x cheaper than scalar calls here; fast-path values are
    >= 1e-280 or exactly 0, so nothing is lost), the other rows get *log* marginals (the
    log-space fallback, whose values may be far below float64's range as probabilities).
    ``edges`` has 0 rows for none; else, without ``summed``, n_tokens - n_sents rows (sentence
    b's edge between its tokens t and t+1 is row ``offsets[b] - b + t``) and, with ``summed``,
    n_sents rows (row b = sentence b's edge marginals summed over its positions, never holding
    the per-position ones: the expected transition counts are all structural KD needs).
    """
    n_tags = em.shape[1]
    et, ett, es, ee, shifts, tame = prob_params(trans, start, end)
    use_prob = tame and not force_log
    for c in prange(chunks.size - 1):
        work = np.empty((2, n_tags))
        a = np.empty(n_tags)
        p = np.empty(n_tags)
        for b in range(chunks[c], chunks[c + 1]):
            lo = offsets[b]
            hi = offsets[b + 1]
            e = b if summed else lo - b
            z = np.nan
            if use_prob:
                z = _fb_prob(em, lo, hi, et, ett, es, ee, shifts, marg, eps, a, p, edges, e, summed)
            fast[b] = not np.isnan(z)
            if np.isnan(z):
                z = _fb_log(em, lo, hi, trans, start, end, marg, work, edges, e, summed)
            log_z[b] = z
