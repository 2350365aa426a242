"""Benchmark: student epoch time per distillation method vs the baseline, and streaming memory.

Data: the training inputs of a finished project (``--project``, default the repository: its
``data/prepared/<lang>/train``, ``data/features/<lang>/train`` and verified ``knowledge/<lang>``
for the languages of its params.yaml) copied into a temporary directory, so the benchmark reads a
consistent snapshot and never writes into the project. Without them, the shipped sample project
(``data/sample``) is run up to export-teachers in the temporary directory first.

Epoch time: the stage's own training step, the loop of ``pipeline/training.fit`` without the
dev evaluation, called piece by piece so each phase is timed: the stage's
``pipeline/student.StudentObjective`` (DistillationStream with only the method's knowledge
columns -> ``emissions`` -> ``loss_from``, i.e. ``losses.student_loss`` with λ fixed at 0.5, so
gold and KD terms are both computed, log Z shared where the method allows) ->
``training.check_finite`` -> backward -> ``training.optimizer_step`` (clip, Adam). Student size,
batch budget, shuffle buffer, K, temperature and mixture come from the project's ``student`` params.
Each method trains a fresh model for ``--epochs`` epochs, ``--repeats`` times. The methods train
in **lockstep**, one step of each in turn (order rotated per epoch), so that load changes on a
shared machine hit all methods alike; a method's epoch time is the sum of its own steps (data
included). Reference: the **baseline** (gold NLL only, no knowledge read), in the same lockstep
epoch; the ratio is the median over epochs of the per-epoch ratio. Every stream is read once
untimed first (page cache) and every model takes 3 untimed steps (torch's first calls).

Memory: one subprocess per (method, allocator setting, scale) trains one epoch streaming the
corpus 1x and 8x (each language's shard lists repeated 8 times) and reports its peak RSS
(``VmHWM`` of ``/proc/self/status``: unlike ``ru_maxrss``, which Linux carries over from the
parent through fork and exec, it starts afresh in the child). Default method: structural, the
one that reads the most knowledge per sentence (edge marginals, L² floats per token). Each runs
with glibc's default malloc and with a fixed ``MALLOC_MMAP_THRESHOLD_``: glibc's dynamic mmap
threshold keeps freed large buffers resident on the heap, which grows RSS with the number of
batches even though the stream holds no more data.

Goals: top-wk (K=10) and posterior <= 1.3x baseline, pos+top-wk <= 1.5x; peak
memory with 8x the corpus <= 1.1x that with 1x.

Run: ``python benchmarks/student.py --threads 1`` (~8 min on 2 busy cores) or add
``--repeats 1 --no-memory`` for a quick look. On a shared machine use ``--threads 1``: torch's
default 2 OpenMP threads made every epoch ~7x slower there when other jobs held the cores.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import torch
from _workload import REPO, copy_tree, link_encoders, machine, median, stopwatch

from structkd.errors import StructkdError
from structkd.pipeline.batching import DistillationStream
from structkd.pipeline.data import shard_paths
from structkd.pipeline.export_teachers import knowledge_cache
from structkd.pipeline.labels import LabelSet
from structkd.pipeline.layout import open_project
from structkd.pipeline.losses import KD_METHODS, gold_nll, posterior_kd
from structkd.pipeline.models import Tagger, TaggerConfig
from structkd.pipeline.params import METHODS, StudentParams
from structkd.pipeline.student import StudentObjective, current_knowledge, student_stream
from structkd.pipeline.training import check_finite, make_optimizer, optimizer_step
from structkd.storage.stream import LanguageShards

LAMBDA = 0.5
GOALS = {"topwk": 1.3, "posterior": 1.3, "pos+topwk": 1.5}
PHASES = ("data", "forward", "loss", "backward", "step")


# ---- data ---------------------------------------------------------------------------------


def snapshot(project: Path, work: Path) -> bool:
    """Copy ``project``'s student training inputs into ``work``; False if they are incomplete."""
    params, layout = open_project(project / "params.yaml")
    cache = knowledge_cache(layout)
    try:
        knowledge = {  # only knowledge of today's teachers (what the stage would accept)
            lang: current_knowledge(cache.entry(lang), lang, layout, params)
            for lang in params.data.languages
        }
        for lang in params.data.languages:
            shard_paths(layout.features(lang, "train"))
    except StructkdError as e:
        print(f"{project}: no usable outputs ({e})")
        return False
    work.mkdir(parents=True, exist_ok=True)
    (work / "params.yaml").write_bytes((project / "params.yaml").read_bytes())
    target = open_project(work / "params.yaml")[1]
    target.labels.parent.mkdir(parents=True, exist_ok=True)
    target.labels.write_bytes(layout.labels.read_bytes())
    for lang in knowledge:
        copy_tree(layout.prepared(lang, "train"), target.prepared(lang, "train"))
        copy_tree(layout.features(lang, "train"), target.features(lang, "train"))
        copy_tree(layout.knowledge(lang), target.knowledge(lang))
    return True


def build_sample(work: Path) -> None:
    """Run the shipped sample project up to export-teachers in ``work`` (the fallback)."""
    from structkd.pipeline import embed, export_teachers, prepare, teacher

    (work / "params.yaml").write_bytes((REPO / "params.yaml").read_bytes())
    copy_tree(REPO / "data" / "sample", work / "data" / "sample")
    link_encoders(work)
    params_path = work / "params.yaml"
    params, layout = open_project(params_path)
    prepare.run(params, layout, params_path)
    embed.run(params, layout)
    for lang in params.data.languages:
        print(teacher.run(params, layout, lang))
    export_teachers.run(params, layout)


def make_stream(root: Path, method: str, cfg: StudentParams, scale: int) -> DistillationStream:
    """The stage's stream for ``method``, each language's shard lists repeated ``scale`` times."""
    params, layout = open_project(root / "params.yaml")
    columns = KD_METHODS[method].columns
    sources = []
    for lang in params.data.languages:
        # the snapshot holds no teachers to recompute the key from; it was verified when copied
        knowledge = knowledge_cache(layout).entry(lang).shards()
        sources.append(
            LanguageShards(
                lang,
                prepared=shard_paths(layout.prepared(lang, "train")) * scale,
                features=shard_paths(layout.features(lang, "train")) * scale,
                knowledge=knowledge * scale if columns else None,
            )
        )
    return student_stream(sources, method, cfg)


# ---- training -----------------------------------------------------------------------------


@dataclass
class EpochTime:
    """Seconds of one epoch, split by phase, and its size."""

    seconds: float = 0.0
    phases: dict[str, float] = field(default_factory=lambda: dict.fromkeys(PHASES, 0.0))
    batches: int = 0
    sentences: int = 0


class Student:
    """A fresh student for ``method`` and the stage's loss, trained epoch by epoch."""

    def __init__(self, stream: DistillationStream, method: str, cfg: StudentParams) -> None:
        self.stream, self.method, self.cfg = stream, method, cfg

    def build(self, labels: LabelSet) -> None:
        torch.manual_seed(self.cfg.seed)
        config = TaggerConfig(
            feature_dim=self.stream.dim,
            n_tags=labels.n_tags,
            hidden=self.cfg.hidden,
            dropout=self.cfg.dropout,
        )
        self.model = Tagger(config, labels)
        self.optimizer = make_optimizer(self.model, self.cfg)
        self.objective = StudentObjective(
            self.model,
            self.stream,
            self.method,  # type: ignore[arg-type]
            self.cfg,
            lam=LAMBDA,
        )

    def begin(self, epoch: int) -> None:
        """Start epoch ``epoch``: its batches and a fresh :class:`EpochTime` in ``current``."""
        self.model.train()
        self.epoch_index = epoch
        self.batches = iter(self.objective.batches(epoch))
        self.current = EpochTime()

    def step(self) -> bool:
        """One training step of the loop of ``training.fit``, timed phase by phase.

        Returns:
            False when the epoch has no batch left.
        """
        out = self.current
        t0 = time.perf_counter()
        batch = next(self.batches, None)
        t1 = time.perf_counter()
        if batch is None:
            out.phases["data"] += t1 - t0
            out.seconds += t1 - t0
            return False
        self.optimizer.zero_grad()
        emissions = self.objective.emissions(batch)
        t2 = time.perf_counter()
        loss = self.objective.loss_from(emissions, batch, self.epoch_index)
        check_finite(loss, self.method, self.epoch_index)
        t3 = time.perf_counter()
        loss.backward()
        t4 = time.perf_counter()
        optimizer_step(self.model, self.optimizer, self.cfg.clip)
        loss.item()
        t5 = time.perf_counter()
        for name, seconds in zip(
            PHASES, (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4), strict=True
        ):
            out.phases[name] += seconds
        out.seconds += t5 - t0
        out.batches += 1
        out.sentences += len(batch.lengths)
        return True

    def epoch(self, epoch: int) -> EpochTime:
        """One whole training epoch on its own."""
        self.begin(epoch)
        while self.step():
            pass
        return self.current


def task_labels(root: Path) -> LabelSet:
    return LabelSet.load(open_project(root / "params.yaml")[1].labels)


def lockstep_epoch(students: list[Student], epoch: int) -> None:
    """One epoch of every student, one step of each in turn (a load change hits all alike)."""
    for student in students:
        student.begin(epoch)
    active = students
    while active:
        active = [student for student in active if student.step()]


def time_methods(
    root: Path, methods: list[str], cfg: StudentParams, epochs: int, repeats: int
) -> dict[str, list[EpochTime]]:
    """Epoch times of every method: ``repeats`` fresh models each, trained in lockstep."""
    labels = task_labels(root)
    students = [Student(make_stream(root, m, cfg, 1), m, cfg) for m in methods]
    for student in students:  # warm the page cache and torch's first calls; not timed
        sum(1 for _ in student.stream)
        student.build(labels)
        student.begin(0)
        for _ in range(3):
            student.step()
    times: dict[str, list[EpochTime]] = defaultdict(list)
    for r in range(repeats):
        for student in students:
            student.build(labels)
        for e in range(epochs):
            shift = (r * epochs + e) % len(students)
            lockstep_epoch(students[shift:] + students[:shift], e)
            for student in students:
                times[student.method].append(student.current)
            print(
                f"  repeat {r + 1}/{repeats} epoch {e}: "
                + " ".join(f"{s.method} {s.current.seconds:.1f}s" for s in students),
                flush=True,
            )
    return times


def posterior_breakdown(root: Path, cfg: StudentParams) -> dict[str, float]:
    """Seconds per epoch of the CRF parts of posterior KD vs the gold NLL, on the same batches.

    The student network's forward and backward are timed on their own; its emissions then become
    a leaf, so each loss backward below covers the CRF (and KL) computation only.
    """
    labels = task_labels(root)
    student = Student(make_stream(root, "posterior", cfg, 1), "posterior", cfg)
    student.build(labels)
    student.model.train()
    student.stream.set_epoch(0)
    parts = dict.fromkeys(
        [
            "network fwd+bwd",
            "gold NLL fwd",
            "gold NLL bwd",
            "log_marginals+KL fwd",
            "log_marginals+KL bwd",
        ],
        0.0,
    )
    for batch in student.stream:
        t0 = time.perf_counter()
        emissions = student.model.emissions(batch.features, batch.mask)
        emissions.sum().backward()
        t1 = time.perf_counter()
        leaf = emissions.detach().requires_grad_()
        gold = gold_nll(student.model.crf, leaf, batch.tags, batch.mask)
        t2 = time.perf_counter()
        gold.backward()
        t3 = time.perf_counter()
        teacher = batch.log_marginals
        assert teacher is not None
        kd = posterior_kd(student.model.crf, leaf, teacher, batch.mask, cfg.temperature)
        t4 = time.perf_counter()
        kd.backward()
        t5 = time.perf_counter()
        for name, seconds in zip(parts, (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4), strict=True):
            parts[name] += seconds
    return parts


# ---- memory -------------------------------------------------------------------------------


def rss_mb(field: str = "VmHWM") -> float:
    """This process's peak (``VmHWM``) or current (``VmRSS``) resident set size in MB (Linux)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024
    raise SystemExit(f"memory figures need Linux /proc/self/status ({field})")


def memory_child(root: Path, method: str, scale: int) -> None:
    """Train one epoch streaming ``scale`` x the corpus; print peak RSS as one JSON line."""
    params = open_project(root / "params.yaml")[0]
    student = Student(make_stream(root, method, params.student, scale), method, params.student)
    student.build(task_labels(root))
    before = rss_mb()
    result = student.epoch(0)
    peak, end = rss_mb(), rss_mb("VmRSS")
    print(
        json.dumps(
            {
                "method": method,
                "scale": scale,
                "before_mb": before,
                "end_mb": end,
                "peak_mb": peak,
                "sentences": result.sentences,
                "seconds": result.seconds,
                "pool": student.stream.peak_pool_sentences,
            }
        )
    )


ALLOCATORS: dict[str, dict[str, str]] = {
    "default malloc": {},
    # glibc raises its mmap threshold after each large free, so later large numpy buffers come
    # from the heap and stay resident; a fixed threshold shows what the stream itself holds
    "MALLOC_MMAP_THRESHOLD_=131072": {"MALLOC_MMAP_THRESHOLD_": "131072"},
}


def measure_memory(root: Path, methods: list[str], scales: tuple[int, ...]) -> list[dict]:
    """Peak RSS of one training epoch per (method, allocator setting, scale), each in a child."""
    rows = []
    for method in methods:
        for allocator, env in ALLOCATORS.items():
            for scale in scales:
                command = [sys.executable, __file__, "--memory-child", str(root), method,
                           str(scale), str(torch.get_num_threads())]  # fmt: skip
                done = subprocess.run(
                    command, check=True, capture_output=True, text=True, env={**os.environ, **env}
                )
                rows.append(
                    {**json.loads(done.stdout.strip().splitlines()[-1]), "allocator": allocator}
                )
                print(f"  memory {method} {allocator} {scale}x: {rows[-1]['peak_mb']:.0f} MB")
    return rows


# ---- report -------------------------------------------------------------------------------


def report(
    times: dict[str, list[EpochTime]],
    breakdown: dict[str, float] | None,
    memory: list[dict],
    cfg: StudentParams,
) -> None:
    first = times["baseline"][0]
    print(
        f"\nstudent epoch: {first.sentences} sentences, {first.batches} batches, hidden "
        f"{cfg.hidden}, max_tokens {cfg.max_tokens}, K={cfg.k}, λ={LAMBDA}"
    )
    print(f"machine: {machine()}")
    head = "".join(f"{p:>9}" for p in PHASES)
    print(
        f"\n{'method':<15}{'epoch s':>8}{'sent/s':>7}{'vs base':>9}{'range':>12}{'goal':>7}{head}"
    )
    verdicts = []
    for method, epochs in times.items():
        seconds = median([t.seconds for t in epochs])
        # ratios within each lockstep epoch, then their median: load changes cancel out
        ratios = [t.seconds / b.seconds for t, b in zip(epochs, times["baseline"], strict=True)]
        ratio = median(ratios)
        spread = f"{min(ratios):.2f}-{max(ratios):.2f}"
        goal = GOALS.get(method)
        phases = "".join(f"{median([t.phases[p] for t in epochs]):>9.2f}" for p in PHASES)
        name = "baseline (ref)" if method == "baseline" else method
        mark = f"<={goal}" if goal else ""
        print(
            f"{name:<15}{seconds:>8.2f}{epochs[0].sentences / seconds:>7.0f}"
            f"{ratio:>8.2f}x{spread:>12}{mark:>7}{phases}"
        )
        if goal:
            verdicts.append(
                f"{method} {ratio:.2f}x (<= {goal}x) {'MET' if ratio <= goal else 'MISSED'}"
            )
    print("phases: median seconds per epoch (data = waiting for the stream)")
    if breakdown:
        print("\nposterior KD, CRF part (seconds per epoch; network timed separately):")
        for name, seconds in breakdown.items():
            print(f"  {name:<24}{seconds:>7.2f}")
        crf = breakdown["log_marginals+KL fwd"] + breakdown["log_marginals+KL bwd"]
        gold = breakdown["gold NLL fwd"] + breakdown["gold NLL bwd"]
        print(f"  log_marginals+KL / gold NLL: {crf / gold:.2f}x")
    if memory:
        print(f"\npeak RSS (one training epoch, buffer {cfg.shuffle_buffer} sentences):")
        by = {(row["method"], row["allocator"], row["scale"]): row for row in memory}
        for method, allocator in dict.fromkeys((r["method"], r["allocator"]) for r in memory):
            one = by[method, allocator, 1]
            many = by[method, allocator, max(s for m, a, s in by if (m, a) == (method, allocator))]
            ratio = many["peak_mb"] / one["peak_mb"]
            print(
                f"  {method} ({allocator}): 1x {one['peak_mb']:.0f} MB ({one['sentences']} sent), "
                f"{many['scale']}x {many['peak_mb']:.0f} MB ({many['sentences']} sent): "
                f"ratio {ratio:.3f}; RSS before the epoch {one['before_mb']:.0f} / "
                f"{many['before_mb']:.0f} MB, at its end {one['end_mb']:.0f} / "
                f"{many['end_mb']:.0f} MB"
            )
            verdicts.append(
                f"memory {method} {allocator} {many['scale']}x/1x {ratio:.3f} (<= 1.1) "
                f"{'MET' if ratio <= 1.1 else 'MISSED'}"
            )
    print("\ngoals: " + "; ".join(verdicts))


def main() -> None:
    if len(sys.argv) == 6 and sys.argv[1] == "--memory-child":
        torch.set_num_threads(int(sys.argv[5]))
        memory_child(Path(sys.argv[2]), sys.argv[3], int(sys.argv[4]))
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--project",
        type=Path,
        default=REPO,
        help="finished project to read (copied; default: the repository)",
    )
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--epochs", type=int, default=1, help="timed epochs per repeat")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--memory-methods",
        nargs="+",
        default=["structural"],
        choices=METHODS,
    )
    parser.add_argument("--scale", type=int, default=8, help="corpus replication for memory")
    parser.add_argument("--no-memory", action="store_true")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    args = parser.parse_args()
    methods = ["baseline", *[m for m in args.methods if m != "baseline"]]
    if args.threads:
        torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory(prefix="structkd-student-") as temp:
        root = Path(temp)
        with stopwatch() as t:
            if not snapshot(args.project, root):
                print("building the sample project up to export-teachers (several minutes)")
                build_sample(root)
        print(
            f"data ready in {t[0]:.1f} s; timing {len(methods)} methods x {args.repeats} "
            f"repeats x {args.epochs} epochs"
        )
        cfg = open_project(root / "params.yaml")[0].student
        times = time_methods(root, methods, cfg, args.epochs, args.repeats)
        breakdown = posterior_breakdown(root, cfg) if "posterior" in methods else None
        memory = (
            [] if args.no_memory else measure_memory(root, args.memory_methods, (1, args.scale))
        )
        report(times, breakdown, memory, cfg)


if __name__ == "__main__":
    main()
