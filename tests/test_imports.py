"""The architecture's import rules (STYLE.md): models know nothing of the node or queue,
the node never imports the workers or the research code, and entry points are leaves."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
ENTRY_POINTS = {"pacs_node.cli", "lab.cli", "lab.gpu_ladder", "workers.app", "workers.tasks"}
PACKAGES = ("pacs_node", "workers", "models", "lab")


def _imports(package: str) -> list[tuple[Path, str]]:
    found = []
    for path in (ROOT / package).rglob("*.py"):
        if "migrations" in path.parts:
            continue
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                found += [(path, alias.name) for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                found.append((path, node.module))
                # `from models import registry` imports the module models.registry.
                found += [(path, f"{node.module}.{alias.name}") for alias in node.names]
    return found


@pytest.mark.parametrize(
    ("package", "forbidden"),
    [
        ("models", ("pacs_node", "workers", "lab")),
        ("pacs_node", ("workers", "lab")),
        ("workers", ("lab",)),
    ],
)
def test_forbidden_imports(package: str, forbidden: tuple[str, ...]) -> None:
    bad = [
        f"{path.relative_to(ROOT)} imports {name}"
        for path, name in _imports(package)
        if name.split(".")[0] in forbidden
    ]
    assert not bad, bad


def test_the_node_runtime_needs_only_the_model_contract() -> None:
    """The node (``pacs_node``, ``workers``) uses models through the contract, the registry,
    checkpoints and the engine; training, metrics, phantoms and simulation belong to ``lab``."""
    allowed = ("models.base", "models.registry", "models.checkpoint", "models.engine")
    bad = [
        f"{path.relative_to(ROOT)} imports {name}"
        for package in ("pacs_node", "workers")
        for path, name in _imports(package)
        if name.split(".")[0] == "models"
        and name != "models"  # `from models import x`: judged by its models.x entry
        and not any(name == module or name.startswith(module + ".") for module in allowed)
    ]
    assert not bad, bad


def test_entry_points_are_leaves() -> None:
    importers = [
        f"{path.relative_to(ROOT)} imports {name}"
        for package in PACKAGES
        for path, name in _imports(package)
        if name in ENTRY_POINTS
        and not (name == "workers.app" and path.name == "tasks.py")
        # `python -m pacs_node` is the same command line, an entry point itself.
        and path.name != "__main__.py"
    ]
    assert not importers, importers
