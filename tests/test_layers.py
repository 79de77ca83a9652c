"""Layers only look down: bench/ -> app/ -> services/ -> shared/ (docs/architecture.md).

Every module's imports are read from its syntax tree (no import runs): ``import x``, ``from x
import y`` (relative ones resolved), wherever they are (lazy imports inside functions too), and
``importlib.import_module("x")`` / ``__import__("x")`` with a literal name.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# layer -> the top-level packages of this repository it must never import
FORBIDDEN = {
    "shared": {"services", "app", "bench", "tests"},
    "services": {"app", "bench", "tests"},
    "app": {"bench", "tests"},
    "bench": {"tests"},
}


def modules(layer: str, root: Path = ROOT) -> list[Path]:
    return sorted(p for p in (root / layer).rglob("*.py") if "__pycache__" not in p.parts)


def imported(path: Path, root: Path = ROOT) -> list[tuple[int, str]]:
    """(line, module name) of every import in the file."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = path.relative_to(root).with_suffix("").parts[:-1]
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else ()  # from . / from .. import
            if node.module:
                found.append((node.lineno, ".".join([*base, node.module])))
            else:  # from . import x: x is a module of that package
                found += [(node.lineno, ".".join([*base, a.name])) for a in node.names]
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant):
            func = node.func
            fname = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            if fname in ("import_module", "__import__") and isinstance(node.args[0].value, str):
                found.append((node.lineno, node.args[0].value))
    return found


def violations(layer: str, root: Path = ROOT) -> list[str]:
    out = []
    for path in modules(layer, root):
        for line, name in sorted(imported(path, root)):
            if name.split(".")[0] in FORBIDDEN[layer]:
                out.append(f"{path.relative_to(root)}:{line} imports {name}")
    return out


@pytest.mark.parametrize("layer", sorted(FORBIDDEN))
def test_layer_imports_only_downwards(layer: str) -> None:
    assert modules(layer), f"{layer}/ has no modules"
    found = violations(layer)
    assert not found, f"{layer}/ must not import {', '.join(sorted(FORBIDDEN[layer]))}:\n  " + "\n  ".join(found)


def test_the_checker_sees_every_kind_of_import(tmp_path: Path) -> None:
    pkg = tmp_path / "shared" / "sub"
    pkg.mkdir(parents=True)
    (pkg / "m.py").write_text(
        "import os\n"
        "from shared import bus\n"
        "from . import sibling\n"
        "def f():\n"
        "    from services.detector import engine\n"
        "    import app.cli\n"
        "    from ... import tests\n"
        "    __import__('bench.common')\n"
        "    importlib.import_module('app.up')\n"
    )
    found = [v.split(" imports ")[1] for v in violations("shared", tmp_path)]
    assert sorted(found) == sorted(["services.detector", "app.cli", "tests", "bench.common", "app.up"])
