"""Student: one multilingual BiLSTM-CRF from gold labels + teacher knowledge (core of
``train-student METHOD``).

Streams ``data/features/<lang>/train`` zipped with ``data/prepared/<lang>/train`` and the verified
``knowledge/<lang>`` shards of every teacher language (only when the method needs knowledge, and
only the columns it needs), and trains with ``λ·L_KD + (1−λ)·L_gold``, λ falling by
``anneal_rate`` percent per epoch (paper §4.1). Unlabeled text (``data.unlabeled``, its
``knowledge/unlabeled/<lang>`` the mixture of its teachers) is in the same stream with
``unlabeled_weight·L_KD`` and no gold term; the baseline ignores it. Model selection on the
concatenated dev sets of all languages (micro score, as the paper). Writes
``models/students/<method>/`` (model, checkpoint.pt, history.csv, metrics.json).

Knowledge is taken from the cache only under the key the export would compute today
(:func:`~structkd.pipeline.export_teachers.knowledge_key`), so a teacher retrained by hand
without a new export is refused, not silently distilled; it must also verify and have been made
with the task's label set and enough k-best paths.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from structkd.errors import StructkdError
from structkd.pipeline import distributed
from structkd.pipeline.batching import Batch, DistillationStream
from structkd.pipeline.data import Split, shard_paths
from structkd.pipeline.embed import features_encoder
from structkd.pipeline.evaluation import evaluate_splits, load_splits
from structkd.pipeline.export_teachers import (
    KnowledgeSource,
    knowledge_cache,
    knowledge_inputs,
    knowledge_key,
    knowledge_sources,
)
from structkd.pipeline.labels import LabelSet
from structkd.pipeline.layout import Layout
from structkd.pipeline.losses import KD_METHODS, lambda_at, sentence_weighted_loss, student_loss
from structkd.pipeline.metrics import headline
from structkd.pipeline.models import Tagger, TaggerConfig
from structkd.pipeline.params import Method, Params, StudentParams
from structkd.pipeline.predictor import encoder_settings
from structkd.pipeline.runtime import setup
from structkd.pipeline.training import run_fingerprint, train_tagger
from structkd.storage.cache import CacheEntry
from structkd.storage.schemas import KnowledgeMeta
from structkd.storage.shards import shard_metadata
from structkd.storage.stream import LanguageShards


def distilled_sources(params: Params, method: Method) -> list[KnowledgeSource]:
    """The knowledge sources the student of ``method`` trains on: every teacher language's
    training split and, for a method with a KD term and ``student.unlabeled_weight`` > 0, every
    unlabeled corpus (the baseline has nothing to learn from text without labels)."""
    unlabeled = KD_METHODS[method].kd is not None and params.student.unlabeled_weight > 0
    return [s for s in knowledge_sources(params) if s.own_teacher or unlabeled]


def training_sources(
    layout: Layout, params: Params, labels: LabelSet, method: Method
) -> tuple[list[LanguageShards], dict[str, str]]:
    """Shards of every source of :func:`distilled_sources`, and the cache key of the knowledge
    each one uses.

    ``params`` gives the sources, the student's ``k`` and what the knowledge key the student
    expects is made of (the teachers' members, the export settings).

    Raises:
        StructkdError: knowledge missing, stale (its teacher, corpus, features or the export
            settings changed since the export), partial or corrupt; made with another label
            set; or holding fewer paths than the student's ``k``.
    """
    columns, k = KD_METHODS[method].columns, params.student.k
    cache = knowledge_cache(layout)
    sources, keys = [], {}
    for source in distilled_sources(params, method):
        knowledge = None
        if columns:
            knowledge = current_knowledge(cache.entry(source.name), source, layout, params)
            meta = KnowledgeMeta.from_metadata(shard_metadata(knowledge[0]))
            if tuple(meta.labels) != labels.labels:
                raise StructkdError(
                    f"{knowledge[0]}: knowledge '{source.name}' labels {list(meta.labels)} "
                    f"differ from the task's {list(labels.labels)} ({layout.labels}); "
                    "re-run the pipeline"
                )
            if "topk_tags" in columns and k > meta.k:
                raise StructkdError(
                    f"student.k = {k} but the knowledge of '{source.name}' holds only "
                    f"k = {meta.k} paths; raise export.k or lower student.k"
                )
            keys[source.name] = meta.cache_key
        sources.append(
            LanguageShards(
                source.lang,
                prepared=shard_paths(layout.prepared(source.lang, source.split)),
                features=shard_paths(layout.features(source.lang, source.split)),
                knowledge=knowledge,
                split=source.split,
            )
        )
    return sources, keys


def current_knowledge(
    entry: CacheEntry, source: KnowledgeSource, layout: Layout, params: Params
) -> list[Path]:
    """The knowledge shards of ``source`` if they were made from today's teachers and inputs.

    Raises:
        StructkdError: stale (one line naming the source), or not a verified hit.
    """
    inputs = knowledge_inputs(layout, source, params.teacher.seeds)
    key = knowledge_key(inputs, params.export, source)
    diagnosis = entry.diagnose(key)
    if diagnosis.status == "stale":
        raise StructkdError(
            f"knowledge of '{source.name}' is stale: it was exported from another teacher, "
            f"corpus, features, export settings or schema ({diagnosis.problems[0]}); "
            "run `structkd stage export-teachers`"
        )
    return entry.hit_shards(diagnosis)


def trust_weight(teacher_dev: float, student_dev: float, margin: float) -> float:
    """A language's factor of λ: ``clip((teacher_dev − student_dev) / margin, 0, 1)``."""
    return min(1.0, max(0.0, (teacher_dev - student_dev) / margin))


def teacher_dev_scores(
    layout: Layout, langs: Sequence[str], seeds: Sequence[int]
) -> dict[str, float]:
    """Each teacher's dev score from its ``metrics.json``; of an ensemble, its members' mean.

    Raises:
        StructkdError: a teacher's metrics are missing or unreadable.
    """
    scores = {}
    for lang in langs:
        members = []
        for member in layout.teacher_members(lang, seeds):
            path = member / "metrics.json"
            try:
                members.append(headline(json.loads(path.read_text(encoding="utf-8"))["dev"]))
            except (OSError, ValueError, KeyError, TypeError) as exc:
                raise StructkdError(
                    f"{path}: no teacher dev score ({exc}); student.trust: dev needs the "
                    "teachers' metrics (run `structkd stage train-teacher`)"
                ) from None
        scores[lang] = sum(members) / len(members)
    return scores


@dataclass
class Trust:
    """Trust per language: λ scaled by how much each teacher beats the student on its dev set.

    The weights of epoch e come from the student as it starts the epoch (the model of epoch
    e − 1; a resumed run reloads exactly that one, so it measures the same weights); before the
    first epoch there is no student to measure and every weight is 1.
    """

    model: Tagger
    dev: Mapping[str, Split]
    teacher_dev: Mapping[str, float]
    margin: float
    _weights: dict[int, dict[str, float]] = field(default_factory=dict)

    def weights(self, epoch: int) -> dict[str, float]:
        """``{lang: w_l}`` of ``epoch`` (measured once per epoch)."""
        if epoch not in self._weights:
            if epoch == 0:
                self._weights[epoch] = dict.fromkeys(self.dev, 1.0)
            else:
                scores = evaluate_splits(self.model, self.dev)
                self._weights[epoch] = {
                    lang: trust_weight(self.teacher_dev[lang], headline(scores[lang]), self.margin)
                    for lang in self.dev
                }
        return self._weights[epoch]


@dataclass(frozen=True)
class StudentObjective:
    """``λ·L_KD + (1−λ)·L_gold`` over the distillation stream of every teacher language, and
    ``unlabeled_weight·L_KD`` over its unlabeled text (no gold, not annealed).

    Batches are moved to ``model``'s device (knowledge columns included). ``lam``
    None anneals λ as the paper (:func:`lambda_at`); a number fixes it (the benchmark).
    ``trust`` scales the KD weight per teacher (``student.trust: dev``): a training split by its
    own teacher's trust, unlabeled text by the weighted mean of the trust of the teachers whose
    mixture labels it; None gives every teacher 1. ``sources`` are the stream's sources in
    order (:func:`distilled_sources`), needed with trust or unlabeled text; without them every
    sentence has λ.
    """

    model: Tagger
    stream: DistillationStream
    method: Method
    cfg: StudentParams
    lam: float | None = None
    trust_by_language: Trust | None = None
    sources: Sequence[KnowledgeSource] = ()

    def batches(self, epoch: int) -> Iterator[Batch]:
        self.trust(epoch)  # measured before the epoch's first step changes the student
        self.stream.set_epoch(epoch)
        return iter(self.stream)

    def loss(self, batch: Batch, epoch: int) -> torch.Tensor:
        batch = batch.to(self.model.device)
        return self.loss_from(self.emissions(batch), batch, epoch)

    def emissions(self, batch: Batch) -> torch.Tensor:
        """The student network's emissions of a batch (the part of :meth:`loss` before the CRF)."""
        return self.model(batch.features, batch.mask)

    def loss_from(self, emissions: torch.Tensor, batch: Batch, epoch: int) -> torch.Tensor:
        """The loss of a batch given its emissions (the stream already kept ``cfg.k`` paths)."""
        cfg = self.cfg
        lam = lambda_at(epoch, cfg.anneal_rate) if self.lam is None else self.lam
        per_source = self.source_weights(epoch, lam)
        if per_source is None:
            return student_loss(
                self.method,
                self.model.crf,
                emissions,
                batch,
                lam=lam,
                temperature=cfg.temperature,
                mixture=cfg.mixture,
            )
        assert batch.lang is not None  # streamed batches know each sentence's source
        lams, weights = per_source
        rows = batch.lang.cpu()
        return sentence_weighted_loss(
            self.method,
            self.model.crf,
            emissions,
            batch,
            lams=lams[rows],
            weights=weights[rows],
            temperature=cfg.temperature,
            mixture=cfg.mixture,
        )

    def source_weights(self, epoch: int, lam: float) -> tuple[torch.Tensor, torch.Tensor] | None:
        """``(λ, weight)`` of each stream source's sentences in ``epoch``: a training split
        ``(λ·t, 1)``, unlabeled text ``(1, unlabeled_weight·t)``, t the trust of its teachers;
        None when every sentence has ``(λ, 1)`` (no trust, no unlabeled text)."""
        trust = self.trust(epoch)
        if not trust and all(source.own_teacher for source in self.sources):
            return None
        lams, weights = [], []
        for source in self.sources:
            factor = sum(w * trust.get(t, 1.0) for t, w in source.teachers.items())
            lams.append(lam * factor if source.own_teacher else 1.0)
            weights.append(1.0 if source.own_teacher else self.cfg.unlabeled_weight * factor)
        return torch.tensor(lams, dtype=torch.float64), torch.tensor(weights, dtype=torch.float64)

    def trust(self, epoch: int) -> dict[str, float]:
        """Each teacher language's trust in ``epoch`` (empty without trust or KD)."""
        if self.trust_by_language is None or KD_METHODS[self.method].kd is None:
            return {}
        return self.trust_by_language.weights(epoch)

    def kd_weight(self, epoch: int) -> float:
        """λ of an epoch as recorded in the history (0 for the baseline, which has no KD term)."""
        no_kd = KD_METHODS[self.method].kd is None
        return 0.0 if no_kd else lambda_at(epoch, self.cfg.anneal_rate)

    def summary(
        self, dev: dict[str, dict[str, float]], test: dict[str, dict[str, float]]
    ) -> dict[str, Any]:
        tests = {lang: headline(scores) for lang, scores in test.items()}
        return {
            "method": self.method,
            "dev": {lang: headline(scores) for lang, scores in dev.items()},
            "test": {**tests, "avg": float(np.mean(list(tests.values())))},
        }


def student_stream(
    sources: Sequence[LanguageShards], method: Method, cfg: StudentParams
) -> DistillationStream:
    """The stream of ``method``: only the columns it reads, and the best ``cfg.k`` paths."""
    columns = KD_METHODS[method].columns
    return DistillationStream(
        sources,
        max_tokens=cfg.max_tokens,
        knowledge_columns=columns,
        k=cfg.k if "topk_tags" in columns else None,
        seed=cfg.seed,
        buffer_size=cfg.shuffle_buffer,
    )


def train_student(
    params: Params, layout: Layout, method: Method, *, resume: bool = False
) -> dict[str, Any] | None:
    """Train the multilingual student with ``method``; its metrics (None on ranks other than 0)."""
    rank, _, device = distributed.init_from_env(setup(params.runtime))
    cfg = params.student
    labels = LabelSet.load(layout.labels)
    langs = list(params.data.languages)
    shards, knowledge_keys = training_sources(layout, params, labels, method)
    stream = student_stream(shards, method, cfg)
    dev, test = load_splits(layout, langs, "dev"), load_splits(layout, langs, "test")
    config = TaggerConfig(
        feature_dim=stream.dim,
        n_tags=labels.n_tags,
        hidden=cfg.hidden,
        dropout=cfg.dropout,
        extra={
            **encoder_settings(params.embed, features_encoder(layout, langs[0])),
            "method": method,
        },
    )
    torch.manual_seed(cfg.seed)
    model = Tagger(config, labels).to(device)  # initialised on CPU: same on every device
    trust = None
    if cfg.trust == "dev" and KD_METHODS[method].kd is not None:
        teacher_dev = teacher_dev_scores(layout, langs, params.teacher.seeds)
        trust = Trust(model, dev, teacher_dev, cfg.trust_margin)
    objective = StudentObjective(
        model,
        stream,
        method,
        cfg,
        trust_by_language=trust,
        sources=distilled_sources(params, method),
    )
    loss, join = distributed.wrap(
        model, objective.loss, find_unused_parameters=not KD_METHODS[method].touches_crf
    )
    return train_tagger(
        model,
        objective,
        params=cfg,
        dev=dev,
        test=test,
        out=layout.student(method),
        fingerprint=run_fingerprint(cfg, method, labels.digest(), knowledge_keys),
        resume=resume,
        desc=f"student {method}",
        loss=loss,
        join=join,
        main_process=rank == 0,
    )


def run(params: Params, layout: Layout, method: Method, *, resume: bool = False) -> str | None:
    """Train the student of ``method``; its one-line result (None on ranks other than 0)."""
    metrics = train_student(params, layout, method, resume=resume)
    if metrics is None:
        return None
    scores = " ".join(f"{k} {v:.2f}" for k, v in metrics["test"].items())
    return f"student {method}: test {scores}"
