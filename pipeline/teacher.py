"""Teacher: the monolingual BiLSTM-CRF of one language (core of ``train-teacher LANG``).

Reads ``data/prepared/<lang>`` and ``data/features/<lang>``; writes ``models/teachers/<lang>/``
(config.json, model.safetensors, labels.json, checkpoint.pt, history.csv, metrics.json) and, for
an ensemble (``teacher.ensemble`` > 1), every further member in ``members/seed-<s>/``. The
folder is replaced as a whole once every member has trained.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import Any

import torch

from structkd.errors import ConfigError
from structkd.pipeline.data import Batch, Split, iterate
from structkd.pipeline.embed import features_encoder
from structkd.pipeline.evaluation import load_splits
from structkd.pipeline.labels import LabelSet
from structkd.pipeline.layout import Layout, member_folders
from structkd.pipeline.metrics import headline
from structkd.pipeline.models import Tagger, TaggerConfig, build_vocabularies
from structkd.pipeline.params import Params, TeacherParams
from structkd.pipeline.predictor import encoder_settings
from structkd.pipeline.runtime import setup
from structkd.pipeline.training import (
    CHECKPOINT,
    keep_interrupted,
    run_fingerprint,
    train_tagger,
)
from structkd.storage.io import replace_dir, staging_dir


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
        batch = batch.to(self.model.device)
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
    """Train every member of the teacher of ``lang``; returns one line with each member's dev and
    test score (and their mean, for an ensemble).

    Raises:
        ConfigError: ``lang`` is not a teacher language (``where``: the params file named).
    """
    if lang not in params.data.languages:
        known = ", ".join(params.data.languages)
        raise ConfigError(f"{where}: '{lang}' is not a teacher language (have: {known})")
    cfg = params.teacher
    device = setup(params.runtime)
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
    # every member trains inside one staging tree that replaces the teacher's folder as a whole
    # once all are done: a kill at any point leaves the old complete ensemble; ``resume`` keeps
    # the members the tree holds and continues the others from the old ensemble's
    final = layout.teacher(lang)
    tree = staging_dir(final)
    keep_interrupted(tree, resume)
    members = member_folders(tree, cfg.seeds)
    old_members = member_folders(final, cfg.seeds)
    lines, scores = [], []
    for seed, out, old in zip(cfg.seeds, members, old_members, strict=True):
        member = replace(cfg, seed=seed)
        torch.manual_seed(seed)
        model = Tagger(config, labels).to(device)  # initialised on CPU: same on every device
        desc = f"teacher {lang}" + (f" seed {seed}" if len(members) > 1 else "")
        metrics = train_tagger(
            model,
            TeacherObjective(model, train, member, lang),
            params=member,
            dev=dev,
            test=test,
            out=out,
            fingerprint=run_fingerprint(member, labels.digest(), len(train)),
            resume=resume,
            desc=desc,
            finished=out if (out / CHECKPOINT).exists() else old,
        )
        assert metrics is not None  # one process: always the main one
        scores.append((headline(metrics["dev"]), headline(metrics["test"])))
        lines.append(f"{desc}: dev {scores[-1][0]:.2f} test {scores[-1][1]:.2f}")
    (tree / "members").mkdir(exist_ok=True)  # a dvc out, even for a single teacher
    replace_dir(tree, final)
    if len(members) > 1:
        dev_mean, test_mean = (sum(s) / len(s) for s in zip(*scores, strict=True))
        lines.append(f"teacher {lang} members' mean: dev {dev_mean:.2f} test {test_mean:.2f}")
    return "\n".join(lines)
