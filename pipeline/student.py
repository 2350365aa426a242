"""What the student stage trains from: verified knowledge joined to features, and its loss.

The student reads, per teacher language, the prepared training shards, their features and the
teacher's knowledge shards (only when the method needs knowledge, and only the columns it
needs). Knowledge is taken from the cache only when it verifies (:meth:`CacheEntry.shards`) and
was made with the task's label set and enough k-best paths.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from structkd.errors import StructkdError
from structkd.pipeline.batching import Batch
from structkd.pipeline.data import shard_paths
from structkd.pipeline.labels import LabelSet
from structkd.pipeline.layout import Layout
from structkd.pipeline.losses import KD_METHODS, lambda_at, student_loss
from structkd.pipeline.params import Method, StudentParams
from structkd.storage.cache import KnowledgeCache
from structkd.storage.schemas import KnowledgeMeta
from structkd.storage.shards import shard_metadata
from structkd.storage.stream import LanguageShards


def training_sources(
    layout: Layout, langs: Sequence[str], labels: LabelSet, method: Method, k: int
) -> tuple[list[LanguageShards], dict[str, str]]:
    """Shards of every teacher language, and the cache key of the knowledge each one uses.

    Raises:
        StructkdError: knowledge missing, stale, partial or corrupt; made with another label set;
            or holding fewer paths than the student's ``k``.
    """
    columns = KD_METHODS[method].columns
    cache = KnowledgeCache(layout.root / "knowledge")
    sources, keys = [], {}
    for lang in langs:
        knowledge = None
        if columns:
            knowledge = cache.entry(lang).shards()
            meta = KnowledgeMeta.from_metadata(shard_metadata(knowledge[0]))
            if tuple(meta.labels) != labels.labels:
                raise StructkdError(
                    f"{knowledge[0]}: teacher '{lang}' labels {list(meta.labels)} differ from the "
                    f"task's {list(labels.labels)} ({layout.labels}); re-run the pipeline"
                )
            if "topk_tags" in columns and k > meta.k:
                raise StructkdError(
                    f"student.k = {k} but the knowledge of '{lang}' holds only "
                    f"k = {meta.k} paths; raise export.k or lower student.k"
                )
            keys[lang] = meta.cache_key
        sources.append(
            LanguageShards(
                lang,
                prepared=shard_paths(layout.prepared(lang, "train")),
                features=shard_paths(layout.features(lang, "train")),
                knowledge=knowledge,
            )
        )
    return sources, keys


def batch_loss(
    net: torch.nn.Module,
    crf: torch.nn.Module,
    batch: Batch,
    epoch: int,
    method: Method,
    cfg: StudentParams,
) -> torch.Tensor:
    """``λ·L_KD + (1−λ)·L_gold`` of one batch, using the teacher's best ``cfg.k`` paths.

    ``net`` computes emissions (the tagger, or its DistributedDataParallel wrapper).
    """
    if batch.topk_tags is not None and batch.topk_tags.shape[1] > cfg.k:
        batch.topk_tags = batch.topk_tags[:, : cfg.k]
        batch.topk_scores = batch.topk_scores[:, : cfg.k]
        batch.k_valid = batch.k_valid.clamp(max=cfg.k)
    return student_loss(
        method,
        crf,
        net(batch.features, batch.mask),
        batch,
        lam=lambda_at(epoch, cfg.anneal_rate),
        temperature=cfg.temperature,
        mixture=cfg.mixture,
    )


def kd_weight(method: Method, cfg: StudentParams, epoch: int) -> float:
    """λ of an epoch as recorded in the history (0 for the baseline, which has no KD term)."""
    return 0.0 if KD_METHODS[method].kd is None else lambda_at(epoch, cfg.anneal_rate)
