"""Evaluate: every teacher and every student method on every test set (core of ``evaluate``).

Writes ``metrics/<model>.json`` (one row per model in ``dvc metrics show``),
``plots/per_language.csv`` (``dvc plots``), and ``reports/pipeline/results.md`` +
``per_language.png`` (for people).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch

from structkd.pipeline.data import Split, iterate
from structkd.pipeline.ensemble import mix, teacher_knowledge
from structkd.pipeline.evaluation import evaluate_split, evaluate_splits, load_splits, predict_split
from structkd.pipeline.layout import Layout
from structkd.pipeline.metrics import headline, score
from structkd.pipeline.models import Tagger, load_tagger
from structkd.pipeline.params import Params
from structkd.pipeline.report import markdown_table, with_averages, write_bars, write_csv
from structkd.pipeline.runtime import setup
from structkd.pipeline.training import write_json
from structkd.storage import ragged

Table = dict[str, dict[str, float]]


def run(params: Params, layout: Layout, echo: Callable[[str], None] = print) -> Table:
    """Score, write the metrics, plots and report; returns the table (with averages)."""
    langs, zero_shot = list(params.data.languages), list(params.data.zero_shot)
    table = with_averages(score_models(params, layout, echo), langs, zero_shot)
    for stale in layout.metrics.glob("*.json"):  # models no longer configured
        stale.unlink()
    for model, row in table.items():
        write_json(row, layout.metrics / f"{model}.json")
    metric = "F1" if params.data.span_task else "Accuracy"
    write_csv(table, layout.plots / "per_language.csv")
    write_bars(table, [*langs, "avg", *zero_shot], layout.reports / "per_language.png", metric)
    layout.reports.mkdir(parents=True, exist_ok=True)
    (layout.reports / "results.md").write_text(report(params, table), "utf-8")
    echo(f"wrote {layout.metrics}/*.json and {layout.reports / 'results.md'}")
    return table


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
                scores = model.emissions(batch.features, batch.mask, words).cpu().double().numpy()
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


def score_models(params: Params, layout: Layout, echo: Callable[[str], None] = print) -> Table:
    """Headline test score of each teacher and student method per language.

    Teachers are scored on their own language; on a zero-shot language the Teachers row is the
    mean over all teachers. A teacher ensemble is decoded as the mixture it is distilled as
    (:func:`predict_split_ensemble`); with more than one member
    the ``Members`` row adds the mean of its members' own scores.
    """
    langs, zero_shot = list(params.data.languages), list(params.data.zero_shot)
    device = setup(params.runtime)
    tests = load_splits(layout, langs + zero_shot, "test")
    teachers = {
        lang: [
            load_tagger(d).to(device) for d in layout.teacher_members(lang, params.teacher.seeds)
        ]
        for lang in langs
    }
    k = params.export.k
    own = {lang: headline(evaluate_ensemble(teachers[lang], tests[lang], k)) for lang in langs}
    zero = {
        lang: [headline(evaluate_ensemble(m, tests[lang], k)) for m in teachers.values()]
        for lang in zero_shot
    }
    scores: Table = {"Teachers": {**own, **{lang: sum(s) / len(s) for lang, s in zero.items()}}}
    if params.teacher.ensemble > 1:
        singles = [m for members in teachers.values() for m in members]
        mean_own = {
            lang: sum(headline(evaluate_split(m, tests[lang])) for m in teachers[lang])
            / len(teachers[lang])
            for lang in langs
        }
        mean_zero = {
            lang: sum(headline(evaluate_split(m, tests[lang])) for m in singles) / len(singles)
            for lang in zero_shot
        }
        scores["Members"] = {**mean_own, **mean_zero}
    for method in ("baseline", *params.student.methods):
        student = load_tagger(layout.student(method)).to(device)
        scores[method] = {lang: headline(s) for lang, s in evaluate_splits(student, tests).items()}
        echo(f"{method}: " + " ".join(f"{k} {v:.2f}" for k, v in scores[method].items()))
    return scores


def report(params: Params, table: Table) -> str:
    """The text of ``reports/pipeline/results.md``."""
    langs, zero_shot = list(params.data.languages), list(params.data.zero_shot)
    metric = "F1" if params.data.span_task else "Accuracy"
    baseline, teacher = table.get("baseline", {}), table["Teachers"]
    intro = (
        f"Test {metric.lower()} per language. Teachers are monolingual (own word and character "
        "embeddings); on zero-shot languages the Teachers row is the mean over all teachers. "
        "Students are one multilingual model per distillation method."
    )
    if params.teacher.ensemble > 1:
        intro += (
            f" Each teacher is an ensemble of {params.teacher.ensemble} (seeds "
            f"{', '.join(map(str, params.teacher.seeds))}), distilled as their exact mixture "
            "and decoded as it (the union of the members' k-best, ranked by the mixture); "
            "the Members row is the mean of the members' own scores."
        )
    lines = [
        f"# Results: {params.data.task}",
        "",
        intro,
        "",
        markdown_table(table, langs, zero_shot, metric),
    ]
    if "posterior" in table and baseline:
        gap = teacher["avg"] - baseline["avg"]
        if gap > 0:
            closed = (table["posterior"]["avg"] - baseline["avg"]) / gap * 100
            lines.append(
                f"Teacher–baseline gap on the average: {gap:.2f}; "
                f"posterior KD closes {closed:.1f}% of it."
            )
        else:  # a share of a gap that is not there would read as nonsense (e.g. 290%)
            lines.append(
                f"Teacher–baseline gap on the average: {gap:.2f}; the teachers do not beat the "
                "baseline student here, so there is no gap for KD to close."
            )
    lines += ["", "![per-language scores](per_language.png)", ""]
    return "\n".join(lines)
