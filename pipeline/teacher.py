"""Teacher: the monolingual BiLSTM-CRF of one language (core of ``train-teacher LANG``).

Reads ``data/prepared/<lang>`` and ``data/features/<lang>``; writes ``models/teachers/<lang>/``
(config.json, model.safetensors, labels.json, checkpoint.pt, history.csv, metrics.json).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch

from structkd.errors import ConfigError
from structkd.pipeline.data import Batch, Split, iterate
from structkd.pipeline.embed import features_encoder
from structkd.pipeline.evaluation import load_splits
from structkd.pipeline.labels import LabelSet
from structkd.pipeline.layout import Layout
from structkd.pipeline.metrics import headline
from structkd.pipeline.models import Tagger, TaggerConfig, build_vocabularies
from structkd.pipeline.params import Params, TeacherParams
from structkd.pipeline.predictor import encoder_settings
from structkd.pipeline.training import run_fingerprint, train_tagger


@dataclass(frozen=True)
class TeacherObjective:
    """Gold CRF NLL on the teacher's own training split."""

    model: Tagger
    train: Split
    cfg: TeacherParams
    lang: str

    def batches(self, epoch: int) -> Iterator[Batch]:
        return iterate(self.train, self.cfg.max_tokens, epoch=epoch, seed=self.cfg.seed)

    def loss(self, batch: Batch, epoch: int) -> torch.Tensor:
        emissions = self.model.emissions(batch.features, batch.mask, batch.tokens)
        return self.model.crf.nll(emissions, batch.tags, batch.mask)

    def kd_weight(self, epoch: int) -> float:
        return 0.0

    def trust(self, epoch: int) -> dict[str, float]:
        return {}

    def summary(
        self, dev: dict[str, dict[str, float]], test: dict[str, dict[str, float]]
    ) -> dict[str, Any]:
        return {"lang": self.lang, "dev": dev[self.lang], "test": test[self.lang]}


def run(
    params: Params, layout: Layout, lang: str, *, resume: bool = False, where: str = "params.yaml"
) -> str:
    """Train the teacher of ``lang``; returns its one-line result (dev and test score).

    Raises:
        ConfigError: ``lang`` is not a teacher language (``where``: the params file named).
    """
    if lang not in params.data.languages:
        known = ", ".join(params.data.languages)
        raise ConfigError(f"{where}: '{lang}' is not a teacher language (have: {known})")
    cfg = params.teacher
    labels = LabelSet.load(layout.labels)
    train = load_splits(layout, [lang], "train")[lang]
    dev, test = load_splits(layout, [lang], "dev"), load_splits(layout, [lang], "test")
    words, chars = build_vocabularies(train.tokens, cfg.min_word_count)
    config = TaggerConfig(
        feature_dim=train.features[0].shape[1],
        n_tags=len(labels.labels),
        hidden=cfg.hidden,
        dropout=cfg.dropout,
        words=words,
        chars=chars,
        word_dim=cfg.word_dim,
        char_dim=cfg.char_dim,
        char_hidden=cfg.char_hidden,
        extra=encoder_settings(params.embed, features_encoder(layout, lang)),  # for `predict`
    )
    torch.manual_seed(cfg.seed)
    model = Tagger(config, labels)
    metrics = train_tagger(
        model,
        TeacherObjective(model, train, cfg, lang),
        params=cfg,
        dev=dev,
        test=test,
        out=layout.teacher(lang),
        fingerprint=run_fingerprint(cfg, labels.digest(), len(train)),
        resume=resume,
        desc=f"teacher {lang}",
    )
    assert metrics is not None  # one process: always the main one
    dev_score, test_score = headline(metrics["dev"]), headline(metrics["test"])
    return f"teacher {lang}: dev {dev_score:.2f} test {test_score:.2f}"
