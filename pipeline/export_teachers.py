"""Export: run each teacher once over its training corpus into knowledge shards (core of
``export-teachers``).

Writes ``knowledge/<lang>/part-NNNNN.parquet`` + ``manifest.json``, one dask task per shard
(:func:`structkd.pipeline.export.export_shard`), every language's missing shards in one
submission, on a LocalCluster (``workers``) or an existing cluster (``scheduler``). Reuse is by
content: a language whose :func:`knowledge_key` is unchanged runs no teacher; an interrupted or
corrupted export recomputes only what is missing or broken. The locks of all languages are taken
in one order, so two exports can share a cache safely.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

from structkd.pipeline.data import shard_paths
from structkd.pipeline.labels import LabelSet
from structkd.pipeline.layout import Layout
from structkd.pipeline.params import ExportParams, Params, RuntimeParams, check_range, field_of
from structkd.storage.cache import CacheEntry, KnowledgeCache, cache_key, content_digest, locked

if TYPE_CHECKING:
    from dask.distributed import Client

    from structkd.pipeline.export import ShardJob


RUN_SETTINGS = ("workers", "timeout")
"""Export settings that change how the export runs, not what it writes (not in the key)."""


def knowledge_inputs(layout: Layout, lang: str, seeds: Sequence[int]) -> dict[str, str]:
    """Digests of what ``lang``'s knowledge is made from (stored in its manifest and shards).

    The teacher ensemble's members are ``teacher`` / ``teacher_config`` (the first, seed
    ``seeds[0]``) and ``teacher@seed-<s>`` / ``teacher_config@seed-<s>`` for the others, so a
    single teacher's inputs, and hence its key, are what they were before ensembles.
    """
    inputs = {}
    for i, (seed, member) in enumerate(
        zip(seeds, layout.teacher_members(lang, seeds), strict=True)
    ):
        tag = f"@seed-{seed}" if i else ""
        inputs[f"teacher{tag}"] = content_digest(member / "model.safetensors")
        inputs[f"teacher_config{tag}"] = content_digest(member / "config.json")
    return {
        **inputs,
        "prepared": content_digest(layout.prepared(lang, "train")),
        "features": content_digest(layout.features(lang, "train")),
    }


def teacher_members(inputs: Mapping[str, str]) -> list[str]:
    """The member tags of the inputs: ``""`` for the first teacher, ``"@seed-<s>"`` for others."""
    return [""] + sorted(
        name.removeprefix("teacher") for name in inputs if name.startswith("teacher@")
    )


def knowledge_key(inputs: Mapping[str, str], settings: ExportParams) -> str:
    """The cache key of a language's knowledge: its inputs, the export settings, the schema.

    The student recomputes it to refuse knowledge a retrained teacher has made stale.
    """
    return cache_key(
        teacher_digest="".join(
            inputs[f"teacher{tag}"] + inputs[f"teacher_config{tag}"]
            for tag in teacher_members(inputs)
        ),
        prepared_digest=inputs["prepared"],
        features_digest=inputs["features"],
        settings={k: v for k, v in asdict(settings).items() if k not in RUN_SETTINGS},
    )


def knowledge_cache(layout: Layout) -> KnowledgeCache:
    """The ``knowledge/`` cache of the project."""
    return KnowledgeCache(layout.root / "knowledge")


@dataclass(frozen=True)
class LanguageExport:
    """One teacher language: its cache entry and key, and where its inputs are."""

    lang: str
    entry: CacheEntry
    key: str
    inputs: dict[str, str]
    names: list[str]
    layout: Layout
    seeds: tuple[int, ...]

    def jobs(
        self, missing: list[str], settings: ExportParams, runtime: RuntimeParams
    ) -> list[ShardJob]:
        """One dask task per missing shard (each worker resolves ``runtime`` for itself)."""
        from structkd.pipeline.export import ShardJob

        prepared = self.layout.prepared(self.lang, "train")
        features = self.layout.features(self.lang, "train")
        return [
            ShardJob(
                teacher_dirs=tuple(
                    str(d) for d in self.layout.teacher_members(self.lang, self.seeds)
                ),
                prepared=str(prepared / name),
                features=str(features / name),
                output=str(self.entry.shard_path(name)),
                cache_key=self.key,
                digests=tuple(sorted(self.inputs.items())),
                settings=settings,
                runtime=runtime,
            )
            for name in missing
        ]


def plan_export(params: Params, layout: Layout) -> list[LanguageExport]:
    """Every teacher language with its key, in language order (the order locks are taken).

    Raises:
        StructkdError: a teacher was trained with another label set than the task's.
    """
    task_labels = LabelSet.load(layout.labels)
    cache = knowledge_cache(layout)
    plans = []
    seeds = params.teacher.seeds
    for lang in params.data.languages:
        for member in layout.teacher_members(lang, seeds):
            labels_path = member / "labels.json"
            task_labels.check_same(LabelSet.load(labels_path), str(labels_path))
        inputs = knowledge_inputs(layout, lang, seeds)
        names = [p.name for p in shard_paths(layout.prepared(lang, "train"))]
        key = knowledge_key(inputs, params.export)
        plans.append(LanguageExport(lang, cache.entry(lang), key, inputs, names, layout, seeds))
    return sorted(plans, key=lambda p: p.lang)


def run(
    params: Params,
    layout: Layout,
    *,
    workers: int | None = None,
    scheduler: str | None = None,
    echo: Callable[[str], None] = print,
) -> None:
    """Export the Top-K paths, marginals and emissions of every teacher (cached by content).

    Everything is checked before the cache changes: settings, label sets, and (when any shard
    must be computed) that the cluster answers with a worker; only then are stale shards removed.
    """
    from dask.distributed import as_completed
    from tqdm import tqdm

    from structkd.errors import StructkdError
    from structkd.pipeline.export import export_shard

    settings = params.export
    if workers is not None:
        check_range(field_of(ExportParams, "workers"), workers, "--workers")
    languages = plan_export(params, layout)
    with ExitStack() as stack:
        # every language's lock, in one order (no deadlock between two exports), then every
        # missing shard of every language in one submission, so all workers stay busy
        stack.enter_context(locked(language.entry for language in languages))
        diagnoses = [language.entry.diagnose(language.key) for language in languages]
        client = None
        if any(diagnosis.status != "hit" for diagnosis in diagnoses):
            client = stack.enter_context(
                _client(scheduler, workers or settings.workers, settings.timeout)
            )
        pending: dict[str, LanguageExport] = {}
        jobs: list[tuple[str, ShardJob]] = []
        for language, diagnosis in zip(languages, diagnoses, strict=True):
            lang, entry, key = language.lang, language.entry, language.key
            plan = entry.plan(
                key, inputs=language.inputs, expected=language.names, diagnosis=diagnosis
            )
            if plan.hit:
                echo(f"knowledge {lang}: up to date, no teacher run (key {key[:12]})")
                continue
            echo(
                f"knowledge {lang}: computing {len(plan.missing)} of {len(language.names)} "
                f"shards ({plan.reason})"
            )
            if not plan.missing:  # every shard verified: only the manifest was missing or stale
                entry.commit(key, language.names)
                continue
            pending[lang] = language
            jobs += [(lang, job) for job in language.jobs(plan.missing, settings, params.runtime)]
        if not jobs:
            return
        assert client is not None  # some language was not a hit
        left = Counter(lang for lang, _ in jobs)
        futures = {client.submit(export_shard, job, pure=False): lang for lang, job in jobs}
        # closed on error too, so the Error line starts on a line of its own
        with tqdm(total=len(jobs), desc="export", unit="shard", leave=False) as bar:
            for future in as_completed(futures):
                language = pending[futures[future]]
                try:
                    timing = future.result()
                except StructkdError:
                    client.cancel(list(futures))
                    raise
                language.entry.record(language.key, timing.record)
                bar.update()
                left[language.lang] -= 1
                if not left[language.lang]:
                    language.entry.commit(language.key, language.names)


@contextmanager
def _client(scheduler: str | None, workers: int, timeout: float) -> Iterator[Client]:
    """A client of the given scheduler, or of a LocalCluster of ``workers`` processes, with at
    least one worker joined within ``timeout`` seconds.

    Raises:
        StructkdError: the scheduler does not answer, or no worker joins, within ``timeout``.
    """
    from dask.distributed import Client, LocalCluster

    from structkd.errors import StructkdError

    with ExitStack() as stack:
        if scheduler:
            try:
                client = stack.enter_context(Client(scheduler, timeout=timeout))
            except (OSError, TimeoutError):  # refused or silent until the timeout
                raise StructkdError(
                    f"--scheduler {scheduler}: no dask scheduler answered within {timeout:g} s "
                    "(export.timeout)"
                ) from None
        else:
            cluster = stack.enter_context(
                LocalCluster(
                    n_workers=workers,
                    threads_per_worker=1,
                    processes=True,
                    dashboard_address=None,
                    # no fixed port 8787 (two exports at once), no worker tracebacks: a failed
                    # shard reaches the user as one Error line
                    scheduler_kwargs={"dashboard_address": ":0"},
                    silence_logs=logging.CRITICAL,
                )
            )
            client = stack.enter_context(Client(cluster))
        try:
            client.wait_for_workers(1, timeout=timeout)
        except TimeoutError:
            where = f"scheduler {scheduler}" if scheduler else "the local dask cluster"
            raise StructkdError(
                f"{where}: no worker joined within {timeout:g} s (export.timeout); "
                "start one with `dask worker <scheduler address>`"
            ) from None
        yield client
