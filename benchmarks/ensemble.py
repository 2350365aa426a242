"""What mixing a teacher ensemble adds to an export shard, against the members' own kernels.

Per shard the export runs, for each of M members, its network and the numba kernels
(forward-backward with edge marginals, list Viterbi), then :func:`structkd.pipeline.ensemble.mix`
once. This times ``mix`` against the members' kernels on the same synthetic shard (the
reference, measured in the same run): S sentences of lengths uniform in [5, 40), L tags, K paths,
emissions N(0, 3²), CRF parameters N(0, 1), seed 0; median of 5 runs after a warm-up. The
network, the larger part of an export, is not included, so the ratio is an upper bound on what
mixing adds to a shard.

    .venv/bin/python benchmarks/ensemble.py                 # M = 3, S = 200, L = 17, K = 10
    .venv/bin/python benchmarks/ensemble.py --members 5 --tags 9
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from _workload import machine, median

from structkd.pipeline.ensemble import TeacherKnowledge, mix, teacher_knowledge


def members(
    m: int, sentences: int, n_tags: int, k: int
) -> tuple[np.ndarray, list[np.ndarray], list[dict]]:
    rng = np.random.default_rng(0)
    lengths = rng.integers(5, 40, sentences)
    n = int(lengths.sum())
    emissions = [rng.normal(size=(n, n_tags)) * 3 for _ in range(m)]
    crfs = [
        {
            name: rng.normal(size=shape)
            for name, shape in (
                ("transitions", (n_tags, n_tags)),
                ("start", (n_tags,)),
                ("end", (n_tags,)),
            )
        }
        for _ in range(m)
    ]
    return lengths, emissions, crfs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--members", type=int, default=3)
    parser.add_argument("--sentences", type=int, default=200)
    parser.add_argument("--tags", type=int, default=17)
    parser.add_argument("--k", type=int, default=10)
    args = parser.parse_args()
    lengths, emissions, crfs = members(args.members, args.sentences, args.tags, args.k)

    def kernels() -> list[TeacherKnowledge]:
        return [
            teacher_knowledge(e, lengths, crf, k=args.k, edges=True)
            for e, crf in zip(emissions, crfs, strict=True)
        ]

    parts = kernels()
    mix(parts, lengths, k=args.k)  # warm-up
    kernel_times, mix_times = [], []
    for _ in range(5):
        began = time.perf_counter()
        parts = kernels()
        kernel_times.append(time.perf_counter() - began)
        began = time.perf_counter()
        mix(parts, lengths, k=args.k)
        mix_times.append(time.perf_counter() - began)
    tokens = int(lengths.sum())
    ref, ours = median(kernel_times), median(mix_times)
    print(machine())
    print(
        f"{args.members} members, {args.sentences} sentences ({tokens} tokens), "
        f"L = {args.tags}, K = {args.k}"
    )
    print(f"members' kernels: {ref * 1e3:.1f} ms ({tokens * args.members / ref:,.0f} tokens/s)")
    print(f"mix:              {ours * 1e3:.1f} ms ({args.sentences / ours:,.0f} sentences/s)")
    print(f"mix / members' kernels: {ours / ref:.2f}")


if __name__ == "__main__":
    main()
