"""Stage ``export-teachers``: run each teacher once over its training corpus into knowledge shards.

Writes ``knowledge/<lang>/part-NNNNN.parquet`` + ``manifest.json`` (design.md §3), one dask task
per shard, every language's shards in one submission, on a LocalCluster (``--workers N``) or an
existing cluster (``--scheduler ADDRESS``). Reuse is by content: a language whose key (teacher
weights, prepared corpus, features, export settings, schema version) is unchanged runs no
teacher; an interrupted or corrupted export recomputes only what is missing or broken. A file
lock per language lets two exports share a cache safely.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from structkd.pipeline.layout import open_project
from structkd.stages.options import ParamsPath

if TYPE_CHECKING:
    from dask.distributed import Client


def main(
    params_path: ParamsPath = Path("params.yaml"),
    workers: Annotated[
        int | None, typer.Option(help="Local dask worker processes (default: export.workers).")
    ] = None,
    scheduler: Annotated[
        str | None, typer.Option(help="Address of an existing dask scheduler, e.g. tcp://h:8786.")
    ] = None,
) -> None:
    """Export Top-K paths, marginals and emissions of every teacher (cached by content)."""
    from dataclasses import asdict

    from dask.distributed import as_completed
    from tqdm import tqdm

    from structkd.errors import StructkdError
    from structkd.pipeline.data import shard_paths
    from structkd.pipeline.export import ShardJob, export_shard
    from structkd.pipeline.labels import LabelSet
    from structkd.storage.cache import KnowledgeCache, cache_key, content_digest

    params, layout = open_project(params_path)
    settings = params.export
    task_labels = LabelSet.load(layout.labels)
    cache = KnowledgeCache(layout.root / "knowledge")
    plans = []
    for lang in params.data.languages:
        teacher = layout.teacher(lang)
        task_labels.check_same(LabelSet.load(teacher / "labels.json"), str(teacher / "labels.json"))
        prepared, features = layout.prepared(lang, "train"), layout.features(lang, "train")
        digests = {
            "teacher": content_digest(teacher / "model.safetensors"),
            "teacher_config": content_digest(teacher / "config.json"),
            "prepared": content_digest(prepared),
            "features": content_digest(features),
        }
        key = cache_key(
            teacher_digest=digests["teacher"] + digests["teacher_config"],
            prepared_digest=digests["prepared"],
            features_digest=digests["features"],
            settings={k: v for k, v in asdict(settings).items() if k != "workers"},
        )
        names = [p.name for p in shard_paths(prepared)]
        plans.append((lang, key, digests, names, prepared, features, teacher))

    with ExitStack() as stack:
        # every language's lock, in one order (no deadlock between two exports), then every
        # missing shard of every language in one submission, so all workers stay busy
        pending: dict[str, tuple] = {}
        jobs: list[tuple[str, ShardJob]] = []
        for lang, key, digests, names, prepared, features, teacher in sorted(plans):
            entry = cache.entry(lang)
            stack.enter_context(entry.lock())
            if entry.status(key) == "hit":
                typer.echo(f"knowledge {lang}: up to date, no teacher run (key {key[:12]})")
                continue
            problems = entry.problems(key)
            entry.begin(key, inputs=digests)
            todo = entry.missing_shards(key, names)
            typer.echo(
                f"knowledge {lang}: computing {len(todo)} of {len(names)} shards "
                f"({problems[0] if problems else 'new'})"
            )
            if not todo:  # every shard verified: only the manifest was missing or stale
                entry.commit(key, names)
                continue
            pending[lang] = (entry, key, names)
            jobs += [
                (
                    lang,
                    ShardJob(
                        teacher_dir=str(teacher),
                        prepared=str(prepared / name),
                        features=str(features / name),
                        output=str(entry.shard_path(name)),
                        cache_key=key,
                        digests=tuple(sorted(digests.items())),
                        settings=settings,
                    ),
                )
                for name in todo
            ]
        if not jobs:
            return
        left = Counter(lang for lang, _ in jobs)
        client = stack.enter_context(_client(scheduler, workers or settings.workers))
        futures = {client.submit(export_shard, job, pure=False): lang for lang, job in jobs}
        # closed on error too, so the Error line starts on a line of its own
        with tqdm(total=len(jobs), desc="export", unit="shard", leave=False) as bar:
            for future in as_completed(futures):
                lang = futures[future]
                entry, key, names = pending[lang]
                try:
                    timing = future.result()
                except StructkdError:
                    client.cancel(list(futures))
                    raise
                entry.record(key, timing.record)
                bar.update()
                left[lang] -= 1
                if not left[lang]:
                    entry.commit(key, names)


@contextmanager
def _client(scheduler: str | None, workers: int) -> Iterator[Client]:
    """A client of the given scheduler, or of a LocalCluster of ``workers`` processes."""
    import logging

    from dask.distributed import Client, LocalCluster

    if scheduler:
        with Client(scheduler) as client:
            yield client
        return
    with (
        LocalCluster(
            n_workers=workers,
            threads_per_worker=1,
            processes=True,
            dashboard_address=None,
            # no fixed port 8787 (two exports at once), no worker tracebacks: a failed shard
            # reaches the user as one Error line
            scheduler_kwargs={"dashboard_address": ":0"},
            silence_logs=logging.CRITICAL,
        ) as cluster,
        Client(cluster) as client,
    ):
        yield client
