"""Every public function, method and class of ``medimg`` has a docstring.

Public: a module-level function or class, or a method of a public class, whose name does not start
with ``_`` (in a module whose own name does not start with ``_``, other than ``__init__``). Nested
functions and classes are implementation details and are not checked. Read from the source with
:mod:`ast`: nothing is imported.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "medimg"


def _public(name: str) -> bool:
    return not name.startswith("_")


def missing_docstrings(package: Path) -> list[str]:
    """``path:line name`` of each public definition under ``package`` without a docstring."""
    found = []
    for path in sorted(package.rglob("*.py")):
        if path.stem != "__init__" and not _public(path.stem):
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        rel = path.relative_to(package.parent).as_posix()
        for node in tree.body:
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef) and _public(node.name):
                if ast.get_docstring(node) is None:
                    found.append(f"{rel}:{node.lineno} {node.name}")
                if isinstance(node, ast.ClassDef):
                    for item in node.body:
                        if (
                            isinstance(item, ast.FunctionDef | ast.AsyncFunctionDef)
                            and _public(item.name)
                            and ast.get_docstring(item) is None
                        ):
                            found.append(f"{rel}:{item.lineno} {node.name}.{item.name}")
    return found


def test_the_checker_finds_a_missing_docstring(tmp_path):
    (tmp_path / "mod.py").write_text(
        'def documented():\n    """Yes."""\n\n\ndef bare():\n    pass\n\n\ndef _private():\n    pass\n\n\n'
        'class Thing:\n    """A thing."""\n\n    def method(self):\n        return 1\n\n    def _hidden(self):\n'
        "        return 2\n"
    )
    assert missing_docstrings(tmp_path) == [f"{tmp_path.name}/mod.py:5 bare", f"{tmp_path.name}/mod.py:16 Thing.method"]


def test_every_public_definition_has_a_docstring():
    missing = missing_docstrings(PACKAGE)
    assert missing == [], f"{len(missing)} public definitions without a docstring:\n" + "\n".join(missing)
