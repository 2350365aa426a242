"""The sample pipeline on one torch device: every stage's wall time (the GPU check).

Copies the shipped sample cut to ``--limit`` sentences per split into a temporary project with
``runtime.device`` set to ``--device`` (default ``cuda``; ``cpu`` works anywhere), short teacher
and student runs (``--epochs``), and runs each stage as ``structkd stage ...`` in its own
process, in pipeline order: prepare, embed, train-teacher per language, export-teachers,
train-student per ``--methods``, evaluate. Prints one line per stage and the students' scores.

Run: ``python benchmarks/device.py --device cpu`` (on a GPU machine: no option).
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import yaml
from _workload import machine, sample_project, structkd


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", help="runtime.device (default cuda)")
    parser.add_argument("--limit", type=int, default=100, help="sentences per split")
    parser.add_argument("--epochs", type=int, default=2, help="teacher and student max_epochs")
    parser.add_argument("--methods", nargs="+", default=["baseline", "posterior"])
    args = parser.parse_args()
    print(f"machine: {machine()}")
    with tempfile.TemporaryDirectory(prefix="structkd-device-") as work:
        params = sample_project(
            Path(work),
            args.limit,
            runtime={"device": args.device},
            teacher={"max_epochs": args.epochs},
            student={"max_epochs": args.epochs, "methods": args.methods},
        )
        languages = yaml.safe_load(params.read_text("utf-8"))["data"]["languages"]
        stages = [
            ("prepare",),
            ("embed",),
            *(("train-teacher", lang) for lang in languages),
            ("export-teachers",),
            *(("train-student", method) for method in args.methods),
            ("evaluate",),
        ]
        print(f"device {args.device}, {args.limit} sentences per split, {args.epochs} epochs:")
        total = 0.0
        for stage in stages:
            seconds = structkd("stage", *stage, params=params)
            total += seconds
            print(f"  {' '.join(stage):<28} {seconds:7.1f} s", flush=True)
        print(f"  {'total':<28} {total:7.1f} s")
        for method in args.methods:
            metrics = json.loads((Path(work) / "metrics" / f"{method}.json").read_text())
            print(f"  {method} test: " + " ".join(f"{k} {v:.2f}" for k, v in metrics.items()))


if __name__ == "__main__":
    main()
