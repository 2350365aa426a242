"""Tag a whole split with a model and score it (span F1 or accuracy, in the corpus' scheme)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import numpy as np

from structkd.pipeline.data import Split, iterate, load_split
from structkd.pipeline.layout import Layout
from structkd.pipeline.metrics import headline, score
from structkd.pipeline.models import Tagger


def predict_split(model: Tagger, split: Split, max_tokens: int = 4000) -> list[np.ndarray]:
    """Viterbi label ids for every sentence of ``split``, in the split's order."""
    predictions: list[np.ndarray] = [np.empty(0, np.int64)] * len(split)
    tokens = split.tokens if model.config.has_lexicon else None
    for batch in iterate(split, max_tokens):
        assert batch.index is not None  # iterate() numbers every batch's sentences
        words = batch.tokens if tokens is not None else None
        for i, path in zip(
            batch.index, model.decode(batch.features, batch.mask, words), strict=True
        ):
            predictions[i] = path
    return predictions


def evaluate_split(model: Tagger, split: Split, max_tokens: int = 4000) -> dict[str, float]:
    """Scores of ``model`` on ``split`` (see :func:`structkd.pipeline.metrics.score`)."""
    return score(split.tags, predict_split(model, split, max_tokens), model.labels, split.scheme)


def micro_score(model: Tagger, splits: Sequence[Split], max_tokens: int = 4000) -> float:
    """Headline score of ``model`` on ``splits`` concatenated (micro over languages, as the paper).

    On one split this equals ``headline(evaluate_split(model, split))``.
    """
    gold = [t for split in splits for t in split.tags]
    predicted = [p for split in splits for p in predict_split(model, split, max_tokens)]
    return headline(score(gold, predicted, model.labels, splits[0].scheme))


def load_splits(layout: Layout, langs: Iterable[str], name: str) -> dict[str, Split]:
    """Split ``name`` (``train``, ``dev`` or ``test``) of each language, with its features."""
    return {
        lang: load_split(layout.prepared(lang, name), layout.features(lang, name), lang, name)
        for lang in langs
    }


def evaluate_splits(model: Tagger, splits: Mapping[str, Split]) -> dict[str, dict[str, float]]:
    """Scores of ``model`` on every split, by language (the one place test sets are scored)."""
    return {lang: evaluate_split(model, split) for lang, split in splits.items()}
