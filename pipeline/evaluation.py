"""Tag a whole split with a model and score it (span F1 or accuracy, in the corpus' scheme)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import numpy as np
import torch

from structkd.pipeline.data import Split, iterate, load_split
from structkd.pipeline.ensemble import mix, teacher_knowledge
from structkd.pipeline.layout import Layout
from structkd.pipeline.metrics import headline, score
from structkd.pipeline.models import Tagger
from structkd.storage import ragged


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


def predict_split_ensemble(
    members: Sequence[Tagger], split: Split, k: int, max_tokens: int = 4000
) -> list[np.ndarray]:
    """The ensemble's label ids: per sentence, the path the mixture ``1/M Σ_i p_i`` finds most
    probable among the union of its members' k-best (what its knowledge ranks first).

    The mixture's exact MAP path is intractable (it is not a CRF); every member's Viterbi path is
    in the union, so this is never worse by the mixture than any member's own decoding. One
    member is decoded by its Viterbi (:func:`predict_split`).
    """
    if len(members) == 1:
        return predict_split(members[0], split, max_tokens)
    lengths = np.array([len(t) for t in split.tokens], np.int64)
    offsets = ragged.offsets(lengths)
    knowledge = []
    for model in members:
        model.eval()
        emissions = np.empty((int(offsets[-1]), model.config.n_tags), np.float64)
        for batch in iterate(split, max_tokens):
            assert batch.index is not None  # iterate() numbers every batch's sentences
            words = batch.tokens if model.config.has_lexicon else None
            with torch.inference_mode():
                scores = model.emissions(batch.features, batch.mask, words).double().numpy()
            for row, i in enumerate(batch.index):
                emissions[offsets[i] : offsets[i + 1]] = scores[row, : lengths[i]]
        crf = model.crf.numpy_params()
        knowledge.append(teacher_knowledge(emissions, lengths, crf, k=k, edges=False))
    best = mix(knowledge, lengths, k=1).kbest_tags.astype(np.int64)
    return [best[offsets[i] : offsets[i + 1]] for i in range(len(lengths))]


def evaluate_ensemble(
    members: Sequence[Tagger], split: Split, k: int, max_tokens: int = 4000
) -> dict[str, float]:
    """Scores of the ensemble of ``members`` on ``split`` (:func:`predict_split_ensemble`)."""
    predicted = predict_split_ensemble(members, split, k, max_tokens)
    return score(split.tags, predicted, members[0].labels, split.scheme)


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
