"""Tag a whole split with a model and score it (span F1 or accuracy, in the corpus' scheme)."""

from __future__ import annotations

import numpy as np

from structkd.pipeline.data import Split, iterate
from structkd.pipeline.metrics import score
from structkd.pipeline.models import Tagger


def predict_split(model: Tagger, split: Split, max_tokens: int = 4000) -> list[np.ndarray]:
    """Viterbi label ids for every sentence of ``split``, in the split's order."""
    predictions: list[np.ndarray] = [np.empty(0, np.int64)] * len(split)
    tokens = split.tokens if model.config.has_lexicon else None
    for batch in iterate(split, max_tokens):
        words = batch.tokens if tokens is not None else None
        for i, path in zip(
            batch.index, model.decode(batch.features, batch.mask, words), strict=True
        ):
            predictions[i] = path
    return predictions


def evaluate_split(model: Tagger, split: Split, max_tokens: int = 4000) -> dict[str, float]:
    """Scores of ``model`` on ``split`` (see :func:`structkd.pipeline.metrics.score`)."""
    return score(split.tags, predict_split(model, split, max_tokens), model.labels, split.scheme)
