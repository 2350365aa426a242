"""Stage ``train-teacher LANG``: the monolingual BiLSTM-CRF teacher of one language.

Reads ``data/prepared/<lang>`` and ``data/features/<lang>``; writes ``models/teachers/<lang>/``
(config.json, model.safetensors, labels.json, checkpoint.pt, history.csv, metrics.json).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from structkd.pipeline.layout import open_project
from structkd.stages.options import ParamsPath


def main(
    lang: Annotated[str, typer.Argument(help="Teacher language (a key of data.languages).")],
    params_path: ParamsPath = Path("params.yaml"),
    resume: Annotated[bool, typer.Option(help="Continue from the last checkpoint.")] = False,
) -> None:
    """Train the teacher of LANG on its own language: shared features + own word/char embeddings."""
    import torch

    from structkd.errors import ConfigError
    from structkd.pipeline.data import iterate, load_split
    from structkd.pipeline.evaluation import evaluate_split
    from structkd.pipeline.labels import LabelSet
    from structkd.pipeline.metrics import headline
    from structkd.pipeline.models import (
        Tagger,
        TaggerConfig,
        build_vocabularies,
        load_tagger,
        save_tagger,
    )
    from structkd.pipeline.predictor import encoder_settings
    from structkd.pipeline.training import fit, run_fingerprint, write_json

    params, layout = open_project(params_path)
    if lang not in params.data.languages:
        known = ", ".join(params.data.languages)
        raise ConfigError(f"{params_path}: '{lang}' is not a teacher language (have: {known})")
    cfg = params.teacher
    labels = LabelSet.load(layout.labels)
    splits = {
        name: load_split(layout.prepared(lang, name), layout.features(lang, name), lang, name)
        for name in ("train", "dev", "test")
    }
    words, chars = build_vocabularies(splits["train"].tokens, cfg.min_word_count)
    config = TaggerConfig(
        feature_dim=splits["train"].features[0].shape[1],
        n_tags=len(labels.labels),
        hidden=cfg.hidden,
        dropout=cfg.dropout,
        words=words,
        chars=chars,
        word_dim=cfg.word_dim,
        char_dim=cfg.char_dim,
        char_hidden=cfg.char_hidden,
        extra=encoder_settings(params.embed, layout.encoders),  # so `structkd predict` can run it
    )
    torch.manual_seed(cfg.seed)
    model = Tagger(config, labels)
    out = layout.teacher(lang)
    fingerprint = run_fingerprint(cfg, labels.digest(), len(splits["train"]))

    def loss(batch, epoch: int) -> torch.Tensor:  # noqa: ANN001 - a data.Batch
        emissions = model.emissions(batch.features, batch.mask, batch.tokens)
        return model.crf.nll(emissions, batch.tags, batch.mask)

    fit(
        model,
        params=cfg,
        batches=lambda epoch: iterate(splits["train"], cfg.max_tokens, epoch=epoch, seed=cfg.seed),
        loss_fn=loss,
        dev_score=lambda: headline(evaluate_split(model, splits["dev"])),
        save_best=lambda: save_tagger(model, out),
        out_dir=out,
        resume=resume,
        fingerprint=fingerprint,
        desc=f"teacher {lang}",
    )
    best = load_tagger(out)
    metrics = {name: evaluate_split(best, splits[name]) for name in ("dev", "test")}
    write_json({"lang": lang, **metrics}, out / "metrics.json")
    typer.echo(
        f"teacher {lang}: dev {headline(metrics['dev']):.2f} test {headline(metrics['test']):.2f}"
    )
