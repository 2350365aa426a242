"""The committed experiment report is what the committed script makes of the committed results."""

from __future__ import annotations

from pathlib import Path

from experiment_scripts import load_script

REPO = Path(__file__).resolve().parents[1]


def test_report_is_rebuilt_from_committed_results(tmp_path: Path) -> None:
    """reports/results.md must not drift from the results and script it claims to come from;
    every task of the comparison has at least three seeds."""
    reporter = load_script("report")
    out = reporter.report(tmp_path)
    assert out.read_text("utf-8") == (REPO / "reports" / "results.md").read_text("utf-8")
    for task in reporter.TASKS:
        assert reporter.collect(task)["seeds"] >= 3, task
        assert (tmp_path / "figures" / f"{task}_per_language.png").stat().st_size > 0
        assert (tmp_path / "figures" / f"{task}_learning_curves.png").stat().st_size > 0
