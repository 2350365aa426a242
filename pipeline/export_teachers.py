"""Export: run each teacher once over its training corpus, and the chosen teachers over each
unlabeled corpus, into knowledge shards (core of ``export-teachers``).

Writes ``knowledge/<lang>/part-NNNNN.parquet`` + ``manifest.json`` per teacher language and
``knowledge/unlabeled/<lang>/`` per unlabeled corpus (the exact weighted mixture of its teachers,
:func:`structkd.pipeline.ensemble.mix`), one dask task per shard
(:func:`structkd.pipeline.export.export_shard`), every source's missing shards in one
submission, on a LocalCluster (``workers``) or an existing cluster (``scheduler``). Reuse is by
content: a source whose :func:`knowledge_key` is unchanged runs no teacher (adding a corpus
computes only it); an interrupted or corrupted export recomputes only what is missing or
broken. The locks of all sources are taken in one order, so two exports can share a cache
safely.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from structkd.errors import StructkdError
from structkd.pipeline.data import shard_paths
from structkd.pipeline.labels import LabelSet
from structkd.pipeline.layout import Layout
from structkd.pipeline.params import (
    SELF,
    UNLABELED,
    ExportParams,
    Params,
    RuntimeParams,
    check_range,
    field_of,
)
from structkd.storage.cache import CacheEntry, KnowledgeCache, cache_key, content_digest, locked

if TYPE_CHECKING:
    from dask.distributed import Client

    from structkd.pipeline.export import ShardJob


RUN_SETTINGS = ("workers", "timeout")
"""Export settings that change how the export runs, not what it writes (not in the key)."""


@dataclass(frozen=True)
class KnowledgeSource:
    """A corpus the teachers label, one cache entry: a teacher language's training split
    (labelled by its own teacher) or a language's unlabeled text (labelled by the weighted
    mixture of the teachers ``data.unlabeled`` names for it, the baseline student included).

    Attributes:
        name: the cache entry, ``<lang>`` or ``unlabeled/<lang>`` under ``knowledge/``.
        lang, split: the prepared split it labels.
        teachers: teacher language (or :data:`~structkd.pipeline.params.SELF`) -> weight
            (summing to 1), in params.yaml order.
    """

    name: str
    lang: str
    split: str
    teachers: dict[str, float]

    @property
    def own_teacher(self) -> bool:
        """A teacher language's training split: its inputs name the teacher ``teacher``."""
        return self.split == "train"

    def member_weights(self, layout: Layout, seeds: Sequence[int]) -> list[tuple[Path, float]]:
        """Every member of every labeller with its weight in the mixture: a teacher's weight
        shared equally by the members of its ensemble (the baseline student is one model)."""
        members = {teacher: layout.labeller_members(teacher, seeds) for teacher in self.teachers}
        return [
            (member, weight / len(members[teacher]))
            for teacher, weight in self.teachers.items()
            for member in members[teacher]
        ]

    @property
    def self_trained(self) -> bool:
        """The baseline student is among the labellers (the export then needs it trained)."""
        return SELF in self.teachers


def knowledge_sources(params: Params) -> list[KnowledgeSource]:
    """Every teacher language's training split, then every unlabeled corpus."""
    data = params.data
    return [
        *(KnowledgeSource(lang, lang, "train", {lang: 1.0}) for lang in data.languages),
        *(
            KnowledgeSource(f"{UNLABELED}/{lang}", lang, UNLABELED, data.unlabeled_weights(lang))
            for lang in data.unlabeled
        ),
    ]


def knowledge_inputs(
    layout: Layout, source: KnowledgeSource, seeds: Sequence[int]
) -> dict[str, str]:
    """Digests of what a source's knowledge is made from (stored in its manifest and shards).

    A member of a teacher ensemble is ``teacher`` / ``teacher_config`` (the first, seed
    ``seeds[0]``) and ``teacher@seed-<s>`` / ``teacher_config@seed-<s>`` for the others, so a
    single teacher's inputs, and hence its key, are what they were before ensembles; over
    unlabeled text each teacher's members carry its language, ``teacher[<lang>]@seed-<s>``, and
    the baseline student is ``teacher[student]``.
    """
    inputs = {}
    for teacher in source.teachers:
        name = "" if source.own_teacher else f"[{teacher}]"
        for i, member in enumerate(layout.labeller_members(teacher, seeds)):
            tag = name + (f"@seed-{seeds[i]}" if i else "")
            inputs[f"teacher{tag}"] = content_digest(member / "model.safetensors")
            inputs[f"teacher_config{tag}"] = content_digest(member / "config.json")
    return {
        **inputs,
        "prepared": content_digest(layout.prepared(source.lang, source.split)),
        "features": content_digest(layout.features(source.lang, source.split)),
    }


def teacher_members(inputs: Mapping[str, str]) -> list[str]:
    """The member tags of the inputs: ``""`` for a language's own first teacher, then
    ``"@seed-<s>"``, ``"[<lang>]"``, ``"[<lang>]@seed-<s>"`` sorted."""
    tags = [
        name.removeprefix("teacher")
        for name in inputs
        if name.startswith("teacher") and not name.startswith("teacher_config")
    ]
    return sorted(tags, key=lambda tag: (tag != "", tag))


def knowledge_key(
    inputs: Mapping[str, str], settings: ExportParams, source: KnowledgeSource
) -> str:
    """The cache key of a source's knowledge: its inputs, the export settings, the schema and,
    over unlabeled text, the teachers' weights.

    The student recomputes it to refuse knowledge a retrained teacher has made stale.
    """
    weights = {} if source.own_teacher else {"weights": source.teachers}
    return cache_key(
        teacher_digest="".join(
            inputs[f"teacher{tag}"] + inputs[f"teacher_config{tag}"]
            for tag in teacher_members(inputs)
        ),
        prepared_digest=inputs["prepared"],
        features_digest=inputs["features"],
        settings={
            **{k: v for k, v in asdict(settings).items() if k not in RUN_SETTINGS},
            **weights,
        },
    )


def knowledge_cache(layout: Layout) -> KnowledgeCache:
    """The ``knowledge/`` cache of the project."""
    return KnowledgeCache(layout.root / "knowledge")


@dataclass(frozen=True)
class SourceExport:
    """One knowledge source: its cache entry and key, and where its inputs are."""

    source: KnowledgeSource
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

        source = self.source
        prepared = self.layout.prepared(source.lang, source.split)
        features = self.layout.features(source.lang, source.split)
        members = source.member_weights(self.layout, self.seeds)
        return [
            ShardJob(
                teacher_dirs=tuple(str(d) for d, _ in members),
                weights=tuple(w for _, w in members),
                teachers=tuple(source.teachers.items()),
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


def plan_export(params: Params, layout: Layout) -> list[SourceExport]:
    """Every knowledge source with its key, in entry order (the order locks are taken).

    Raises:
        StructkdError: a teacher (or the baseline student labelling text) was trained with
            another label set than the task's, or the baseline student is not trained yet.
    """
    task_labels = LabelSet.load(layout.labels)
    cache = knowledge_cache(layout)
    seeds = params.teacher.seeds
    sources = knowledge_sources(params)
    labellers = [m for lang in params.data.languages for m in layout.teacher_members(lang, seeds)]
    if any(source.self_trained for source in sources):
        baseline = layout.student("baseline")
        if not (baseline / "model.safetensors").is_file():
            raise StructkdError(
                f"{baseline}: no baseline student, which data.unlabeled names as a labeller "
                f"({SELF!r}); run `structkd stage train-student baseline` first"
            )
        labellers.append(baseline)
    for member in labellers:
        labels_path = member / "labels.json"
        task_labels.check_same(LabelSet.load(labels_path), str(labels_path))
    plans = []
    for source in sources:
        inputs = knowledge_inputs(layout, source, seeds)
        names = [p.name for p in shard_paths(layout.prepared(source.lang, source.split))]
        key = knowledge_key(inputs, params.export, source)
        entry = cache.entry(source.name)
        plans.append(SourceExport(source, entry, key, inputs, names, layout, seeds))
    return sorted(plans, key=lambda p: p.source.name)


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

    from structkd.pipeline.export import export_shard

    settings = params.export
    if workers is not None:
        check_range(field_of(ExportParams, "workers"), workers, "--workers")
    sources = plan_export(params, layout)
    with ExitStack() as stack:
        # every language's lock, in one order (no deadlock between two exports), then every
        # missing shard of every language in one submission, so all workers stay busy
        stack.enter_context(locked(export.entry for export in sources))
        diagnoses = [export.entry.diagnose(export.key) for export in sources]
        client = None
        if any(diagnosis.status != "hit" for diagnosis in diagnoses):
            client = stack.enter_context(
                _client(scheduler, workers or settings.workers, settings.timeout)
            )
        pending: dict[str, SourceExport] = {}
        jobs: list[tuple[str, ShardJob]] = []
        for export, diagnosis in zip(sources, diagnoses, strict=True):
            name, entry, key = export.source.name, export.entry, export.key
            plan = entry.plan(key, inputs=export.inputs, expected=export.names, diagnosis=diagnosis)
            if plan.hit:
                echo(f"knowledge {name}: up to date, no teacher run (key {key[:12]})")
                continue
            echo(
                f"knowledge {name}: computing {len(plan.missing)} of {len(export.names)} "
                f"shards ({plan.reason})"
            )
            if not plan.missing:  # every shard verified: only the manifest was missing or stale
                entry.commit(key, export.names)
                continue
            pending[name] = export
            jobs += [(name, job) for job in export.jobs(plan.missing, settings, params.runtime)]
        if not jobs:
            return
        assert client is not None  # some source was not a hit
        left = Counter(name for name, _ in jobs)
        futures = {client.submit(export_shard, job, pure=False): name for name, job in jobs}
        # closed on error too, so the Error line starts on a line of its own
        with tqdm(total=len(jobs), desc="export", unit="shard", leave=False) as bar:
            for future in as_completed(futures):
                export = pending[futures[future]]
                try:
                    timing = future.result()
                except StructkdError:
                    client.cancel(list(futures))
                    raise
                export.entry.record(export.key, timing.record)
                bar.update()
                left[export.source.name] -= 1
                if not left[export.source.name]:
                    export.entry.commit(export.key, export.names)


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
