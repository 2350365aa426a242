"""The committed experiment report is what the committed script makes of the committed results."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

REPO = Path(__file__).resolve().parents[1]


def load_reporter() -> ModuleType:
    path = REPO / "experiments" / "report.py"
    spec = importlib.util.spec_from_file_location("experiments_report", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_report_is_rebuilt_from_committed_results(tmp_path: Path) -> None:
    """reports/results.md must not drift from the results and script it claims to come from;
    every task of the comparison has at least three seeds."""
    reporter = load_reporter()
    out = reporter.report(tmp_path)
    assert out.read_text("utf-8") == (REPO / "reports" / "results.md").read_text("utf-8")
    for task in reporter.TASKS:
        assert reporter.collect(task)["seeds"] >= 3, task
        assert (tmp_path / "figures" / f"{task}_per_language.png").stat().st_size > 0
        assert (tmp_path / "figures" / f"{task}_learning_curves.png").stat().st_size > 0
