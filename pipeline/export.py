"""Run a teacher (or each member of a teacher ensemble, or of several teachers labelling the
same unlabeled text) over one prepared shard and write its knowledge shard (README: knowledge
shards); several members give their exact weighted mixture (:func:`structkd.pipeline.ensemble.mix`).

The teacher network computes emissions in torch; everything structured (log Z, marginals, edge
marginals summed per sentence, exact k-best) comes from the numba kernels on the flat ragged
arrays, in float64, with one forward-backward pass per shard; the shard is validated once, as
stored.
One call is one dask task; it returns where its time went so the benchmark can report it.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from structkd.errors import InputError
from structkd.pipeline.batching import Padder, budget_batches
from structkd.pipeline.ensemble import mix, teacher_knowledge
from structkd.pipeline.models import Tagger, load_tagger
from structkd.pipeline.params import ExportParams, RuntimeParams
from structkd.pipeline.runtime import setup
from structkd.storage import ragged
from structkd.storage.arrays import FeaturesArrays, KnowledgeArrays, PreparedArrays
from structkd.storage.manifest import ShardRecord
from structkd.storage.schemas import FeaturesMeta, KnowledgeMeta
from structkd.storage.shards import read_shard, shard_metadata, write_table_atomic

TEACHER_BATCH_TOKENS = 4000


@dataclass(frozen=True)
class ShardJob:
    """One unit of export work: the teachers' members with their weights in the mixture (the
    teachers with theirs), one prepared shard and its features shard."""

    teacher_dirs: tuple[str, ...]
    weights: tuple[float, ...]
    teachers: tuple[tuple[str, float], ...]
    prepared: str
    features: str
    output: str
    cache_key: str
    digests: tuple[tuple[str, str], ...]
    settings: ExportParams
    runtime: RuntimeParams


@dataclass(frozen=True)
class ShardTiming:
    """Seconds spent in each part of a shard's export, its size, and the written shard's record."""

    record: ShardRecord
    sentences: int
    network: float
    kernels: float
    writing: float


@lru_cache(maxsize=8)
def _teacher(teacher_dir: str, mtime: float, device: torch.device) -> Tagger:
    """One loaded teacher per worker process (the mtime makes a retrained teacher reload)."""
    return load_tagger(Path(teacher_dir)).to(device)


def teacher_emissions(
    model: Tagger, tokens: np.ndarray, features: np.ndarray, lengths: np.ndarray
) -> np.ndarray:
    """Emissions ``(n_tokens, n_tags)`` float64 of flat tokens/features, batched by length."""
    padder = Padder(lengths)
    offsets = ragged.offsets(lengths)
    out = np.empty((int(offsets[-1]), model.config.n_tags), np.float64)
    for batch in budget_batches(lengths, TEACHER_BATCH_TOKENS):
        rows = np.asarray(batch, np.int64)
        feats = torch.from_numpy(padder.tokens(features, rows, dtype=np.float32))
        mask = torch.from_numpy(padder.mask(rows))
        words = [list(ragged.row(tokens, offsets, i)) for i in batch]
        with torch.inference_mode():
            scores = model.emissions(feats, mask, words).cpu().double().numpy()  # numba: CPU
        padder.unpad(scores, rows, out)
    return out


def export_shard(job: ShardJob) -> ShardTiming:
    """Compute and atomically write the knowledge shard of ``job``."""
    began = time.perf_counter()
    device = setup(job.runtime)
    models = [
        _teacher(directory, (Path(directory) / "model.safetensors").stat().st_mtime, device)
        for directory in job.teacher_dirs
    ]
    prepared = PreparedArrays.from_table(read_shard(Path(job.prepared)))
    dim = FeaturesMeta.from_metadata(shard_metadata(Path(job.features))).dim
    feats = FeaturesArrays.from_table(read_shard(Path(job.features)), dim=dim)
    if len(feats.sent_id) != len(prepared.sent_id) or not np.array_equal(
        feats.sent_id, prepared.sent_id
    ):
        raise InputError(
            job.features,
            f"has {len(feats.sent_id)} rows but {job.prepared} has {len(prepared.sent_id)} "
            "(or their sentence ids differ); re-run `structkd stage embed`",
        )
    for directory, model in zip(job.teacher_dirs, models, strict=True):
        if model.config.feature_dim != dim:  # trained on other features than today's embed
            raise InputError(
                job.features,
                f"holds features of dim {dim} but {directory} was trained on dim "
                f"{model.config.feature_dim}; retrain it on today's `structkd stage embed`",
            )
    lengths = np.asarray(prepared.lengths, np.int64)
    network, kernels = time.perf_counter() - began, 0.0  # reading counts as the network's part
    members = []
    for directory, model in zip(job.teacher_dirs, models, strict=True):
        began_member = time.perf_counter()
        emissions = teacher_emissions(model, prepared.tokens, feats.features, lengths)
        network_done = time.perf_counter()
        bad = ~np.isfinite(emissions).all(axis=1)
        if bad.any():  # the kernels would refuse them with a ValueError: name the sentence instead
            first = int(np.searchsorted(ragged.offsets(lengths)[1:], np.argmax(bad), "right"))
            raise InputError(
                f"{job.prepared}: sent_id {int(prepared.sent_id[first])}",
                f"teacher {directory}: emissions contain NaN or inf; not exported",
            )
        members.append(
            teacher_knowledge(
                emissions,
                lengths,
                model.crf.numpy_params(),
                k=job.settings.k,
                edges=job.settings.edge_marginals,
            )
        )
        network += network_done - began_member
        kernels += time.perf_counter() - network_done
    mixed_began = time.perf_counter()
    knowledge = mix(members, lengths, k=job.settings.k, weights=job.weights)
    kernels_done = time.perf_counter()
    kernels += kernels_done - mixed_began

    crf = members[0].crf  # a mixture has no CRF: the shard records its first member's
    assert crf is not None  # a member's knowledge carries its CRF
    meta = KnowledgeMeta(
        labels=models[0].labels.labels,
        transitions=crf["transitions"],
        start=crf["start"],
        end=crf["end"],
        k=job.settings.k,
        cache_key=job.cache_key,
        digests=dict(job.digests),
        teachers=dict(job.teachers),
        prepared=os.path.relpath(job.prepared, Path(job.output).parent),
        marginals_dtype=job.settings.marginals_dtype,
        emissions_dtype=job.settings.emissions_dtype,
        edge_marginals=job.settings.edge_marginals,
    )
    arrays = KnowledgeArrays(
        sent_id=prepared.sent_id,
        lengths=lengths,
        log_z=knowledge.log_z,
        topk_tags=knowledge.kbest_tags.astype(np.int16),
        topk_scores=knowledge.kbest_scores.astype(np.float32),
        k_valid=knowledge.k_valid.astype(np.int16),
        log_marginals=knowledge.log_marginals,
        emissions=knowledge.emissions,
        edge_sums=knowledge.edge_sums,
    )
    try:
        table = arrays.to_table(meta)  # validates, once, the values as stored
    except InputError as exc:
        raise InputError(
            f"{job.prepared}: {exc.where}",
            f"teacher {', '.join(job.teacher_dirs)}: {exc.problem}; not exported",
        ) from None
    record = write_table_atomic(table, Path(job.output))
    done = time.perf_counter()
    return ShardTiming(
        record=record,
        sentences=len(lengths),
        network=network,
        kernels=kernels,
        writing=done - kernels_done,
    )
