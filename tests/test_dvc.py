"""``dvc repro`` end to end in a tiny git + dvc project, then a student-only experiment.

The project uses the repository's real ``dvc.yaml`` (tests/e2e_project.py). dvc runs each stage
as a ``structkd`` subprocess, found on PATH (this venv's bin directory goes first).
"""

from __future__ import annotations

import hashlib
import re
import shutil
from pathlib import Path

import pytest
from e2e_project import TEACHERS, build_project, init_dvc, read_params, run

pytestmark = pytest.mark.slow
METHODS = ("baseline", "posterior")
# the baseline reads no knowledge: it trains before the export (it may label unlabeled text)
TEACHER_SIDE = ["prepare", "embed", *(f"train-teacher@{lang}" for lang in TEACHERS)]
TEACHER_SIDE += ["train-baseline", "export-teachers"]
STUDENT_SIDE = ["train-student@posterior", "evaluate"]


def ran(output: str) -> list[str]:
    """Stages dvc ran, in order."""
    return re.findall(r"Running stage '([^']+)'", output)


def skipped(output: str) -> list[str]:
    """Stages dvc found unchanged."""
    return re.findall(r"Stage '([^']+)' didn't change, skipping", output)


def digests(root: Path, folder: str) -> dict[str, tuple[str, int]]:
    """sha256 and mtime of every file under ``root/folder``: equal means nothing rewrote them."""
    return {
        str(p.relative_to(root)): (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
        for p in sorted((root / folder).rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def dvc_project(tmp_path_factory: pytest.TempPathFactory, tiny_encoder_dir: Path) -> Path:
    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    root = tmp_path_factory.mktemp("dvc-project")
    build_project(root, tiny_encoder_dir, methods=METHODS)
    init_dvc(root)
    return root


def test_repro_then_student_only_experiment(dvc_project: Path) -> None:
    root = dvc_project
    out = run(["dvc", "repro"], root)
    assert ran(out) == [*TEACHER_SIDE, *STUDENT_SIDE]
    assert "Data and pipelines are up to date." in run(["dvc", "status"], root)
    # bytecode and numba's on-disk kernel cache (what running the tests leaves) are not code
    for folder in ("pipeline", "storage", "stages"):
        (root / folder / "__pycache__").mkdir(exist_ok=True)
        (root / folder / "__pycache__" / "junk.cpython-311.pyc").write_bytes(b"\0")
    (root / "pipeline" / "__pycache__" / "kernels.nbi").write_bytes(b"\0")
    assert "Data and pipelines are up to date." in run(["dvc", "status"], root)
    for path in ("metrics/Teachers.json", "plots/per_language.csv", "reports/pipeline/results.md"):
        assert (root / path).is_file()
    metrics = run(["dvc", "metrics", "show"], root)
    rows = {line.split()[0]: line.split()[1:] for line in metrics.splitlines() if line.strip()}
    header = rows.pop("Path")
    assert set(TEACHERS) <= set(header) and "avg" in header
    assert set(rows) == {f"metrics/{m}.json" for m in ("Teachers", *METHODS)}
    assert all(len(cells) == len(header) for cells in rows.values())

    run(["git", "add", "-A"], root)
    run(["git", "commit", "-q", "-m", "dvc repro"], root)
    teachers, knowledge = digests(root, "models/teachers"), digests(root, "knowledge")
    students = {m: digests(root, f"models/students/{m}") for m in METHODS}

    out = run(["dvc", "exp", "run", "-S", "student.temperature=2.0"], root)
    # no teacher ran and no knowledge was exported again: dvc skipped them, files untouched.
    # The baseline reads no temperature: it trained again (dvc tracks the student section
    # whole) to the same weights, so the export it feeds did not run
    assert ran(out) == ["train-baseline", *STUDENT_SIDE]
    assert skipped(out) == [s for s in TEACHER_SIDE if s != "train-baseline"]
    assert digests(root, "models/teachers") == teachers
    assert digests(root, "knowledge") == knowledge
    assert read_params(root / "params.yaml")["student"]["temperature"] == 2.0
    after = {m: digests(root, f"models/students/{m}") for m in METHODS}
    weights = "models/students/{}/model.safetensors"
    # the temperature reached the posterior student; the baseline ignores it (same weights)
    assert (
        after["posterior"][weights.format("posterior")][0]
        != (students["posterior"][weights.format("posterior")][0])
    )
    assert (
        after["baseline"][weights.format("baseline")][0]
        == (students["baseline"][weights.format("baseline")][0])
    )
    assert "Data and pipelines are up to date." in run(["dvc", "status"], root)


def test_loss_edit_reruns_only_students_and_evaluate(dvc_project: Path) -> None:
    """Editing pipeline/losses.py leaves teachers and knowledge alone (dvc.yaml's code deps):
    the baseline trains again to the same weights, so the export it feeds stays skipped."""
    root = dvc_project
    run(["dvc", "repro"], root)
    losses = root / "pipeline" / "losses.py"
    original = losses.read_text("utf-8")
    losses.write_text(original + "\n# an edit\n", "utf-8")
    try:
        status = run(["dvc", "status"], root)
        changed = set(re.findall(r"^([\w@+-]+):", status, flags=re.MULTILINE))
        assert changed == {"train-baseline", "train-student@posterior"}, status
        out = run(["dvc", "repro"], root)
        assert ran(out) == ["train-baseline", *STUDENT_SIDE]
        assert skipped(out) == [s for s in TEACHER_SIDE if s != "train-baseline"]
    finally:
        losses.write_text(original, "utf-8")
