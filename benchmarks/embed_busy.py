"""``embed`` on a quiet machine vs. beside a CPU hog: does the stage collapse when busy?

Torch ops with 2 OpenMP threads on 2 cores wait in barriers for a thread that shares its core
with another process (the stage took ~7 min beside a competing job instead of well under a
minute). The stage now runs ``runtime.threads`` (default 1) threads under the CLI's passive
wait policy; this measures it: the shipped sample cut to ``--limit`` sentences per split,
``structkd stage embed`` run as its own process ``--repeats`` times quiet and as often beside
a process that spins on one core, median wall seconds, and their ratio (goal: <= 1.5).

Run: ``python benchmarks/embed_busy.py`` (``--threads 2`` for the old default).
"""

from __future__ import annotations

import argparse
import multiprocessing
import shutil
import tempfile
from pathlib import Path

from _workload import machine, median, sample_project, structkd


def _spin() -> None:
    while True:
        pass


def embed_seconds(params: Path, repeats: int) -> list[float]:
    """Wall seconds of ``repeats`` fresh ``embed`` runs (features removed before each)."""
    times = []
    for _ in range(repeats):
        shutil.rmtree(params.parent / "data" / "features", ignore_errors=True)
        times.append(structkd("stage", "embed", params=params))
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, default=100, help="sentences per split")
    parser.add_argument("--threads", type=int, default=1, help="runtime.threads")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    print(f"machine: {machine()}")
    with tempfile.TemporaryDirectory(prefix="structkd-embed-busy-") as work:
        params = sample_project(
            Path(work), args.limit, runtime={"device": "cpu", "threads": args.threads}
        )
        structkd("stage", "prepare", params=params)
        structkd("stage", "embed", params=params)  # converts the encoder once, warms caches
        quiet = embed_seconds(params, args.repeats)
        hog = multiprocessing.Process(target=_spin, daemon=True)
        hog.start()
        try:
            busy = embed_seconds(params, args.repeats)
        finally:
            hog.terminate()
            hog.join()
    print(f"embed, {args.limit} sentences per split, runtime.threads {args.threads}:")
    print(f"  quiet:       {median(quiet):6.1f} s  (runs {', '.join(f'{t:.1f}' for t in quiet)})")
    print(f"  beside hog:  {median(busy):6.1f} s  (runs {', '.join(f'{t:.1f}' for t in busy)})")
    print(f"  ratio busy/quiet: {median(busy) / median(quiet):.2f}")


if __name__ == "__main__":
    main()
