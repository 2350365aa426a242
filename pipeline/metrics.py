"""Scores in the corpus' own terms: span F1 with ``seqeval`` (conlleval-compatible) or accuracy.

Predictions are BIOES label ids; span tasks convert them back to the corpus' scheme before
scoring, so numbers are comparable with conlleval on the original files.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from seqeval.metrics import f1_score, precision_score, recall_score

from structkd.pipeline.labels import LabelSet
from structkd.pipeline.schemes import from_bioes


def score(
    gold: Sequence[np.ndarray],
    predicted: Sequence[np.ndarray],
    labels: LabelSet,
    corpus_scheme: str,
) -> dict[str, float]:
    """Compare label-id sequences.

    Args:
        gold: per sentence ``(n,)`` gold label ids.
        predicted: per sentence ``(n,)`` predicted label ids.
        labels: the task's label set (ids -> internal tags).
        corpus_scheme: the scheme the corpus was written in (``"none"`` for token tasks).

    Returns:
        ``{"accuracy"}`` for token tasks, ``{"f1", "precision", "recall", "accuracy"}`` for span
        tasks; all in percent.
    """
    correct = sum(int((g == p).sum()) for g, p in zip(gold, predicted, strict=True))
    total = sum(len(g) for g in gold)
    result = {"accuracy": 100.0 * correct / max(total, 1)}
    if labels.scheme == "none":
        return result
    scheme = "iob2" if corpus_scheme in ("iob2", "bio", "none") else corpus_scheme
    y_true = [from_bioes(labels.decode(g), scheme) for g in gold]
    y_pred = [from_bioes(labels.decode(p), scheme) for p in predicted]
    result["f1"] = 100.0 * f1_score(y_true, y_pred)
    result["precision"] = 100.0 * precision_score(y_true, y_pred)
    result["recall"] = 100.0 * recall_score(y_true, y_pred)
    return result


def headline(result: dict[str, float]) -> float:
    """The one number a task is judged by: F1 for spans, accuracy for tokens."""
    return result.get("f1", result["accuracy"])
