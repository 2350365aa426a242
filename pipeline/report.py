"""Results a person can read: the per-language score table, its CSV for ``dvc plots``, a PNG.

Rows are models (the teachers, then one row per student method), columns the teacher languages,
their average, then the zero-shot languages and their average — the layout of the paper's tables.
"""

from __future__ import annotations

import csv
from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

Scores = Mapping[str, Mapping[str, float]]


def mean(values: Sequence[float]) -> float:
    """Average, NaN for an empty list (a column with nothing to average)."""
    return sum(values) / len(values) if values else float("nan")


def with_averages(scores: Scores, langs: Sequence[str], zero_shot: Sequence[str]) -> dict:
    """Per model: its scores plus ``avg`` (teacher languages) and ``zero_shot_avg``."""
    out: dict[str, dict[str, float]] = {}
    for model, row in scores.items():
        full = dict(row)
        full["avg"] = mean([row[lang] for lang in langs if lang in row])
        if zero_shot:
            full["zero_shot_avg"] = mean([row[lang] for lang in zero_shot if lang in row])
        out[model] = full
    return out


def markdown_table(
    table: Mapping[str, Mapping[str, float]],
    langs: Sequence[str],
    zero_shot: Sequence[str],
    metric: str,
) -> str:
    """The table as GitHub Markdown, best score per column in bold."""
    columns = [*langs, "avg", *zero_shot, *(["zero_shot_avg"] if zero_shot else [])]
    best = {c: max((r.get(c, float("-inf")) for r in table.values()), default=0.0) for c in columns}
    header = "| model | " + " | ".join(
        "Avg." if c == "avg" else "zero-shot Avg." if c == "zero_shot_avg" else c for c in columns
    )
    lines = [f"{metric} (%)", "", header + " |", "|---" * (len(columns) + 1) + "|"]
    for model, row in table.items():
        cells = []
        for column in columns:
            value = row.get(column)
            if value is None or value != value:
                cells.append("–")
            else:
                cell = f"{value:.2f}"
                cells.append(f"**{cell}**" if value == best[column] else cell)
        lines.append(f"| {model} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_csv(table: Mapping[str, Mapping[str, float]], path: Path) -> None:
    """Long format ``model,lang,score,model_lang`` for ``dvc plots`` bar charts."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["model", "lang", "score", "model_lang"])
        for model, row in table.items():
            for lang, value in row.items():
                writer.writerow([model, lang, f"{value:.4f}", f"{model}/{lang}"])


def write_bars(
    table: Mapping[str, Mapping[str, float]], columns: Sequence[str], path: Path, metric: str
) -> None:
    """Grouped bar chart: one group per language, one bar per model."""
    path.parent.mkdir(parents=True, exist_ok=True)
    models = list(table)
    width = 0.8 / max(len(models), 1)
    bars = len(columns) * max(len(models), 1)
    fig, ax = plt.subplots(figsize=(min(18.0, max(6.0, 0.13 * bars + 1.5)), 4))
    for m, model in enumerate(models):
        xs = [c + m * width for c in range(len(columns))]
        ys = [table[model].get(col, float("nan")) for col in columns]
        ax.bar(xs, ys, width, label=model)
    ax.set_xticks([c + 0.4 - width / 2 for c in range(len(columns))], list(columns))
    finite = [v for row in table.values() for k, v in row.items() if k in columns and v == v]
    if finite:
        ax.set_ylim(max(0.0, min(finite) - 5), min(100.0, max(finite) + 2))
    ax.set_ylabel(f"{metric} (%)")
    ax.legend(fontsize="small", ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
