"""Stage ``evaluate``: every teacher and every student method on every test set.

Writes ``metrics/<model>.json`` (one row per model in ``dvc metrics show``),
``plots/per_language.csv`` (``dvc plots``), and ``reports/pipeline/results.md`` +
``per_language.png`` (for people).
"""

from __future__ import annotations

from pathlib import Path

import typer

from structkd.pipeline.layout import open_project
from structkd.stages.options import ParamsPath


def main(params_path: ParamsPath = Path("params.yaml")) -> None:
    """Score teachers and students per language (own test sets and zero-shot languages)."""
    from structkd.pipeline.data import load_split
    from structkd.pipeline.evaluation import evaluate_split
    from structkd.pipeline.metrics import headline
    from structkd.pipeline.models import load_tagger
    from structkd.pipeline.report import markdown_table, with_averages, write_bars, write_csv
    from structkd.pipeline.training import write_json

    params, layout = open_project(params_path)
    langs, zero_shot = list(params.data.languages), list(params.data.zero_shot)
    tests = {
        lang: load_split(layout.prepared(lang, "test"), layout.features(lang, "test"), lang, "test")
        for lang in langs + zero_shot
    }
    span = params.data.span_task
    metric = "F1" if span else "Accuracy"
    scores: dict[str, dict[str, float]] = {}
    teachers = {lang: load_tagger(layout.teacher(lang)) for lang in langs}
    scores["Teachers"] = {
        lang: headline(evaluate_split(teachers[lang], tests[lang])) for lang in langs
    }
    for lang in zero_shot:
        per_teacher = [headline(evaluate_split(t, tests[lang])) for t in teachers.values()]
        scores["Teachers"][lang] = sum(per_teacher) / len(per_teacher)
    for method in params.student.methods:
        student = load_tagger(layout.student(method))
        scores[method] = {
            lang: headline(evaluate_split(student, tests[lang])) for lang in langs + zero_shot
        }
        typer.echo(f"{method}: " + " ".join(f"{k} {v:.2f}" for k, v in scores[method].items()))

    table = with_averages(scores, langs, zero_shot)
    for stale in layout.metrics.glob("*.json"):  # models no longer configured
        stale.unlink()
    for model, row in table.items():
        write_json(row, layout.metrics / f"{model}.json")
    write_csv(table, layout.plots / "per_language.csv")
    write_bars(table, [*langs, "avg", *zero_shot], layout.reports / "per_language.png", metric)
    baseline, teacher = table.get("baseline", {}), table["Teachers"]
    lines = [
        f"# Results: {params.data.task}",
        "",
        f"Test {metric.lower()} per language. Teachers are monolingual (own word and character "
        "embeddings); on zero-shot languages the Teachers row is the mean over all teachers. "
        "Students are one multilingual model per distillation method.",
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
    layout.reports.mkdir(parents=True, exist_ok=True)
    (layout.reports / "results.md").write_text("\n".join(lines), "utf-8")
    typer.echo(f"wrote {layout.metrics}/*.json and {layout.reports / 'results.md'}")
