"""The floor plan: every folder is one layer, and every import points down (README, "The house").

The graph is read from the source with ``ast`` (imports inside functions and under
``TYPE_CHECKING`` count too), so an edge cannot hide; ``importlib`` and ``__import__`` are
refused outright, since an import made from a string is an edge no reader or tool can see.
"""
from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# Lowest first. A module may import its own layer and the layers below it, never above.
LAYERS = ("foundation", "schemas", "domain", "streams", "agents", "devstack", "relance", "bench")
RANK = {name: rank for rank, name in enumerate(LAYERS)}
# What the pure domain must never touch (spec: the rules live in a module with no Kafka,
# Faust or Redis import), and no network either.
DOMAIN_FORBIDDEN = ("faust", "aiokafka", "redis", "aiohttp", "mode", "rocksdict", "socket", "urllib")


def modules() -> list[Path]:
    return sorted(path for layer in LAYERS for path in (ROOT / layer).rglob("*.py"))


def imported(path: Path) -> list[tuple[int, str]]:
    """(line, top-level name) of every module the file imports."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module))
        elif isinstance(node, ast.ImportFrom):
            raise AssertionError(f"{path}:{node.lineno}: relative import; name the layer")
    return found


def layer_of(path: Path) -> str:
    return path.relative_to(ROOT).parts[0]


def upward_imports() -> list[str]:
    wrong = []
    for path in modules():
        own = RANK[layer_of(path)]
        for line, name in imported(path):
            top = name.split(".")[0]
            if top in RANK and RANK[top] > own:
                wrong.append(f"{path.relative_to(ROOT)}:{line} imports {name} ({top} is above {layer_of(path)})")
    return wrong


def test_every_layer_is_a_folder_of_the_tree():
    assert [name for name in LAYERS if not (ROOT / name / "__init__.py").is_file()] == []


def test_no_import_points_up():
    assert upward_imports() == []


def test_no_import_is_hidden_behind_a_string():
    hidden = []
    for path in modules():
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [alias.name for alias in node.names] + [getattr(node, "module", None) or ""]
                if any(name.split(".")[0] == "importlib" for name in names):
                    hidden.append(f"{path.relative_to(ROOT)}:{node.lineno} imports importlib")
            if isinstance(node, ast.Name) and node.id == "__import__":
                hidden.append(f"{path.relative_to(ROOT)}:{node.lineno} calls __import__")
    assert hidden == []


def test_the_domain_does_no_io():
    wrong = [f"{path.relative_to(ROOT)}:{line} imports {name}"
             for path in (ROOT / "domain").rglob("*.py") for line, name in imported(path)
             if name.split(".")[0] in DOMAIN_FORBIDDEN]
    assert wrong == []


def test_the_foundation_imports_nothing_of_ours():
    wrong = [f"{path.relative_to(ROOT)}:{line} imports {name}"
             for path in (ROOT / "foundation").rglob("*.py") for line, name in imported(path)
             if name.split(".")[0] in RANK and name.split(".")[0] != "foundation"]
    assert wrong == []


@pytest.mark.parametrize("source, expected", [
    ("from agents.engine import Engine\n", "domain/x.py:1 imports agents.engine (agents is above domain)"),
    ("def f():\n    import relance.cli\n", "domain/x.py:2 imports relance.cli (relance is above domain)"),
])
def test_the_check_sees_an_upward_import(tmp_path, monkeypatch, source, expected):
    # The check itself can fail: a planted upward import in a copy of the tree is reported.
    for name in LAYERS:
        (tmp_path / name).mkdir()
    (tmp_path / "domain" / "x.py").write_text(source)
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    assert upward_imports() == [expected]
