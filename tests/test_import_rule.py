"""The layering rule of docs/design.md §4: `dcr_sidecar/oauth/` is pure protocol and imports, at
import time, only the standard library and other `dcr_sidecar.oauth` modules.

Imports under ``if TYPE_CHECKING:`` and inside functions (lazy, optional hooks) are allowed.
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

import dcr_sidecar.oauth

OAUTH_DIR = Path(dcr_sidecar.oauth.__file__).parent
MODULES = sorted(OAUTH_DIR.glob("*.py"))
PACKAGE = "dcr_sidecar.oauth"


def _is_type_checking(test: ast.expr) -> bool:
    if isinstance(test, ast.Name):
        return test.id == "TYPE_CHECKING"
    return isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"


def _import_time_nodes(body: list[ast.stmt]) -> Iterator[ast.stmt]:
    """Statements that run when the module is imported: not function bodies, not TYPE_CHECKING."""
    for node in body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            continue
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            yield from _import_time_nodes(node.orelse)
            continue
        yield node
        if isinstance(node, ast.ClassDef):
            yield from _import_time_nodes(node.body)
        elif isinstance(node, ast.If | ast.For | ast.While):
            yield from _import_time_nodes(node.body)
            yield from _import_time_nodes(node.orelse)
        elif isinstance(node, ast.With):
            yield from _import_time_nodes(node.body)
        elif isinstance(node, ast.Try):
            yield from _import_time_nodes(node.body)
            for handler in node.handlers:
                yield from _import_time_nodes(handler.body)
            yield from _import_time_nodes(node.orelse)
            yield from _import_time_nodes(node.finalbody)


def import_time_imports(path: Path) -> list[str]:
    """Absolute names of the modules `path` imports at import time."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    names: list[str] = []
    for node in _import_time_nodes(tree.body):
        if isinstance(node, ast.Import):
            names.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against the package
                base = PACKAGE.rsplit(".", node.level - 1)[0] if node.level > 1 else PACKAGE
                names.append(f"{base}.{node.module}" if node.module else base)
            else:
                names.append(node.module or "")
    return names


def _allowed(name: str) -> bool:
    top = name.split(".", 1)[0]
    return (
        top == "__future__"
        or top in sys.stdlib_module_names
        or (name == PACKAGE or name.startswith(PACKAGE + "."))
    )


def test_the_oauth_package_has_modules() -> None:
    """The glob finds the package (guards against a vacuous pass)."""
    assert {p.name for p in MODULES} >= {"__init__.py", "metadata.py", "registration.py"}


@pytest.mark.parametrize("path", MODULES, ids=lambda p: p.name)
def test_oauth_module_imports_only_stdlib_and_oauth(path: Path) -> None:
    """No third-party or other dcr_sidecar module is imported at import time."""
    offending = [name for name in import_time_imports(path) if not _allowed(name)]
    assert offending == [], f"{path.name} imports {offending} at import time"


def test_checker_flags_forbidden_imports(tmp_path: Path) -> None:
    """The checker itself catches third-party and sibling-layer imports, and skips lazy ones."""
    module = tmp_path / "sample.py"
    module.write_text(
        "from __future__ import annotations\n"
        "import json\n"
        "from typing import TYPE_CHECKING\n"
        "import yaml\n"
        "from dcr_sidecar import config\n"
        "from dcr_sidecar.errors import ConfigError\n"
        "from . import text\n"
        "try:\n    import aiohttp\nexcept ImportError:\n    pass\n"
        "if TYPE_CHECKING:\n    from pydantic import BaseModel\n"
        "def lazy() -> None:\n    import pydantic\n"
        "class C:\n    import structlog\n",
        encoding="utf-8",
    )
    offending = [n for n in import_time_imports(module) if not _allowed(n)]
    assert offending == ["yaml", "dcr_sidecar", "dcr_sidecar.errors", "aiohttp", "structlog"]
