"""Where each stage reads and writes, relative to the project root (the folder of params.yaml).

One place for paths keeps ``dvc.yaml`` outs and the code from drifting apart.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from structkd.pipeline.params import SELF, Params, load_params


@dataclass(frozen=True)
class Layout:
    """Paths of the pipeline's artefacts under ``root``."""

    root: Path

    def source(self, path: str) -> Path:
        """A corpus path from params.yaml (relative to the project root)."""
        return (self.root / path).resolve()

    @property
    def labels(self) -> Path:
        return self.root / "data" / "prepared" / "labels.json"

    def prepared(self, lang: str, split: str) -> Path:
        return self.root / "data" / "prepared" / lang / split

    def features(self, lang: str, split: str) -> Path:
        return self.root / "data" / "features" / lang / split

    @property
    def encoders(self) -> Path:
        return self.root / "data" / "encoders"

    def teacher(self, lang: str) -> Path:
        """The teacher of ``lang`` (of an ensemble: its first member)."""
        return self.root / "models" / "teachers" / lang

    def teacher_members(self, lang: str, seeds: Sequence[int]) -> list[Path]:
        """Every member of ``lang``'s teacher ensemble (:func:`member_folders`)."""
        return member_folders(self.teacher(lang), seeds)

    def labeller_members(self, name: str, seeds: Sequence[int]) -> list[Path]:
        """The models that label text as ``name`` of ``data.unlabeled.<lang>.teachers``: the
        teacher ensemble of a language, or the baseline student for :data:`SELF`."""
        if name == SELF:
            return [self.student("baseline")]
        return self.teacher_members(name, seeds)

    def knowledge(self, lang: str) -> Path:
        return self.root / "knowledge" / lang

    def student(self, method: str) -> Path:
        return self.root / "models" / "students" / method

    @property
    def metrics(self) -> Path:
        return self.root / "metrics"

    @property
    def plots(self) -> Path:
        return self.root / "plots"

    @property
    def reports(self) -> Path:
        """The pipeline's own report (``reports/`` also holds hand-written and experiment ones)."""
        return self.root / "reports" / "pipeline"


def open_project(params_path: Path) -> tuple[Params, Layout]:
    """Load params.yaml and the layout rooted at its folder."""
    params = load_params(params_path)
    return params, Layout(params_path.resolve().parent)


def member_folders(folder: Path, seeds: Sequence[int]) -> list[Path]:
    """An ensemble's folders: the first member in ``folder``, the others in its
    ``members/seed-<s>/`` (so a single teacher keeps the one-teacher layout)."""
    return [folder, *(folder / "members" / f"seed-{s}" for s in seeds[1:])]
