"""Run the paper's comparison on real corpora through the structkd pipeline, then report it.

    python experiments/run.py conll udpos --seeds 1 2 3      # run (resumable), then report
    python experiments/run.py --report-only                  # rebuild reports/results.md

Per task, ``experiments/runs/<task>/base`` holds prepare → embed → teachers → export (run once;
every stage is skipped or served from the content-keyed caches when already done). Each seed gets
``runs/<task>/seed-<S>`` whose params differ only in ``student.seed`` and whose data, features,
knowledge and teachers are links to the base, so teachers run once for all seeds. Every
teacher and student is keyed by its fingerprint (the params it reads and a digest of the code),
stored as ``.<name>.fingerprint.json`` beside its model directory (not in it: a stage swaps
in the finished directory whole): a finished run with the same
fingerprint is skipped, an interrupted one is resumed, and one whose params or code changed is
trained again from scratch. Every stage is the real ``structkd stage`` command, as a user would
run it.

A params file may add an ``experiment:`` section of run-level options that are not pipeline
params: ``teacher_train_limit: N`` trains the teachers in ``runs/<task>/teachers`` on N sentences
per language (the teacher-quality ablation, ``experiments/conll-strong.yaml``);
``teachers_of: NAME`` links ``runs/NAME/base`` in as this experiment's base, so that student-only
variants (another K, trust on) reuse NAME's features, teachers and knowledge; the two files must
then agree on every section the base reads (data, prepare, embed, teacher, export);
``grid: {KEY: [values], ...}`` (student keys) chooses each KD method's setting on dev with the
first seed (``choose_on_dev``), and every seed then trains each method with its chosen setting;
``compare_with: NAME`` names the run the report sets this one against (a run with unlabeled text
against the same students without it).

Finished seeds are copied into the committed ``experiments/results/<task>`` (metrics, learning
curves, sizes, wall times) and ``reports/results.md`` is built from there alone by
``experiments/report.py``; ``experiments/findings.md`` is the hand-written reading of it.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import itertools
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Collection
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RUNS = HERE / "runs"
CODE = ("pipeline", "storage", "stages", "structkd")
sys.path.insert(0, str(HERE))

from report import METHODS, RESULTS, TASKS, report  # noqa: E402


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
    for text in params["data"].get("unlabeled", {}).values():
        text["path"] = str((HERE / text["path"]).resolve())
    return params, experiment


def stage(project: Path, *args: str, log: Path, params: str = "params.yaml") -> float:
    """Run ``structkd stage ...`` in ``project`` with its ``params`` file; its output goes to
    ``log``; returns seconds."""
    began = time.perf_counter()
    command = ["structkd", "stage", *args, "--params", str(project / params)]
    with log.open("a") as out:
        out.write(f"\n$ {' '.join(command)}\n")
        out.flush()
        done = subprocess.run(command, cwd=project, stdout=out, stderr=subprocess.STDOUT)
    if done.returncode:
        raise SystemExit(f"{' '.join(command)} failed; see {log}")
    return time.perf_counter() - began


@functools.cache
def code_digest() -> str:
    """sha256 over the package's Python sources (paths and contents): the code a run ran."""
    files = sorted(path for folder in CODE for path in (ROOT / folder).rglob("*.py"))
    digests = {
        p.relative_to(ROOT).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest() for p in files
    }
    return hashlib.sha256(json.dumps(digests, sort_keys=True).encode()).hexdigest()


def teacher_params(params: dict) -> dict:
    """The params a teacher's training reads: the teachers' corpora and labels, shards, features
    and its own section (zero-shot languages, unlabeled text and the student's settings do not
    change it)."""
    data = {k: v for k, v in params["data"].items() if k not in ("zero_shot", "unlabeled")}
    return {"data": data, **{s: params.get(s, {}) for s in ("prepare", "embed", "teacher")}}


def student_params(params: dict, method: str, teachers: dict[str, dict]) -> dict:
    """The params a student reads: its corpora (unlabeled text included), shards and features,
    its teachers (by their fingerprints), the export and its own section except ``methods``
    (which students to run, not how one trains)."""
    student = {k: v for k, v in params["student"].items() if k != "methods"}
    return {
        **teacher_params(params),
        "unlabeled": params["data"].get("unlabeled", {}),
        "teacher": teachers,
        "export": params.get("export", {}),
        "student": student,
        "method": method,
    }


def fingerprint(run_params: dict) -> dict:
    """What a finished run must have been made from to be reused: its params and the code."""
    return json.loads(json.dumps({"params": run_params, "code": code_digest()}, sort_keys=True))


def train(
    project: Path,
    out: Path,
    key: dict,
    args: tuple[str, ...],
    log: Path,
    params: str = "params.yaml",
) -> float | None:
    """Run ``structkd stage *args`` for the run in ``out`` unless it finished with fingerprint
    ``key``; returns the seconds it took, None when skipped.

    Same fingerprint: skipped when ``metrics.json`` exists, else resumed. Another (or none): the
    old metrics go and the run starts over, its fingerprint written first so that an
    interruption resumes it.
    """
    stored = fingerprint_path(out)
    same = stored.exists() and json.loads(stored.read_text()) == key
    if same and (out / "metrics.json").exists():
        return None
    if not same:
        out.mkdir(parents=True, exist_ok=True)
        (out / "metrics.json").unlink(missing_ok=True)
        stored.write_text(json.dumps(key, indent=1) + "\n")
    return stage(project, *args, *(("--resume",) if same else ()), log=log, params=params)


def fingerprint_path(out: Path) -> Path:
    """Where the fingerprint of the run in ``out`` is kept: beside it, since the stage replaces
    ``out`` as a whole when it finishes (a file inside would be gone)."""
    return out.with_name(f".{out.name}.fingerprint.json")


def record_time(task_dir: Path, name: str, seconds: float) -> None:
    path = task_dir / "timings.json"
    timings = json.loads(path.read_text()) if path.exists() else {}
    timings[name] = round(seconds, 1)
    path.write_text(json.dumps(timings, indent=1))


def run_task(task: str, seeds: list[int], methods: list[str]) -> None:
    """Teachers once, then every (seed, method) student, then evaluate each seed."""
    task_dir = RUNS / task
    base = task_dir / "base"
    params, experiment = absolute_params(task)
    if "teachers_of" in experiment:
        link_base(task, experiment["teachers_of"], params)
    base.mkdir(parents=True, exist_ok=True)
    methods = ["baseline", *(m for m in methods if m != "baseline")]  # always trained, first
    params["student"]["methods"] = methods[1:]
    (base / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    selftrained = self_trained_texts(params)
    if selftrained and "grid" in experiment:
        raise SystemExit(f"experiments/{task}.yaml: a grid with self-training is not supported")
    log = task_dir / "log.txt"
    (task_dir / "description.txt").write_text(open_comment(task) + "\n")
    prepare_and_embed(base, task_dir, log)
    teachers = base
    if "teacher_train_limit" in experiment:
        teachers = teacher_project(task_dir, params, experiment["teacher_train_limit"], log)
    teacher_keys = {}
    trained_on = teacher_params(yaml.safe_load((teachers / "params.yaml").read_text()))
    for lang in params["data"]["languages"]:
        teacher_keys[lang] = fingerprint({**trained_on, "lang": lang})
        out = teachers / "models" / "teachers" / lang
        seconds = train(teachers, out, teacher_keys[lang], ("train-teacher", lang), log)
        if seconds is not None:
            record_time(task_dir, f"teacher {lang}", seconds)
    # the base exports what its teachers alone label; each seed's baseline labels the
    # self-trained text in the seed's own knowledge (below)
    without = {k: v for k, v in params["data"].get("unlabeled", {}).items() if k not in selftrained}
    teachers_only = {**params, "data": {**params["data"], "unlabeled": without}}
    (base / "params.export.yaml").write_text(yaml.safe_dump(teachers_only, sort_keys=False))
    exported = stage(base, "export-teachers", log=log, params="params.export.yaml")
    record_time(task_dir, "export", exported)
    chosen: dict[str, dict] = {}
    if "grid" in experiment:
        kd = [m for m in methods if m != "baseline"]
        chosen = choose_on_dev(task_dir, params, experiment["grid"], kd, seeds[0], teacher_keys)
    for seed in seeds:
        project = student_project(task_dir / f"seed-{seed}", base, selftrained)
        seeded = {**params, "student": {**params["student"], "seed": seed}}
        (project / "params.yaml").write_text(yaml.safe_dump(seeded, sort_keys=False))
        for method in methods:
            setting = chosen.get(method, {})
            run_params = {**seeded, "student": {**seeded["student"], **setting}}
            file = f"params.{method}.yaml" if setting else "params.yaml"
            if setting:
                (project / file).write_text(yaml.safe_dump(run_params, sort_keys=False))
            key = fingerprint(student_params(run_params, method, teacher_keys))
            out = project / "models" / "students" / method
            seconds = train(project, out, key, ("train-student", method), log, params=file)
            if seconds is not None:
                record_time(task_dir, f"student {method} seed {seed}", seconds)
            if method == "baseline" and selftrained:  # it labels the text for this seed's KD
                exported = stage(project, "export-teachers", log=log)
                record_time(task_dir, f"export seed {seed}", exported)
        stage(project, "evaluate", log=log)


def self_trained_texts(params: dict) -> set[str]:
    """The languages whose unlabeled text the baseline student labels (``teachers: student``,
    alone or in a list or mapping): self-training."""
    found = set()
    for lang, text in params["data"].get("unlabeled", {}).items():
        teachers = text.get("teachers", "all")
        if teachers == "student" or (not isinstance(teachers, str) and "student" in teachers):
            found.add(lang)
    return found


def student_project(project: Path, base: Path, selftrained: Collection[str] = ()) -> Path:
    """A project for students: its data, knowledge and teachers are links to the base's.

    With self-training (``selftrained``: languages whose text the baseline student labels) the
    project's knowledge is its own folder: the base's entries are linked into it, but the
    self-trained text's entries are made here, by this project's baseline."""
    (project / "models" / "students").mkdir(parents=True, exist_ok=True)
    links = [("data", base / "data"), ("models/teachers", base / "models" / "teachers")]
    if selftrained:
        own = {f"unlabeled/{lang}" for lang in selftrained}
        (project / "knowledge" / "unlabeled").mkdir(parents=True, exist_ok=True)
        entries = [p for p in (base / "knowledge").glob("*") if p.name != "unlabeled"]
        entries += list((base / "knowledge").glob("unlabeled/*"))
        for entry in entries:
            name = entry.relative_to(base / "knowledge").as_posix()
            if name not in own:
                links.append((f"knowledge/{name}", entry))
    else:
        links.append(("knowledge", base / "knowledge"))
    for link, target in links:
        if not (project / link).exists():
            os.symlink(target, project / link)
    return project


def grid_tag(setting: dict) -> str:
    return "_".join(f"{key}-{value}" for key, value in setting.items())


def choose_on_dev(
    task_dir: Path,
    params: dict,
    grid: dict[str, list],
    methods: list[str],
    seed: int,
    teacher_keys: dict[str, dict],
) -> dict[str, dict]:
    """Per KD method, the ``grid`` setting (student keys → values) whose student, trained with
    ``seed``, has the best mean dev score over the teacher languages; test is never read.

    Each setting trains in ``runs/<task>/grid/<tag>`` (skipped or resumed like every run); the
    chosen one's model is copied into the seed's project so that it is not trained twice. The
    grid's dev scores and the choice are written to ``runs/<task>/grid.json`` for the report.
    """
    log = task_dir / "log.txt"
    settings = [
        dict(zip(grid, values, strict=True)) for values in itertools.product(*grid.values())
    ]
    dev: dict[str, dict[str, float]] = {method: {} for method in methods}
    for setting in settings:
        tag = grid_tag(setting)
        project = student_project(task_dir / "grid" / tag, task_dir / "base")
        run_params = {**params, "student": {**params["student"], "seed": seed, **setting}}
        (project / "params.yaml").write_text(yaml.safe_dump(run_params, sort_keys=False))
        for method in methods:
            key = fingerprint(student_params(run_params, method, teacher_keys))
            out = project / "models" / "students" / method
            seconds = train(project, out, key, ("train-student", method), log)
            if seconds is not None:
                record_time(task_dir, f"grid {method} {tag}", seconds)
            scores = json.loads((out / "metrics.json").read_text())["dev"]
            dev[method][tag] = sum(scores.values()) / len(scores)
    chosen = {method: settings[_argmax(list(dev[method].values()))] for method in methods}
    for method, setting in chosen.items():
        source = task_dir / "grid" / grid_tag(setting) / "models" / "students" / method
        target = task_dir / f"seed-{seed}" / "models" / "students" / method
        if not (target / "metrics.json").exists():
            shutil.rmtree(target, ignore_errors=True)
            shutil.copytree(source, target)
    record = {
        "grid": grid,
        "seed": seed,
        "dev": dev,
        "chosen": {method: grid_tag(setting) for method, setting in chosen.items()},
    }
    (task_dir / "grid.json").write_text(json.dumps(record, indent=1) + "\n")
    return chosen


def _argmax(values: list[float]) -> int:
    """The first best (ties go to the earlier setting, so the choice does not depend on noise
    in the last digit's order)."""
    return max(range(len(values)), key=lambda i: (values[i], -i))


SHARED_SECTIONS = ("data", "prepare", "embed", "teacher", "export")


def link_base(task: str, owner: str, params: dict) -> None:
    """Make ``runs/<task>/base`` a link to ``runs/<owner>/base`` once the two params files are
    shown to agree on what the base computes (else the shared teachers would be the wrong ones).

    ``data.unlabeled`` may differ: unlabeled text only adds its own split and knowledge to the
    base (content-keyed), and changes no teacher and no other knowledge."""
    theirs, _ = absolute_params(owner)
    for section in SHARED_SECTIONS:
        if without_unlabeled(params, section) != without_unlabeled(theirs, section):
            raise SystemExit(
                f"experiments/{task}.yaml: teachers_of {owner}, but its {section} "
                f"section differs from experiments/{owner}.yaml's"
            )
    target, base = RUNS / owner / "base", RUNS / task / "base"
    target.mkdir(parents=True, exist_ok=True)
    if not base.is_symlink():
        base.parent.mkdir(parents=True, exist_ok=True)
        os.symlink(target, base)


def without_unlabeled(params: dict, section: str) -> dict | None:
    """``params[section]``, without ``unlabeled`` when it is ``data``."""
    value = params.get(section)
    if section == "data" and value is not None:
        return {k: v for k, v in value.items() if k != "unlabeled"}
    return value


def prepare_and_embed(project: Path, task_dir: Path, log: Path, timed_as: str = "") -> None:
    """Prepare (seconds; the same corpora give the same shards) and embed (served from its
    cache for every split whose shards did not change) the project's corpora."""
    record_time(task_dir, f"prepare{timed_as}", stage(project, "prepare", log=log))
    record_time(task_dir, f"embed{timed_as}", stage(project, "embed", log=log))


def teacher_project(task_dir: Path, params: dict, train_limit: int, log: Path) -> Path:
    """A project whose teachers train on ``train_limit`` sentences per language, linked in as
    the base's teachers: they then label the base's (smaller) training set at export.

    When the larger limit is a multiple of the smaller (3,200 = 4 x 800), its evenly spread
    sentences include every one of the smaller set, so the teachers have seen the students'
    sentences, as in the paper."""
    project = task_dir / "teachers"
    (project / "models" / "teachers").mkdir(parents=True, exist_ok=True)
    languages = {
        lang: {**spec, "train_limit": train_limit}
        for lang, spec in params["data"]["languages"].items()
    }
    bigger = {**params, "data": {**params["data"], "languages": languages}}
    (project / "params.yaml").write_text(yaml.safe_dump(bigger, sort_keys=False))
    prepare_and_embed(project, task_dir, log, timed_as=" teachers' data")
    link = task_dir / "base" / "models" / "teachers"
    if not link.exists():
        link.parent.mkdir(parents=True, exist_ok=True)
        os.symlink(project / "models" / "teachers", link)
    return project


def sync(name: str) -> None:
    """Copy what finished in ``runs/<name>`` into the committed ``results/<name>``.

    Kept: each evaluated seed's ``metrics/*.json``, every training history (learning curves),
    the wall times, the data sizes and the description, so the report can be rebuilt on a clean
    checkout without the models and features in ``runs/``.
    """
    source, target = RUNS / name, RESULTS / name
    if not (source / "timings.json").exists():  # nothing ran here (a base others link to)
        return
    target.mkdir(parents=True, exist_ok=True)
    described = source / "description.txt"
    description = described.read_text().strip() if described.exists() else open_comment(name)
    params, experiment = absolute_params(name) if (HERE / f"{name}.yaml").exists() else ({}, {})
    texts = params.get("data", {}).get("unlabeled", {})
    meta = {"description": description, "sizes": sizes(source / "base", texts)}
    meta.update({k: v for k, v in experiment.items() if k in ("teachers_of", "compare_with")})
    (target / "meta.json").write_text(json.dumps(meta, indent=1) + "\n")
    shutil.copyfile(source / "timings.json", target / "timings.json")
    if (source / "grid.json").exists():
        shutil.copyfile(source / "grid.json", target / "grid.json")
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


def sizes(base: Path, texts: Collection[str] = ()) -> dict[str, dict[str, int]]:
    """Sentences per language and split, read from the prepared shards' footers; the
    ``unlabeled`` split only of the languages in ``texts`` (the run's ``data.unlabeled``: a
    shared base may hold another run's text)."""
    import pyarrow.parquet as pq

    prepared = base / "data" / "prepared"
    return {
        lang.name: {
            split.name: sum(pq.read_metadata(f).num_rows for f in split.glob("part-*.parquet"))
            for split in (lang / name for name in ("train", "dev", "test", "unlabeled"))
            if split.is_dir() and (split.name != "unlabeled" or lang.name in texts)
        }
        for lang in sorted(p for p in prepared.iterdir() if p.is_dir())
    }


def open_comment(task: str) -> str:
    """The one-line description at the top of the task's params file."""
    return (HERE / f"{task}.yaml").read_text().split("\n", 1)[0].lstrip("# ")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "tasks", nargs="*", help=f"{', '.join(TASKS)} or another experiments/<name>.yaml"
    )
    parser.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3])
    parser.add_argument(
        "--methods",
        nargs="+",
        default=list(METHODS),
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
