"""storage/ is the layer under pipeline/: numpy and pyarrow only, never torch or the pipeline."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

STORAGE = Path(__file__).resolve().parents[1] / "storage"
FORBIDDEN = ("torch", "structkd.pipeline", "structkd.stages", "structkd.cli")


def imported_modules(tree: ast.AST, package: str) -> list[str]:
    """Every module an AST imports, at any depth (function-level imports included)."""
    names = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against the package
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                names.append(f"{base}.{node.module}" if node.module else base)
            else:
                names.append(node.module or "")
    return names


def forbidden(name: str) -> bool:
    return any(name == f or name.startswith(f + ".") for f in FORBIDDEN)


@pytest.mark.parametrize("path", sorted(STORAGE.glob("*.py")), ids=lambda p: p.name)
def test_storage_module_imports_neither_torch_nor_pipeline(path: Path) -> None:
    tree = ast.parse(path.read_text("utf-8"), str(path))
    bad = [name for name in imported_modules(tree, "structkd.storage") if forbidden(name)]
    assert not bad, f"{path.name} imports {bad}"


def test_the_scan_sees_function_level_and_relative_imports() -> None:
    source = (
        "import numpy\n"
        "def f():\n    import torch.nn\n"
        "class C:\n    def g(self):\n        from structkd.pipeline import data\n"
        "from ..pipeline import crf\n"
    )
    names = imported_modules(ast.parse(source), "structkd.storage")
    assert sorted(n for n in names if forbidden(n)) == [
        "structkd.pipeline",
        "structkd.pipeline",
        "torch.nn",
    ]
