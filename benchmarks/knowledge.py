"""Benchmark: knowledge and features layouts on a built project (bytes, export writing, decoding).

Needs a project whose stages ran up to ``export-teachers`` (e.g. a copy of the repository with
``dvc repro export-teachers``, or the stages by hand). For every training shard of every teacher
it recomputes the teacher's emissions once (the network part, not timed) and then times, on the
same emissions, the export's structured part and its writing in two layouts:

* **v1 (reference)**, the layout of schema version 1, rebuilt here with pyarrow: per-position
  edge marginals (``(n - 1)·L²`` float16 per sentence, from ``crf_kernels.edge_marginals``, one
  forward-backward pass), float32 marginals and emissions, Parquet's default dictionary encoding.
* **v2 (current)**: what ``pipeline/export.py`` writes with the project's export settings:
  one summed L×L float32 matrix per sentence (``crf_kernels.posteriors(edge_sums=True)``),
  ``KnowledgeArrays.to_table`` with its validation, ``write_table_atomic`` (no dictionary and
  byte-stream-split for floats).

Both write with zstd, page checksums and fsync; kernels + writing = median of ``--repeats``.
"bytes/token" = the shards' file sizes over the training tokens.

Features: every features shard is read (``read_shard`` + ``FeaturesArrays.from_table``) as
written (v2: one binary value of float16 bytes per sentence) and rewritten as v1's
``list<float16>``; decode time = median of ``--repeats`` full passes.

Student data time: one epoch of ``DistillationStream`` over the training shards with structural
KD's columns (what ``train-student structural`` reads), batches built and discarded, median of
``--repeats``; run the script from another structkd version (``--stream-only``) for its figure.

Run: ``python benchmarks/knowledge.py --project DIR``.
"""

from __future__ import annotations

import argparse
import io
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from _workload import machine, median

from structkd.pipeline.data import shard_paths
from structkd.pipeline.layout import open_project


def _wall(fn: Callable[[], None], repeats: int) -> float:
    """Median wall seconds of ``repeats`` calls of ``fn``."""
    times = []
    for _ in range(repeats):
        began = time.perf_counter()
        fn()
        times.append(time.perf_counter() - began)
    return median(times)


def _timed(fn: Callable[[], tuple[float, float]], repeats: int) -> tuple[float, float]:
    """Median (kernels, writing) seconds of ``repeats`` calls of ``fn``."""
    runs = [fn() for _ in range(repeats)]
    return median([r[0] for r in runs]), median([r[1] for r in runs])


@dataclass(frozen=True)
class _Shard:
    """One training shard's inputs to the structured part of the export."""

    sent_id: np.ndarray
    lengths: np.ndarray
    emissions: np.ndarray
    kwargs: dict[str, np.ndarray]
    meta: Any
    stored: pa.Table
    log_marginals: np.ndarray  # float64, as the kernels give them (v1 stored them as float32)


def _export_v2(shard: _Shard, settings: Any, out: Path) -> tuple[float, float]:
    """The current export's kernels and writing (pipeline/export.py), in seconds."""
    from structkd.pipeline import crf_kernels
    from structkd.storage.arrays import KnowledgeArrays
    from structkd.storage.shards import write_table_atomic

    began = time.perf_counter()
    log_z, log_marginals, sums = crf_kernels.posteriors(
        **shard.kwargs, edge_sums=settings.edge_marginals
    )
    best = crf_kernels.kbest(**shard.kwargs, k=settings.k)
    kernels = time.perf_counter()
    arrays = KnowledgeArrays(
        sent_id=shard.sent_id,
        lengths=shard.lengths,
        log_z=log_z,
        topk_tags=best.kbest_tags.astype(np.int16),
        topk_scores=best.kbest_scores.astype(np.float32),
        k_valid=best.k_valid.astype(np.int16),
        log_marginals=log_marginals,
        emissions=shard.emissions,
        edge_sums=sums,
    )
    write_table_atomic(arrays.to_table(shard.meta), out)
    return kernels - began, time.perf_counter() - kernels


def _export_v1(shard: _Shard, settings: Any, out: Path) -> tuple[float, float]:
    """Version 1's kernels (one pass with per-position edges) and writing, in seconds."""
    from structkd.pipeline import crf_kernels

    began = time.perf_counter()
    edges = crf_kernels.edge_marginals(**shard.kwargs)  # log Z, marginals and edges: one pass
    crf_kernels.kbest(**shard.kwargs, k=settings.k)
    kernels = time.perf_counter()
    _write_v1(_v1_table(shard, edges), out)
    return kernels - began, time.perf_counter() - kernels


def _write_v1(table: pa.Table, path: Path) -> int:
    """Schema version 1's writer: default encodings, zstd, page checksums, fsync."""
    with open(path, "wb") as f:
        with pq.ParquetWriter(f, table.schema, compression="zstd", write_page_checksum=True) as w:
            for start in range(0, table.num_rows, 1024):
                w.write_table(table.slice(start, 1024))
        f.flush()
        os.fsync(f.fileno())
    return path.stat().st_size


def _v1_table(shard: _Shard, edges: np.ndarray) -> pa.Table:
    """The shard as version 1 stored it (float32 marginals/emissions, per-position edges)."""
    from structkd.storage.arrays import list_array

    lengths, n_tags = shard.lengths, shard.emissions.shape[1]
    names = ("sent_id", "length", "log_z", "topk_tags", "topk_scores", "k_valid")
    columns = {name: shard.stored.column(name) for name in names}
    for name in ("log_marginals", "emissions"):
        values = getattr(shard, name).astype(np.float32).reshape(-1)
        columns[name] = list_array(values, lengths * n_tags, pa.float32())
    columns["edge_marginals"] = list_array(
        edges.astype(np.float16).reshape(-1), (lengths - 1) * n_tags * n_tags, pa.float16()
    )
    return pa.table(columns)


def knowledge(root: Path, repeats: int, tmp: Path) -> None:
    """Bytes per token and kernels + writing time of v1 and v2 on every training shard."""
    from structkd.pipeline import crf_kernels
    from structkd.pipeline.export import _teacher, teacher_emissions
    from structkd.storage import ragged
    from structkd.storage.arrays import FeaturesArrays, PreparedArrays
    from structkd.storage.schemas import FeaturesMeta, KnowledgeMeta
    from structkd.storage.shards import read_shard, shard_metadata

    params, layout = open_project(root / "params.yaml")
    settings = params.export
    totals = dict.fromkeys(("tokens", "v1 bytes", "v2 bytes"), 0)
    seconds = {name: np.zeros(2) for name in ("v1", "v2")}  # kernels, writing
    for lang in params.data.languages:
        model = _teacher(str(layout.root / "models" / "teachers" / lang), 0.0)
        for path in shard_paths(layout.knowledge(lang)):
            prepared = PreparedArrays.from_table(
                read_shard(layout.prepared(lang, "train") / path.name)
            )
            features_path = layout.features(lang, "train") / path.name
            dim = FeaturesMeta.from_metadata(shard_metadata(features_path)).dim
            feats = FeaturesArrays.from_table(read_shard(features_path), dim=dim)
            lengths = np.asarray(prepared.lengths, np.int64)
            emissions = teacher_emissions(model, prepared.tokens, feats.features, lengths)
            kwargs = {
                "emissions": emissions,
                "offsets": ragged.offsets(lengths),
                **model.crf.numpy_params(),
            }
            meta = KnowledgeMeta.from_metadata(shard_metadata(path))
            log_marginals = crf_kernels.posteriors(**kwargs).log_marginals
            shard = _Shard(
                prepared.sent_id, lengths, emissions, kwargs, meta, read_shard(path), log_marginals
            )
            totals["tokens"] += int(lengths.sum())
            for name, export in (("v1", _export_v1), ("v2", _export_v2)):
                out = tmp / f"{name}.parquet"
                seconds[name] += _timed(partial(export, shard, settings, out), repeats)
                totals[f"{name} bytes"] += out.stat().st_size
    n = totals["tokens"]
    print(
        f"knowledge: {n} training tokens, K={settings.k}, L={meta.n_tags}, "
        f"marginals {settings.marginals_dtype}, emissions {settings.emissions_dtype}"
    )
    print(f"{'layout':28s} {'bytes/token':>11s} {'kernels s':>10s} {'writing s':>10s}")
    for name in ("v1", "v2"):
        label = "v1 per-position (reference)" if name == "v1" else "v2 summed (current)"
        kern, write = seconds[name]
        print(f"{label:28s} {totals[name + ' bytes'] / n:11.1f} {kern:10.3f} {write:10.3f}")
    v1, v2 = seconds["v1"], seconds["v2"]
    print(
        f"v2 smaller by {totals['v1 bytes'] / totals['v2 bytes']:.2f}x (goal >= 2.5x); writing "
        f"{v1[1] / v2[1]:.2f}x faster, kernels + writing {v1.sum() / v2.sum():.2f}x faster"
    )


def features(root: Path, repeats: int) -> None:
    """Decode time of every features shard as stored (v2) and as list<float16> (v1)."""
    from structkd.storage.arrays import FeaturesArrays
    from structkd.storage.schemas import FeaturesMeta
    from structkd.storage.shards import read_shard, shard_metadata

    params, layout = open_project(root / "params.yaml")
    blobs, stored, dims = [], [], []
    for lang in params.data.languages:
        for path in shard_paths(layout.features(lang, "train")):
            dim = FeaturesMeta.from_metadata(shard_metadata(path)).dim
            flat = FeaturesArrays.from_table(read_shard(path), dim=dim)
            lengths = np.asarray(flat.lengths, np.int64)
            offsets = pa.array((np.concatenate([[0], np.cumsum(lengths)]) * dim).astype(np.int32))
            old = pa.table(
                {
                    "sent_id": pa.array(np.asarray(flat.sent_id, np.int64)),
                    "length": pa.array(lengths.astype(np.int32)),
                    "features": pa.ListArray.from_arrays(
                        offsets, pa.array(flat.features.reshape(-1), pa.float16())
                    ),
                }
            )
            buffer = io.BytesIO()
            pq.write_table(old, buffer, compression="zstd", row_group_size=1024)
            blobs.append(buffer.getvalue())
            stored.append(path)
            dims.append(dim)

    def v1() -> None:
        for blob in blobs:
            column = pq.read_table(pa.BufferReader(blob)).column("features").combine_chunks()
            column.values.to_numpy(zero_copy_only=False)

    def v2() -> None:
        for path, dim in zip(stored, dims, strict=True):
            FeaturesArrays.from_table(read_shard(path), dim=dim)

    old_s, new_s = _wall(v1, repeats), _wall(v2, repeats)
    v2_bytes = sum(p.stat().st_size for p in stored)
    print(f"\nfeatures: {len(stored)} training shards, dim {dims[0]}")
    print(f"  v1 list<float16> (reference): {old_s:.3f} s, {sum(map(len, blobs)) / 1e6:.1f} MB")
    print(f"  v2 binary float16 (current):  {new_s:.3f} s, {v2_bytes / 1e6:.1f} MB")
    print(f"  v2 decodes {old_s / new_s:.2f}x faster")


def stream(root: Path, repeats: int) -> None:
    """One structural-KD epoch of DistillationStream: the student's data time."""
    from structkd.pipeline.batching import DistillationStream
    from structkd.pipeline.losses import KD_METHODS
    from structkd.storage.stream import LanguageShards

    params, layout = open_project(root / "params.yaml")
    sources = [
        LanguageShards(
            lang,
            shard_paths(layout.prepared(lang, "train")),
            shard_paths(layout.features(lang, "train")),
            shard_paths(layout.knowledge(lang)),
        )
        for lang in params.data.languages
    ]
    columns = KD_METHODS["structural"].columns
    data = DistillationStream(sources, knowledge_columns=columns, k=params.student.k, seed=1)

    def epoch() -> None:
        for _ in data:
            pass

    seconds = _wall(epoch, repeats)
    print(
        f"\nstudent data time, structural KD ({', '.join(columns)}): {seconds:.3f} s per "
        f"epoch of {data.total_sentences} sentences"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--project", type=Path, required=True, help="a project built to export")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--stream-only", action="store_true", help="only the student data time")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(1)
    print(f"machine: {machine()}")
    if not args.stream_only:
        with tempfile.TemporaryDirectory() as tmp:
            knowledge(args.project, args.repeats, Path(tmp))
        features(args.project, args.repeats)
    stream(args.project, args.repeats)


if __name__ == "__main__":
    main()
