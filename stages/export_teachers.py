"""Stage ``export-teachers``: run each teacher once over its training corpus into knowledge shards.

Writes ``knowledge/<lang>/part-NNNNN.parquet`` + ``manifest.json`` (design.md §3), one dask task
per shard, on a LocalCluster (``--workers N``) or an existing cluster (``--scheduler ADDRESS``).
Reuse is by content: a language whose key (teacher weights, prepared corpus, features, export
settings, schema version) is unchanged runs no teacher; an interrupted or corrupted export
recomputes only what is missing or broken. A file lock per language lets two exports share a
cache safely.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from structkd.pipeline.layout import ParamsPath, open_project


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
    import logging
    from dataclasses import asdict

    from dask.distributed import Client, LocalCluster, as_completed
    from tqdm import tqdm

    from structkd.pipeline.data import shard_paths
    from structkd.pipeline.errors import StructkdError
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

    cluster = None
    client = None
    try:
        for lang, key, digests, names, prepared, features, teacher in plans:
            entry = cache.entry(lang)
            with entry.lock():
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
                if client is None:
                    if scheduler:
                        client = Client(scheduler)
                    else:
                        cluster = LocalCluster(
                            n_workers=workers or settings.workers,
                            threads_per_worker=1,
                            processes=True,
                            dashboard_address=None,
                            # no fixed port 8787 (two exports at once), no worker tracebacks:
                            # a failed shard reaches the user as one Error line
                            scheduler_kwargs={"dashboard_address": ":0"},
                            silence_logs=logging.CRITICAL,
                        )
                        client = Client(cluster)
                jobs = [
                    ShardJob(
                        teacher_dir=str(teacher),
                        prepared=str(prepared / name),
                        features=str(features / name),
                        output=str(entry.shard_path(name)),
                        cache_key=key,
                        digests=tuple(sorted(digests.items())),
                        settings=settings,
                    )
                    for name in todo
                ]
                futures = client.map(export_shard, jobs, pure=False)
                # closed on error too, so the Error line starts on a line of its own
                with tqdm(total=len(jobs), desc=f"export {lang}", unit="shard", leave=False) as bar:
                    for future in as_completed(futures):
                        try:
                            timing = future.result()
                        except StructkdError:
                            client.cancel(futures)
                            raise
                        entry.record(key, timing.record)
                        bar.update()
                entry.commit(key, names)
    finally:
        if client is not None:
            client.close()
        if cluster is not None:
            cluster.close()
