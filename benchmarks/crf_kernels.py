"""Benchmark: structkd's numba CRF kernels vs pytorch-crf and torch-struct (CPU).

Standard workload (design.md §5): 14,000 sentences, lengths lognormal(2.35, 0.75) rounded and
clipped to [1, 124], n_tags L in {9, 20}, emissions N(0, 2^2) float32, transitions/start/end
N(0, 0.5^2). Torch libraries get length-sorted padded batches of 32, built before timing
(pytorch-crf: float32, as in anchors.md §5); ours gets the ragged float32 arrays (the float64
conversion is inside the timing). Median of 3 runs, ``torch.set_num_threads(2)``, numba warmed
up first (its cold compile is measured separately, in a subprocess with an empty cache).

"Label-pair operations" P = sum over sentences of n * L^2: the (token, previous tag, tag)
triples of ONE forward pass (one multiply-add each in our scaled probability-space forward).
It is printed per second for every row and, for ours, as a fraction of the machine's FMA peak
(numpy float64 matmul, 2 BLAS threads; 1 FMA = 2 flops). Marginals take a forward and a
backward pass plus per-token work, so their fraction understates the arithmetic done.

Run: ``python benchmarks/crf_kernels.py`` (full, ~3-6 min) or ``--quick`` (2,000 sentences).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable

import numba
import numpy as np
import torch
from torch_struct import LinearChainCRF
from torchcrf import CRF as TorchCRF

from structkd.pipeline import crf_kernels as K

NEG = -1e9  # torch-struct's own "zero" scale for impossible potentials


def workload(n_sents: int, n_tags: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    lens = np.clip(np.rint(rng.lognormal(2.35, 0.75, n_sents)), 1, 124).astype(np.int64)
    offsets = np.concatenate([[0], np.cumsum(lens)]).astype(np.int64)
    return {
        "emissions": rng.normal(0, 2, (int(offsets[-1]), n_tags)).astype(np.float32),
        "offsets": offsets,
        "transitions": rng.normal(0, 0.5, (n_tags, n_tags)),
        "start": rng.normal(0, 0.5, n_tags),
        "end": rng.normal(0, 0.5, n_tags),
    }


def padded_batches(
    work: dict[str, np.ndarray], size: int = 32
) -> list[tuple[torch.Tensor, torch.Tensor, np.ndarray]]:
    """Length-sorted batches: ``(emissions (B, N, L) float32, mask (B, N), sentence ids)``."""
    off = work["offsets"]
    lens = np.diff(off)
    order = np.argsort(lens, kind="stable")
    out = []
    for i in range(0, order.size, size):
        ids = order[i : i + size]
        n = int(lens[ids].max())
        em = np.zeros((ids.size, n, work["emissions"].shape[1]), np.float32)
        mask = np.zeros((ids.size, n), bool)
        for r, s in enumerate(ids):
            em[r, : lens[s]] = work["emissions"][off[s] : off[s + 1]]
            mask[r, : lens[s]] = True
        out.append((torch.from_numpy(em), torch.from_numpy(mask), ids))
    return out


def median_time(fn: Callable[[], object], reps: int) -> float:
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def fma_peak() -> float:
    """Fused multiply-adds per second of a float64 BLAS matmul (n = 2048), median of 3."""
    a = np.random.default_rng(0).random((2048, 2048))
    a @ a
    return 2048**3 / median_time(lambda: a @ a, 3)


def cold_compile() -> str:
    """First-call seconds per kernel in a fresh interpreter with an empty numba cache."""
    code = (
        "import time, numpy as np\n"
        "t0 = time.perf_counter()\n"
        "from structkd.pipeline import crf_kernels as K\n"
        "kw = dict(emissions=np.zeros((5, 3)), offsets=np.array([0, 2, 5]),"
        " transitions=np.zeros((3, 3)), start=np.zeros(3), end=np.zeros(3))\n"
        "out = ['import %.1fs' % (time.perf_counter() - t0)]\n"
        "for name, f in [('log_partition', K.log_partition), ('forward_backward', K.forward_backward),"
        " ('edge_marginals', K.edge_marginals), ('viterbi', K.viterbi),"
        " ('kbest', lambda **a: K.kbest(**a, k=2))]:\n"
        "    t0 = time.perf_counter(); f(**kw); out.append('%s %.1fs' % (name, time.perf_counter() - t0))\n"
        "print(', '.join(out))\n"
    )
    with tempfile.TemporaryDirectory() as cache:
        env = {**os.environ, "NUMBA_CACHE_DIR": cache}
        res = subprocess.run(
            [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
        )
    return res.stdout.strip()


def pytorch_crf_model(work: dict[str, np.ndarray]) -> TorchCRF:
    n_tags = work["start"].size
    crf = TorchCRF(n_tags, batch_first=True)
    with torch.no_grad():
        crf.transitions.copy_(torch.from_numpy(work["transitions"]))
        crf.start_transitions.copy_(torch.from_numpy(work["start"]))
        crf.end_transitions.copy_(torch.from_numpy(work["end"]))
    return crf


def struct_potentials(
    em: torch.Tensor, mask: torch.Tensor, work: dict[str, np.ndarray]
) -> tuple[torch.Tensor, torch.Tensor]:
    """torch-struct edge potentials ``(B, N, C, C)`` [next, prev] with a BOS node (so 1-token
    sentences have an edge); start is folded into edge 0 from BOS = state 0, end into the last."""
    trans = torch.from_numpy(work["transitions"]).float()
    start = torch.from_numpy(work["start"]).float()
    end = torch.from_numpy(work["end"]).float()
    lens = mask.sum(1)
    pot = em.unsqueeze(3) + trans.t()  # shape: (B, N, next, prev)
    first = torch.full_like(pot[:, 0], NEG)
    first[:, :, 0] = start + em[:, 0]
    pot = torch.cat([first.unsqueeze(1), pot[:, 1:]], 1)
    is_last = torch.arange(em.shape[1])[None] == (lens - 1)[:, None]
    pot = pot + is_last[:, :, None, None] * end[None, None, :, None]
    return pot, lens + 1


def run(n_sents: int, n_tags: int, reps: int, ts_every: int, seed: int, peak: float) -> None:
    work = workload(n_sents, n_tags, seed)
    batches = padded_batches(work)
    lens = np.diff(work["offsets"])
    pairs = float((lens * n_tags * n_tags).sum())
    args = {k: work[k] for k in ("emissions", "offsets", "transitions", "start", "end")}
    ref = pytorch_crf_model(work)
    print(
        f"\nL = {n_tags}: {n_sents:,} sentences, {lens.sum():,} tokens (mean {lens.mean():.1f}, "
        f"max {lens.max()}), {len(batches)} sorted batches of 32, "
        f"{sum(int(m.numel()) for _, m, _ in batches):,} padded tokens; P = {pairs / 1e6:.1f} M"
    )

    def crf_logz():
        with torch.no_grad():
            for em, mask, _ in batches:
                ref._compute_normalizer(em.transpose(0, 1), mask.transpose(0, 1))

    def crf_logz_grad():
        for em, mask, _ in batches:
            ref.zero_grad()
            em = em.requires_grad_(True)
            ref._compute_normalizer(em.transpose(0, 1), mask.transpose(0, 1)).sum().backward()

    def crf_marginals():
        for em, mask, _ in batches:
            em = em.requires_grad_(True)
            z = ref._compute_normalizer(em.transpose(0, 1), mask.transpose(0, 1)).sum()
            torch.autograd.grad(z, em)

    def crf_viterbi():
        with torch.no_grad():
            for em, mask, _ in batches:
                ref.decode(em, mask)

    def struct_marginals():
        for em, mask, _ in batches:
            pot, n = struct_potentials(em, mask, work)
            LinearChainCRF(pot, lengths=n).marginals.sum(-1)

    sub = batches[::ts_every]
    sub_sents = sum(len(ids) for _, _, ids in sub)

    def struct_topk():
        for em, mask, _ in sub:
            pot, n = struct_potentials(em, mask, work)
            LinearChainCRF(pot, lengths=n).topk(10)

    ours = {
        "log Z": lambda: K.log_partition(**args),
        "marginals": lambda: K.forward_backward(**args),
        "viterbi": lambda: K.viterbi(**args),
        "10-best": lambda: K.kbest(**args, k=10),
        "edge marginals": lambda: K.edge_marginals(**args),
    }
    for fn in ours.values():
        fn()  # warm-up: JIT compile or cache load
    rows = [(task, "ours (numba, ragged)", median_time(fn, reps), 1.0) for task, fn in ours.items()]
    theirs = [
        ("log Z", "pytorch-crf, no grad", median_time(crf_logz, reps), 1.0),
        ("log Z + grad", "pytorch-crf, backward", median_time(crf_logz_grad, reps), 1.0),
        ("marginals", "pytorch-crf, autograd", median_time(crf_marginals, reps), 1.0),
        ("marginals", "torch-struct", median_time(struct_marginals, reps), 1.0),
        ("viterbi", "pytorch-crf decode", median_time(crf_viterbi, reps), 1.0),
        (
            "10-best",
            f"torch-struct topk(10) x{n_sents / sub_sents:.0f}",
            median_time(struct_topk, 1),
            n_sents / sub_sents,
        ),
    ]
    ours_time = {task: t for task, _, t, _ in rows}
    print(
        f"{'task':<15}{'implementation':<32}{'wall s':>9}{'sents/s':>11}{'M pairs/s':>11}{'% FMA':>7}{'ours x':>9}"
    )
    for task, impl, t, scale in rows + theirs:
        t = t * scale
        is_ours = impl.startswith("ours")
        frac = f"{100 * pairs / t / peak:6.1f}" if is_ours else ""
        speed = (
            "" if is_ours else f"{t / ours_time[task if task in ours_time else 'marginals']:8.1f}x"
        )
        print(
            f"{task:<15}{impl:<32}{t:9.3f}{n_sents / t:11,.0f}{pairs / t / 1e6:11.1f}{frac:>7}{speed:>9}"
        )
    print(
        f"  (torch-struct topk(10) ran on every {ts_every}th batch, {sub_sents} sentences, and is "
        f"scaled x{n_sents / sub_sents:.1f}: the full run would take too long; 'log Z + grad' is "
        "compared with our marginals, i.e. the emission gradient)"
    )
    check_agreement(work, batches, sub[:2], ref)


def check_agreement(work, batches, sub, ref) -> None:
    """Sanity: ours vs pytorch-crf marginals and torch-struct 10-best scores on a few batches."""
    post = K.forward_backward(
        **{k: work[k] for k in ("emissions", "offsets", "transitions", "start", "end")}
    )
    top = K.kbest(
        **{k: work[k] for k in ("emissions", "offsets", "transitions", "start", "end")}, k=10
    )
    off = work["offsets"]
    worst = 0.0
    for em, mask, ids in batches[::50]:
        em = em.requires_grad_(True)
        (g,) = torch.autograd.grad(
            ref._compute_normalizer(em.transpose(0, 1), mask.transpose(0, 1)).sum(), em
        )
        for r, s in enumerate(ids):
            n = off[s + 1] - off[s]
            worst = max(
                worst,
                float(
                    np.abs(g[r, :n].numpy() - np.exp(post.log_marginals[off[s] : off[s + 1]])).max()
                ),
            )
    top_diff = 0.0
    for em, mask, ids in sub:
        pot, n = struct_potentials(em, mask, work)
        parts = LinearChainCRF(pot, lengths=n).topk(10)
        scores = (parts * pot.detach()).sum((2, 3, 4)).T  # shape: (B, 10)
        for r, s in enumerate(ids):
            kv = int(top.k_valid[s])
            top_diff = max(
                top_diff, float(np.abs(scores[r, :kv].numpy() - top.kbest_scores[s, :kv]).max())
            )
    print(
        f"  agreement: max |marginal - pytorch-crf float32 grad| = {worst:.1e}; "
        f"max |10-best score - torch-struct float32| = {top_diff:.1e}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="2,000 sentences, no cold-compile run")
    parser.add_argument("--tags", type=int, nargs="+", default=[9, 20])
    parser.add_argument("--seed", type=int, default=0)
    opts = parser.parse_args()
    torch.set_num_threads(2)
    n_sents = 2000 if opts.quick else 14000
    print(
        f"CRF kernels benchmark ({'quick' if opts.quick else 'standard'} workload): "
        f"{os.cpu_count()} cores, torch {torch.__version__} ({torch.get_num_threads()} threads), "
        f"numba {numba.__version__} ({numba.get_num_threads()} threads), numpy {np.__version__}"
    )
    peak = fma_peak()
    print(
        f"FMA peak (numpy float64 2048^2 matmul): {peak / 1e9:.1f} G FMA/s = {2 * peak / 1e9:.1f} GFLOP/s"
    )
    print("P = label-pair operations = sum over sentences of n * L^2 (one forward pass)")
    if not opts.quick:
        print(f"cold numba compile (empty cache): {cold_compile()}")
    for n_tags in opts.tags:
        run(n_sents, n_tags, reps=3, ts_every=20 if n_tags < 15 else 40, seed=opts.seed, peak=peak)


if __name__ == "__main__":
    main()
