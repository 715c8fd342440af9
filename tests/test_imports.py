"""The import structure of the code base, read from the source with ``ast`` (nothing is imported).

Rules:

* no import cycle among the modules of ``medimg``, ``tasks`` and ``flows``, counting imports made
  inside functions (a cycle hidden in a function body is still a cycle) but not those under
  ``if TYPE_CHECKING:``;
* imports go one way, ``flows`` -> ``tasks`` -> ``medimg``: ``tasks`` never imports ``flows``, and
  ``medimg`` imports neither, nor Prefect, except ``medimg/cli.py``, the one module that starts a flow;
* the pipeline steps (``medimg/steps``) do not import each other, and neither they nor the tasks and
  flows import MLflow: :mod:`medimg.tracking` and :mod:`medimg.registry` are the MLflow I/O;
* an import inside a function says why it is there: a comment on its line, or on the line just
  above the block of imports it belongs to.
"""

from __future__ import annotations

import ast
import functools
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("medimg", "tasks", "flows")


@dataclass(frozen=True)
class Import:
    module: str  # the importing module
    target: str  # the imported name, dotted (``medimg.data.sources``, ``mlflow.exceptions``, ...)
    line: int
    in_function: bool


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


@functools.cache
def _modules() -> dict[str, Path]:
    return {_module_name(p): p for package in PACKAGES for p in sorted((ROOT / package).rglob("*.py"))}


def _type_checking_nodes(tree: ast.AST) -> set[int]:
    out: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            out.update(id(sub) for sub in ast.walk(node))
    return out


def _imports(module: str, path: Path) -> list[Import]:
    tree = ast.parse(path.read_text(), str(path))
    skip = _type_checking_nodes(tree)
    out: list[Import] = []

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            inside = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            if id(child) not in skip:
                if isinstance(child, ast.Import):
                    out.extend(Import(module, alias.name, child.lineno, inside) for alias in child.names)
                elif isinstance(child, ast.ImportFrom):
                    assert not child.level, f"{path}:{child.lineno}: relative import; the project imports absolutely"
                    base = child.module or ""
                    out.append(Import(module, base, child.lineno, inside))
                    out.extend(Import(module, f"{base}.{alias.name}", child.lineno, inside) for alias in child.names)
            visit(child, inside)

    visit(tree, False)
    return out


def _resolve(target: str, modules: dict[str, Path]) -> str | None:
    """The project module ``target`` names (a module, or a name inside one), or None if outside the project."""
    while target and target not in modules:
        target = target.rpartition(".")[0]
    return target or None


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        for imp in _imports(name, path):
            target = _resolve(imp.target, modules)
            if target is not None and target != name and not name.startswith(f"{target}."):  # a package's own __init__
                graph[name].add(target)
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def connect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            connect(v)
    return found


def _all_imports() -> list[Import]:
    return [imp for name, path in _modules().items() for imp in _imports(name, path)]


def _top(target: str) -> str:
    return target.split(".")[0]


def test_the_checker_sees_a_cycle_and_an_import_inside_a_function(tmp_path):
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert _cycles(graph) == [["a", "b", "c"]]
    source = tmp_path / "m.py"
    source.write_text("import os\n\ndef f():\n    import json\n    return json\n")
    assert [(i.target, i.in_function) for i in _imports("m", source)] == [("os", False), ("json", True)]


def test_no_import_cycles():
    assert _cycles(_graph()) == []


def test_imports_go_one_way_flows_tasks_medimg():
    wrong = []
    for imp in _all_imports():
        top = _top(imp.target)
        if imp.module.startswith("tasks") and top == "flows":
            wrong.append(imp)
        if imp.module.startswith("medimg") and imp.module != "medimg.cli" and top in ("flows", "tasks", "prefect"):
            wrong.append(imp)
    assert wrong == []


def test_steps_import_no_other_step_and_nothing_but_tracking_and_registry_import_mlflow():
    wrong = []
    for imp in _all_imports():
        is_step = imp.module.startswith("medimg.steps.")
        if is_step and imp.target.startswith("medimg.steps.") and _resolve(imp.target, _modules()) != imp.module:
            wrong.append(imp)
        if (is_step or _top(imp.module) in ("flows", "tasks")) and _top(imp.target) == "mlflow":
            wrong.append(imp)
    assert wrong == []


def test_every_import_inside_a_function_says_why():
    silent = []
    for name, path in _modules().items():
        lines = path.read_text().splitlines()
        for imp in {i.line: i for i in _imports(name, path) if i.in_function}.values():
            first = last = imp.line - 1  # 0-based: the block of import lines around this one
            while first > 0 and lines[first - 1].strip().startswith(("import ", "from ")):
                first -= 1
            while last + 1 < len(lines) and lines[last + 1].strip().startswith(("import ", "from ")):
                last += 1
            said = any("#" in line for line in lines[first : last + 1])
            if not (said or (first > 0 and lines[first - 1].strip().startswith("#"))):
                silent.append(f"{path.relative_to(ROOT)}:{imp.line}: {lines[imp.line - 1].strip()}")
    assert silent == [], "imports inside functions without a reason beside them:\n" + "\n".join(silent)
