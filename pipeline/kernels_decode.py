"""Private numba kernels for exact CRF decoding: Viterbi and exact list Viterbi (k-best).

No validation here (see ``structkd.pipeline.crf_kernels``): C-contiguous float64 scores
(emissions may be float32; arithmetic is float64) with forbidden entries already ``-inf``, int64
``offsets``, ``chunks`` = sentence boundaries of the parallel work items.

Tie rule (both decoders, so k-best rank 0 is always the Viterbi path, bit for bit): paths are
ordered by score, descending; equal scores are ordered by the *reversed* tag sequence
(last tag first), smaller first. Viterbi keeps the smallest previous tag among equal
candidates and the smallest final tag; list Viterbi merges the candidates (previous tag i,
rank r) taking the best score first and, among equal scores, the smallest (i, r). This order
is preserved when a common suffix is appended, which is what makes the list Viterbi exact.

List Viterbi (Seshadri & Sundberg 1994): for every token t and tag j keep the k best partial
paths ending in j, as (score, previous tag, previous rank) sorted in the order above. Each
kept entry is a distinct partial path, so the k results are distinct: no duplicates, and a
sentence with fewer than k possible paths gets ``k_valid`` < k (never padded by repeats; cf.
the authors' NCRF++-based decoder, whose ranks 2..K repeat paths for sentences
shorter than their batch). Scores are summed in the same order as Viterbi:
``(previous + transition) + emission``, then ``+ end``.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange


@njit(cache=True)
def _viterbi_sentence(em, lo, hi, trans, start, end, v, nv, bp, tags) -> float:
    """Best path of rows lo:hi into ``tags[lo:hi]`` (-1 if none); returns its score.

    ``v``, ``nv``: (L,) scratch; ``bp``: (>= n, L) int32 back-pointers.
    """
    n_tags = em.shape[1]
    for j in range(n_tags):
        v[j] = start[j] + em[lo, j]
    for t in range(1, hi - lo):
        for j in range(n_tags):
            nv[j] = -np.inf
            bp[t, j] = 0
        for i in range(n_tags):
            vi = v[i]
            for j in range(n_tags):
                c = vi + trans[i, j]
                if c > nv[j]:
                    nv[j] = c
                    bp[t, j] = i
        for j in range(n_tags):
            v[j] = nv[j] + em[lo + t, j]
    best = -np.inf
    tag = -1
    for j in range(n_tags):
        c = v[j] + end[j]
        if c > best:
            best = c
            tag = j
    if tag < 0:
        tags[lo:hi] = -1
        return best
    for t in range(hi - lo - 1, 0, -1):
        tags[lo + t] = tag
        tag = bp[t, tag]
    tags[lo] = tag
    return best


@njit(cache=True, parallel=True)
def viterbi_kernel(em, offsets, chunks, trans, start, end, tags, best) -> None:
    """Fill ``tags (n_tokens,) int64`` and ``best (n_sents,)`` (allocated by the caller)."""
    n_tags = em.shape[1]
    for c in prange(chunks.size - 1):
        b0 = chunks[c]
        b1 = chunks[c + 1]
        max_len = 1
        for b in range(b0, b1):
            max_len = max(max_len, offsets[b + 1] - offsets[b])
        v = np.empty(n_tags)
        nv = np.empty(n_tags)
        bp = np.empty((max_len, n_tags), dtype=np.int32)
        for b in range(b0, b1):
            best[b] = _viterbi_sentence(
                em, offsets[b], offsets[b + 1], trans, start, end, v, nv, bp, tags
            )


@njit(cache=True)
def _kbest_sentence(
    em,
    lo,
    hi,
    trans,
    start,
    end,
    k,
    delta,
    cnt,
    bp_tag,
    bp_rank,
    heads,
    ptr,
    fin,
    out_tags,
    out_scores,
) -> int:
    """k best paths of rows lo:hi; returns k_valid.

    Scratch: ``delta`` (2, L, k) rolling partial scores, ``cnt`` (2, L) their counts,
    ``bp_tag``/``bp_rank`` (>= n, L, k) back-pointers, ``heads`` (L,) and ``ptr`` (L,) for the
    merge, ``fin`` (3, k) final merge buffer. Writes ``out_tags`` (k * n,) path-major and
    ``out_scores`` (k,).

    The k best partial paths ending in (t, j) are a k-way merge of the L sorted lists
    ``delta[t-1, i, :] + trans[i, j]``: each step takes the largest list head, the first
    (smallest i) on ties, so candidates come out in the tie order without any sorting.
    """
    n_tags = em.shape[1]
    n = hi - lo
    for j in range(n_tags):
        s = start[j] + em[lo, j]
        delta[0, j, 0] = s
        cnt[0, j] = 1 if s > -np.inf else 0
    for t in range(1, n):
        cur = t & 1
        prev = 1 - cur
        for j in range(n_tags):
            e = em[lo + t, j]
            for i in range(n_tags):
                ptr[i] = 0
                heads[i] = delta[prev, i, 0] + trans[i, j] if cnt[prev, i] > 0 else -np.inf
            c = 0
            while c < k and e > -np.inf:
                best = -np.inf
                arg = -1
                for i in range(n_tags):
                    if heads[i] > best:
                        best = heads[i]
                        arg = i
                if arg < 0:
                    break
                r = ptr[arg]
                delta[cur, j, c] = best + e
                bp_tag[t, j, c] = arg
                bp_rank[t, j, c] = r
                c += 1
                r += 1
                ptr[arg] = r
                heads[arg] = delta[prev, arg, r] + trans[arg, j] if r < cnt[prev, arg] else -np.inf
            cnt[cur, j] = c
    last = (n - 1) & 1
    fs = fin[0]
    c = 0
    for j in range(n_tags):
        if end[j] == -np.inf:
            continue
        for r in range(cnt[last, j]):
            s = delta[last, j, r] + end[j]
            if c == k and not s > fs[k - 1]:
                break
            c = _insert_final(fin, c, k, s, j, r)
    for q in range(k):
        row0 = q * n
        if q >= c:
            out_scores[q] = -np.inf
            out_tags[row0 : row0 + n] = -1
            continue
        out_scores[q] = fs[q]
        tag = int(fin[1, q])
        rank = int(fin[2, q])
        for t in range(n - 1, -1, -1):
            out_tags[row0 + t] = tag
            if t > 0:
                nxt = bp_tag[t, tag, rank]
                rank = bp_rank[t, tag, rank]
                tag = nxt
    return c


@njit(cache=True)
def _insert_final(fin, count, k, s, tag, rank) -> int:
    """``_insert`` for the final merge buffer ``fin`` (3, k): rows score, tag, rank (as float)."""
    p = count if count < k else k - 1
    while p > 0 and fin[0, p - 1] < s:
        fin[0, p] = fin[0, p - 1]
        fin[1, p] = fin[1, p - 1]
        fin[2, p] = fin[2, p - 1]
        p -= 1
    fin[0, p] = s
    fin[1, p] = tag
    fin[2, p] = rank
    return count + 1 if count < k else k


@njit(cache=True, parallel=True)
def kbest_kernel(em, offsets, chunks, trans, start, end, k, tags, scores, k_valid) -> None:
    """Fill ``tags (k*n_tokens,) int16``, ``scores (n_sents, k)``, ``k_valid (n_sents,)``.

    Sentence b's paths are rows ``k * offsets[b] : k * offsets[b + 1]``, path-major (k, n_b).
    Outputs are allocated by the caller (numpy's allocations page-fault far less than NRT's).
    """
    n_tags = em.shape[1]
    for c in prange(chunks.size - 1):
        b0 = chunks[c]
        b1 = chunks[c + 1]
        max_len = 1
        for b in range(b0, b1):
            max_len = max(max_len, offsets[b + 1] - offsets[b])
        delta = np.empty((2, n_tags, k))
        cnt = np.empty((2, n_tags), dtype=np.int64)
        bp_tag = np.empty((max_len, n_tags, k), dtype=np.int32)
        bp_rank = np.empty((max_len, n_tags, k), dtype=np.int32)
        heads = np.empty(n_tags)
        ptr = np.empty(n_tags, dtype=np.int64)
        fin = np.empty((3, k))
        for b in range(b0, b1):
            lo = offsets[b]
            hi = offsets[b + 1]
            k_valid[b] = _kbest_sentence(
                em,
                lo,
                hi,
                trans,
                start,
                end,
                k,
                delta,
                cnt,
                bp_tag,
                bp_rank,
                heads,
                ptr,
                fin,
                tags[k * lo : k * hi],
                scores[b],
            )
