"""Which structkd source files a stage runs: the transitive closure of its module's imports.

``dvc.yaml`` lists exactly these files as each stage's code deps (``tests/test_dvc_deps.py``
checks it), so editing ``pipeline/losses.py`` re-runs the students and ``evaluate``, never the
teachers or the export. Imports inside functions count (stages import lazily to keep ``--help``
fast); imports under ``if TYPE_CHECKING:`` do not (they never run).

Run ``python tests/import_closure.py`` to print each stage's code deps for ``dvc.yaml``.
"""

from __future__ import annotations

import ast
from functools import cache
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
# import name prefix -> source folder (pyproject.toml's package-dir)
PACKAGES = {
    "structkd.pipeline": "pipeline",
    "structkd.stages": "stages",
    "structkd.storage": "storage",
    "structkd": "structkd",
}


def module_file(name: str) -> Path | None:
    """The source file of module ``name`` (a package's ``__init__.py``), or None if not ours."""
    for prefix, folder in PACKAGES.items():
        if name == prefix or name.startswith(prefix + "."):
            rest = name[len(prefix) :].lstrip(".").split(".") if name != prefix else []
            base = REPO / folder / Path(*rest) if rest else REPO / folder
            if base.with_suffix(".py").is_file():
                return base.with_suffix(".py")
            if (base / "__init__.py").is_file():
                return base / "__init__.py"
            return None
    return None


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def imported_modules(path: Path) -> set[str]:
    """Every module name ``path`` imports at run time (``from a import b`` yields a and a.b)."""
    tree = ast.parse(path.read_text("utf-8"))
    skip: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and _is_type_checking(node):
            skip.update(id(n) for child in node.body for n in ast.walk(child))
    names: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


@cache
def closure(module: str) -> frozenset[Path]:
    """Source files of ``module`` and of everything it imports from structkd, transitively."""
    seen: set[Path] = set()
    todo = [module]
    while todo:
        path = module_file(todo.pop())
        if path is None or path in seen:
            continue
        seen.add(path)
        todo.extend(imported_modules(path))
        parts = path.relative_to(REPO).with_suffix("").parts
        # importing a.b.c runs a/__init__.py and a/b/__init__.py too
        package = next(p for p, f in PACKAGES.items() if f == parts[0])
        for depth in range(len(parts) - 1):
            todo.append(".".join([package, *parts[1 : depth + 1]]))
    return frozenset(seen)


def stage_command(stage: str) -> str:
    """The ``structkd stage <command>`` a ``dvc.yaml`` stage runs (``train-baseline`` runs
    ``train-student baseline``)."""
    body = yaml.safe_load((REPO / "dvc.yaml").read_text("utf-8"))["stages"][stage]
    return body.get("do", body)["cmd"].split()[2]


def stage_code_deps(stage: str) -> list[str]:
    """Repository-relative source files the ``dvc.yaml`` stage ``stage`` runs, sorted."""
    files = closure(f"structkd.stages.{stage_command(stage).replace('-', '_')}")
    return sorted(p.relative_to(REPO).as_posix() for p in files)


if __name__ == "__main__":
    for name in yaml.safe_load((REPO / "dvc.yaml").read_text("utf-8"))["stages"]:
        print(f"{name}:")
        for dep in stage_code_deps(name):
            print(f"  - {dep}")
