"""Embed: frozen encoder features for every prepared split, computed once (core of ``embed``).

Writes ``data/features/<lang>/<split>/part-NNNNN.parquet`` (one features shard per prepared
shard, same rows in the same order) plus a ``manifest.json`` keyed by :func:`features_key`. A
split whose key is unchanged is not recomputed; an interrupted run recomputes only its missing
shards.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path

import numpy as np
from tqdm import tqdm

from structkd.errors import StructkdError
from structkd.pipeline.data import shard_paths
from structkd.pipeline.encoder import EncoderConfig, WordEncoder
from structkd.pipeline.layout import Layout
from structkd.pipeline.params import Params
from structkd.pipeline.runtime import setup
from structkd.storage.arrays import FeaturesArrays, PreparedArrays
from structkd.storage.cache import CacheEntry, cache_key, content_digest
from structkd.storage.manifest import ShardRecord, read_manifest
from structkd.storage.schemas import FeaturesMeta
from structkd.storage.shards import read_shard, write_table_atomic


def features_key(encoder_digest: str, prepared_digest: str) -> str:
    """The cache key of one split's features: the encoder and the prepared corpus it read."""
    return cache_key(
        teacher_digest="",
        prepared_digest=prepared_digest,
        features_digest=encoder_digest,
        settings={"table": "features"},
    )


def features_encoder(layout: Layout, lang: str) -> str:
    """The encoder digest recorded with ``lang``'s training features (what a model records).

    Raises:
        StructkdError: the features have no manifest (run ``structkd stage embed``).
    """
    directory = layout.features(lang, "train")
    manifest = read_manifest(directory)
    if manifest is None or "encoder" not in manifest.inputs:
        raise StructkdError(f"{directory}: no features manifest; run `structkd stage embed`")
    return manifest.inputs["encoder"]


def build_encoder(params: Params, layout: Layout) -> WordEncoder:
    """The frozen encoder of params.yaml ``embed``, cached under ``data/encoders``, on the
    ``runtime`` device and threads (neither is part of the features' key: see ``digest``)."""
    cfg = params.embed
    device = setup(params.runtime)
    return WordEncoder(
        EncoderConfig(
            name_or_path=cfg.encoder,
            layer=cfg.layer,
            window=cfg.window,
            batch_size=cfg.batch_size,
            dtype=cfg.dtype,
            device=str(device),
        ),
        cache_dir=layout.encoders,
    )


def run(params: Params, layout: Layout, echo: Callable[[str], None] = print) -> None:
    """Encode every prepared split of every language, unlabeled text included (cached by
    content); one line per split."""
    encoder = build_encoder(params, layout)
    digest = encoder.digest()
    meta = FeaturesMeta(dim=encoder.dim, encoder_digest=digest, layer=str(params.embed.layer))
    for lang, split in params.data.prepared_splits():
        prepared_dir = layout.prepared(lang, split)
        prepared_digest = content_digest(prepared_dir)
        entry = CacheEntry(layout.features(lang, split))
        names = [p.name for p in shard_paths(prepared_dir)]

        key = features_key(digest, prepared_digest)
        inputs = {"encoder": digest, "prepared": prepared_digest}
        compute = partial(_embed_shards, encoder, meta, prepared_dir, entry, f"{lang}/{split}")
        plan = entry.ensure(key, inputs=inputs, expected=names, compute=compute)
        done = (
            "up to date (cached)"
            if plan.hit
            else (f"{len(plan.missing)} of {len(names)} shards computed")
        )
        echo(f"features {lang}/{split}: {done}")


def _embed_shards(
    encoder: WordEncoder,
    meta: FeaturesMeta,
    prepared_dir: Path,
    entry: CacheEntry,
    name: str,
    todo: list[str],
) -> Iterator[ShardRecord]:
    """Write the features shards ``todo`` of one split, yielding each record once it is written."""
    for shard in tqdm(todo, desc=f"embed {name}", unit="shard", leave=False):
        table = read_shard(prepared_dir / shard, expect_table="prepared")
        features = _encode(encoder, PreparedArrays.from_table(table))
        yield write_table_atomic(features.to_table(meta), entry.shard_path(shard))


def _encode(encoder: WordEncoder, prepared: PreparedArrays) -> FeaturesArrays:
    """Features of one prepared shard, same rows in the same order."""
    bounds = np.concatenate([[0], np.cumsum(prepared.lengths)])
    sentences = [
        [str(w) for w in prepared.tokens[bounds[i] : bounds[i + 1]]]
        for i in range(len(prepared.sent_id))
    ]
    return FeaturesArrays(
        sent_id=prepared.sent_id,
        lengths=prepared.lengths,
        features=np.concatenate(encoder.encode(sentences)),
    )
