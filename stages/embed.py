"""Stage ``embed``: frozen encoder features for every prepared split, computed once.

Writes ``data/features/<lang>/<split>/part-NNNNN.parquet`` (one features shard per prepared
shard, same rows in the same order) plus a ``manifest.json`` keyed by (encoder digest, layer,
window, prepared corpus digest). A split whose key is unchanged is not recomputed; an
interrupted run recomputes only its missing shards.
"""

from __future__ import annotations

from pathlib import Path

import typer

from structkd.pipeline.layout import open_project
from structkd.stages.options import ParamsPath


def main(params_path: ParamsPath = Path("params.yaml")) -> None:
    """Encode every prepared split with the configured frozen encoder (cached by content)."""
    import numpy as np
    from tqdm import tqdm

    from structkd.pipeline.data import shard_paths
    from structkd.pipeline.encoder import EncoderConfig, WordEncoder
    from structkd.storage.arrays import FeaturesArrays, PreparedArrays
    from structkd.storage.cache import CacheEntry, cache_key, content_digest
    from structkd.storage.schemas import FeaturesMeta
    from structkd.storage.shards import read_shard, write_table_atomic

    params, layout = open_project(params_path)
    cfg = params.embed
    encoder = WordEncoder(
        EncoderConfig(
            name_or_path=cfg.encoder,
            layer=cfg.layer,
            window=cfg.window,
            batch_size=cfg.batch_size,
            dtype=cfg.dtype,
        ),
        cache_dir=layout.encoders,
    )
    meta = FeaturesMeta(dim=encoder.dim, encoder_digest=encoder.digest(), layer=str(cfg.layer))
    for lang, spec in params.data.all_languages().items():
        for split in spec.splits():
            prepared_dir = layout.prepared(lang, split)
            prepared_digest = content_digest(prepared_dir)
            key = cache_key(
                teacher_digest="",
                prepared_digest=prepared_digest,
                features_digest=encoder.digest(),
                settings={"table": "features"},
            )
            entry = CacheEntry(layout.features(lang, split))
            names = [p.name for p in shard_paths(prepared_dir)]
            with entry.lock():
                if entry.status(key) == "hit":
                    typer.echo(f"features {lang}/{split}: up to date (cached)")
                    continue
                entry.begin(key, inputs={"encoder": encoder.digest(), "prepared": prepared_digest})
                todo = entry.missing_shards(key, names)
                for name in tqdm(todo, desc=f"embed {lang}/{split}", unit="shard", leave=False):
                    prepared = PreparedArrays.from_table(
                        read_shard(prepared_dir / name, expect_table="prepared")
                    )
                    bounds = np.concatenate([[0], np.cumsum(prepared.lengths)])
                    sentences = [
                        [str(w) for w in prepared.tokens[bounds[i] : bounds[i + 1]]]
                        for i in range(len(prepared.sent_id))
                    ]
                    features = FeaturesArrays(
                        sent_id=prepared.sent_id,
                        lengths=prepared.lengths,
                        features=np.concatenate(encoder.encode(sentences)),
                    )
                    record = write_table_atomic(features.to_table(meta), entry.shard_path(name))
                    entry.record(key, record)
                entry.commit(key, names)
                typer.echo(f"features {lang}/{split}: {len(todo)} of {len(names)} shards computed")
