"""Stage ``train-student METHOD``: one multilingual BiLSTM-CRF from gold labels + teacher knowledge.

Streams ``data/features/<lang>/train`` zipped with ``data/prepared/<lang>/train`` and the verified
``knowledge/<lang>`` shards of every teacher language (only the columns METHOD needs), and trains
with ``λ·L_KD + (1−λ)·L_gold``, λ falling by ``anneal_rate`` percent per epoch (paper §4.1).
Model selection on the concatenated dev sets of all languages (micro score, as the paper).
Writes ``models/students/<method>/`` (model, checkpoint.pt, history.csv, metrics.json).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Annotated

import typer

from structkd.pipeline.layout import open_project
from structkd.pipeline.params import Method
from structkd.stages.options import ParamsPath


def main(
    method: Annotated[Method, typer.Argument(help="Distillation method.")],
    params_path: ParamsPath = Path("params.yaml"),
    resume: Annotated[bool, typer.Option(help="Continue from the last checkpoint.")] = False,
) -> None:
    """Train the multilingual student with METHOD on all teacher languages at once."""
    import numpy as np
    import torch

    from structkd.pipeline import distributed
    from structkd.pipeline.batching import Batch, DistillationStream
    from structkd.pipeline.data import load_split
    from structkd.pipeline.evaluation import evaluate_split, predict_split
    from structkd.pipeline.labels import LabelSet
    from structkd.pipeline.losses import KD_METHODS
    from structkd.pipeline.metrics import headline, score
    from structkd.pipeline.models import Tagger, TaggerConfig, load_tagger, save_tagger
    from structkd.pipeline.predictor import encoder_settings
    from structkd.pipeline.student import batch_loss, kd_weight, training_sources
    from structkd.pipeline.training import fit, run_fingerprint, write_json

    params, layout = open_project(params_path)
    rank, _ = distributed.init_from_env()
    cfg = params.student
    labels = LabelSet.load(layout.labels)
    langs = list(params.data.languages)
    sources, knowledge_keys = training_sources(layout, langs, labels, method, cfg.k)
    stream = DistillationStream(
        sources,
        max_tokens=cfg.max_tokens,
        knowledge_columns=KD_METHODS[method].columns,
        seed=cfg.seed,
        buffer_size=cfg.shuffle_buffer,
    )
    dev = {
        lang: load_split(layout.prepared(lang, "dev"), layout.features(lang, "dev"), lang, "dev")
        for lang in langs
    }

    config = TaggerConfig(
        feature_dim=stream.dim,
        n_tags=labels.n_tags,
        hidden=cfg.hidden,
        dropout=cfg.dropout,
        extra={**encoder_settings(params.embed, layout.encoders), "method": method},
    )
    torch.manual_seed(cfg.seed)
    model = Tagger(config, labels)
    out = layout.student(method)
    fingerprint = run_fingerprint(cfg, method, labels.digest(), knowledge_keys)
    net, join = distributed.wrap(model)

    def batches(epoch: int) -> Iterator[Batch]:
        stream.set_epoch(epoch)
        return iter(stream)

    def dev_score() -> float:
        gold = [t for split in dev.values() for t in split.tags]
        predicted = [p for split in dev.values() for p in predict_split(model, split)]
        return headline(score(gold, predicted, labels, next(iter(dev.values())).scheme))

    fit(
        model,
        params=cfg,
        batches=batches,
        loss_fn=lambda batch, epoch: batch_loss(net, model.crf, batch, epoch, method, cfg),
        dev_score=dev_score,
        save_best=lambda: save_tagger(model, out),
        out_dir=out,
        resume=resume,
        fingerprint=fingerprint,
        kd_weight=lambda epoch: kd_weight(method, cfg, epoch),
        desc=f"student {method}",
        join=join,
        main_process=rank == 0,
    )
    distributed.finish()
    if rank != 0:
        return
    best = load_tagger(out)
    metrics = {"method": method, "dev": {}, "test": {}}
    for lang in langs:
        test = load_split(
            layout.prepared(lang, "test"), layout.features(lang, "test"), lang, "test"
        )
        metrics["dev"][lang] = headline(evaluate_split(best, dev[lang]))
        metrics["test"][lang] = headline(evaluate_split(best, test))
    metrics["test"]["avg"] = float(np.mean([metrics["test"][lang] for lang in langs]))
    write_json(metrics, out / "metrics.json")
    typer.echo(
        f"student {method}: test " + " ".join(f"{k} {v:.2f}" for k, v in metrics["test"].items())
    )
