"""Benchmark: structkd's numba CRF kernels vs pytorch-crf and torch-struct (CPU).

Standard workload: 14,000 sentences, lengths lognormal(2.35, 0.75) rounded and
clipped to [1, 124], n_tags L in {9, 20}, emissions N(0, 2^2) float32, transitions/start/end
N(0, 0.5^2). Torch libraries get length-sorted padded batches of 32, built before timing
(pytorch-crf: float32, its users' usual setting); ours gets the ragged float32 arrays (read as they
are, all arithmetic in float64; validation is inside the timing). Median of 3 runs,
``torch.set_num_threads(2)`` and 2 numba threads (``--threads`` changes both), numba warmed up
first (its cold compile is measured separately, in a subprocess with an empty cache).

"Label-pair operations" P = sum over sentences of n * L^2: the (token, previous tag, tag)
triples of ONE forward pass (one multiply-add each in our scaled probability-space forward).
It is printed per second for every row and, for ours, as a fraction of the machine's FMA peak
(numpy float64 matmul on as many BLAS threads; 1 FMA = 2 flops). Marginals take a forward and a
backward pass plus per-token work, so their fraction understates the arithmetic done.

torch-struct's topk(10) is far too slow to run in full; it is timed once on a
sample of batches spread over the run (22 batches = 704 sentences for L < 15, 11 for L >= 15)
and scaled to the full workload, which the output says.

Run: ``python benchmarks/crf_kernels.py`` (standard, several minutes) or ``--quick`` (2,000
sentences, torch-struct topk on 2 batches).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
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


def median_time(fn: Callable[[], object], reps: int) -> tuple[float, float]:
    """Median wall seconds and median CPU seconds (all threads of this process) of ``reps`` runs.

    CPU time excludes the time a thread waits while descheduled, so with one thread it is the
    robust measure on a busy machine; with two it also counts OpenMP spin-waiting.
    """
    walls, cpus = [], []
    for _ in range(reps):
        t0, c0 = time.perf_counter(), time.process_time()
        fn()
        walls.append(time.perf_counter() - t0)
        cpus.append(time.process_time() - c0)
    return statistics.median(walls), statistics.median(cpus)


FMA_PEAK = """
import statistics, time, numpy as np
a = np.random.default_rng(0).random((2048, 2048))
a @ a
times = []
for _ in range(3):
    t0 = time.perf_counter()
    a @ a
    times.append(time.perf_counter() - t0)
print(2048**3 / statistics.median(times))
"""


def fma_peak(threads: int) -> float:
    """Fused multiply-adds per second of a float64 BLAS matmul (n = 2048) on ``threads`` threads.

    Measured in a subprocess because BLAS fixes its thread count when it loads.
    """
    env = {**os.environ, "OPENBLAS_NUM_THREADS": str(threads), "OMP_NUM_THREADS": str(threads)}
    cmd = [sys.executable, "-c", FMA_PEAK]
    return float(subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stdout)


COLD_COMPILE = """
import time, numpy as np
t0 = time.perf_counter()
from structkd.pipeline import crf_kernels as K
kw = dict(emissions=np.zeros((5, 3)), offsets=np.array([0, 2, 5]),
          transitions=np.zeros((3, 3)), start=np.zeros(3), end=np.zeros(3))
out = ["import %.1fs" % (time.perf_counter() - t0)]
calls = [("log_partition", K.log_partition), ("forward_backward", K.forward_backward),
         ("edge_marginals", K.edge_marginals), ("viterbi", K.viterbi),
         ("kbest", lambda **a: K.kbest(**a, k=2))]
for name, f in calls:
    t0 = time.perf_counter()
    f(**kw)
    out.append("%s %.1fs" % (name, time.perf_counter() - t0))
print(", ".join(out))
"""


def cold_compile() -> str:
    """First-call seconds per kernel in a fresh interpreter with an empty numba cache."""
    with tempfile.TemporaryDirectory() as cache:
        env = {**os.environ, "NUMBA_CACHE_DIR": cache}
        cmd = [sys.executable, "-c", COLD_COMPILE]
        res = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
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


def run(n_sents: int, n_tags: int, reps: int, ts_batches: int, seed: int, peak: float) -> None:
    """Time every implementation on one workload and print the table and the two goals."""
    work = workload(n_sents, n_tags, seed)
    batches = padded_batches(work)
    lens = np.diff(work["offsets"])
    pairs = float((lens * n_tags * n_tags).sum())
    ref = pytorch_crf_model(work)
    padded = sum(int(m.numel()) for _, m, _ in batches)
    print(
        f"\nL = {n_tags}: {n_sents:,} sentences, {lens.sum():,} tokens (mean {lens.mean():.1f}, "
        f"max {lens.max()}, {int((lens == 1).sum())} of length 1), {len(batches)} sorted batches "
        f"of 32 ({padded:,} padded tokens); P = {pairs / 1e6:.1f} M; load {_load()}"
    )

    def crf_logz() -> None:
        with torch.no_grad():
            for em, mask, _ in batches:
                ref._compute_normalizer(em.transpose(0, 1), mask.transpose(0, 1))

    def crf_logz_grad() -> None:
        for em, mask, _ in batches:
            ref.zero_grad()
            em = em.requires_grad_(True)
            ref._compute_normalizer(em.transpose(0, 1), mask.transpose(0, 1)).sum().backward()

    def crf_marginals() -> None:
        for em, mask, _ in batches:
            em = em.requires_grad_(True)
            log_z = ref._compute_normalizer(em.transpose(0, 1), mask.transpose(0, 1))
            torch.autograd.grad(log_z.sum(), em)

    def crf_viterbi() -> None:
        with torch.no_grad():
            for em, mask, _ in batches:
                ref.decode(em, mask)

    def struct_marginals() -> None:
        for em, mask, _ in batches:
            pot, n = struct_potentials(em, mask, work)
            LinearChainCRF(pot, lengths=n).marginals.sum(-1)  # edge -> unary marginals

    step = max(1, len(batches) // ts_batches)
    sub = batches[::step][:ts_batches]
    sub_sents = sum(len(ids) for _, _, ids in sub)

    def struct_topk() -> None:
        for em, mask, _ in sub:
            pot, n = struct_potentials(em, mask, work)
            LinearChainCRF(pot, lengths=n).topk(10)

    args = {key: work[key] for key in ("emissions", "offsets", "transitions", "start", "end")}
    ours = {
        "log Z": lambda: K.log_partition(**args),
        "marginals": lambda: K.forward_backward(**args),
        "viterbi": lambda: K.viterbi(**args),
        "10-best": lambda: K.kbest(**args, k=10),
        "edge marginals": lambda: K.edge_marginals(**args),
    }
    for fn in ours.values():
        fn()  # warm-up: JIT compile or load from the on-disk cache
    ours_time = {task: median_time(fn, reps) for task, fn in ours.items()}
    scale = n_sents / sub_sents
    topk_wall, topk_cpu = median_time(struct_topk, 1)
    theirs = [  # (task, implementation, (wall, cpu) s for all sentences, our task compared with)
        ("log Z", "pytorch-crf (no grad)", median_time(crf_logz, reps), "log Z"),
        ("log Z + grad", "pytorch-crf (backward)", median_time(crf_logz_grad, reps), "marginals"),
        ("marginals", "pytorch-crf (autograd)", median_time(crf_marginals, reps), "marginals"),
        ("marginals", "torch-struct", median_time(struct_marginals, reps), "marginals"),
        ("viterbi", "pytorch-crf decode", median_time(crf_viterbi, reps), "viterbi"),
        ("10-best", "torch-struct topk(10) *", (topk_wall * scale, topk_cpu * scale), "10-best"),
    ]
    header = ("task", "implementation", "wall s", "cpu s", "sents/s", "M pairs/s", "% FMA")
    print("{:<15}{:<25}{:>9}{:>9}{:>11}{:>10}{:>7}  ours x (wall / cpu)".format(*header))
    for task, (t, cpu) in ours_time.items():
        frac = 100 * pairs / t / peak
        print(
            f"{task:<15}{'ours (numba)':<25}{t:9.3f}{cpu:9.3f}{n_sents / t:11,.0f}"
            f"{pairs / t / 1e6:10.1f}{frac:7.1f}"
        )
    ratios = {}
    for task, impl, (t, cpu), mine in theirs:
        ratios[(task, impl)] = t / ours_time[mine][0]
        print(
            f"{task:<15}{impl:<25}{t:9.3f}{cpu:9.3f}{n_sents / t:11,.0f}{pairs / t / 1e6:10.1f}"
            f"{'':>7}  {t / ours_time[mine][0]:7.1f}x / {cpu / ours_time[mine][1]:.1f}x"
        )
    print(
        f"  * torch-struct topk(10) is too slow to run in full: timed once on {len(sub)} batches "
        f"spread over the run ({sub_sents} sentences) and scaled x{scale:.1f}. 'log Z + grad' "
        "is compared with our marginals (= the emission gradient)."
    )
    marg = ratios[("marginals", "pytorch-crf (autograd)")]
    top = ratios[("10-best", "torch-struct topk(10) *")]
    print(
        f"  goals (wall-clock ratios): marginals >= 10x pytorch-crf: "
        f"{'MET' if marg >= 10 else 'MISSED'} ({marg:.1f}x); "
        f"goal 10-best >= 100x torch-struct topk: {'MET' if top >= 100 else 'MISSED'} "
        f"({top:,.0f}x); load {_load()}"
    )
    check_agreement(work, batches[::50], sub[:2], ref)


def _load() -> str:
    return "/".join(f"{x:.1f}" for x in os.getloadavg())


def check_agreement(work, batches, sub, ref) -> None:
    """Sanity: ours vs pytorch-crf marginals and vs torch-struct 10-best scores on a few batches."""
    args = {key: work[key] for key in ("emissions", "offsets", "transitions", "start", "end")}
    post = K.forward_backward(**args)
    top = K.kbest(**args, k=10)
    off = work["offsets"]
    worst = 0.0
    for em, mask, ids in batches:
        em = em.requires_grad_(True)
        log_z = ref._compute_normalizer(em.transpose(0, 1), mask.transpose(0, 1))
        (grad,) = torch.autograd.grad(log_z.sum(), em)
        for r, s in enumerate(ids):
            ours = np.exp(post.log_marginals[off[s] : off[s + 1]])
            worst = max(worst, float(np.abs(grad[r, : off[s + 1] - off[s]].numpy() - ours).max()))
    top_diff = 0.0
    for em, mask, ids in sub:
        pot, n = struct_potentials(em, mask, work)
        parts = LinearChainCRF(pot, lengths=n).topk(10)
        scores = (parts * pot.detach()).sum((2, 3, 4)).T  # shape: (B, 10)
        for r, s in enumerate(ids):
            kv = int(top.k_valid[s])
            diff = np.abs(scores[r, :kv].numpy() - top.kbest_scores[s, :kv]).max()
            top_diff = max(top_diff, float(diff))
    print(
        f"  agreement: max |our marginals - pytorch-crf float32 gradient| = {worst:.1e}; "
        f"max |our 10-best scores - torch-struct float32 topk scores| = {top_diff:.1e}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="2,000 sentences, no cold compile")
    parser.add_argument("--tags", type=int, nargs="+", default=[9, 20])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--threads",
        type=int,
        default=2,
        help="torch and numba threads (default 2 = the standard; 1 is robust on a busy machine, "
        "where OpenMP barriers of 2-thread runs wait for descheduled threads)",
    )
    opts = parser.parse_args()
    warnings.filterwarnings("ignore", message=".*arg_constraints.*")  # torch-struct's own warning
    torch.set_num_threads(opts.threads)
    numba.set_num_threads(opts.threads)
    n_sents = 2000 if opts.quick else 14000
    K.log_partition(**workload(400, 3, 0))  # starts numba's thread pool
    print(
        f"CRF kernels benchmark ({'quick' if opts.quick else 'standard'} workload), "
        f"{os.cpu_count()} cores, load {_load()}: torch {torch.__version__} "
        f"({torch.get_num_threads()} threads), numba {numba.__version__} "
        f"({numba.get_num_threads()} threads, {numba.threading_layer()} layer), "
        f"numpy {np.__version__}"
    )
    peak = fma_peak(opts.threads)
    print(
        f"FMA peak (numpy float64 2048^2 matmul, {opts.threads} BLAS threads): "
        f"{peak / 1e9:.1f} G FMA/s "
        f"({2 * peak / 1e9:.1f} GFLOP/s); '% FMA' = ours' M pairs/s / peak"
    )
    print("M pairs/s: P / wall s, with P = sum over sentences of n * L^2 (one forward pass)")
    if not opts.quick:
        print(f"cold numba compile (empty cache, fresh process): {cold_compile()}")
    for n_tags in opts.tags:
        ts_batches = 2 if opts.quick else (22 if n_tags < 15 else 11)
        run(n_sents, n_tags, reps=3, ts_batches=ts_batches, seed=opts.seed, peak=peak)


if __name__ == "__main__":
    main()
