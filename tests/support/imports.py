"""The import graph of `stream_app`, read from the source tree (no module is imported).

Module names are derived from the files, so the architecture tests follow renames.
"""

from __future__ import annotations

import ast
import sys
from dataclasses import dataclass
from pathlib import Path

from tests.support.paths import REPO

PACKAGE = "stream_app"
PACKAGE_DIR = REPO / PACKAGE


@dataclass(frozen=True)
class Import:
    target: str  # a module of the package, or the top-level name of a third-party/stdlib one
    line: int
    top_level: bool  # executed when the importing module is imported (not inside a def)


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def package_modules() -> dict[str, Path]:
    """Every module of the package: dotted name -> file."""
    return {module_name(p): p for p in sorted(PACKAGE_DIR.rglob("*.py"))}


def _resolve_relative(module: str, is_package: bool, level: int, name: str | None) -> str:
    base = module.split(".")
    if not is_package:
        base = base[:-1]
    if level > 1:
        base = base[: len(base) - (level - 1)]
    return ".".join(base + ([name] if name else []))


def imports_of(module: str, path: Path, modules: dict[str, Path]) -> list[Import]:
    """What `module` imports; `from pkg import name` counts as importing `pkg.name` when
    that is a module, else `pkg` itself."""
    tree = ast.parse(path.read_text(), str(path))
    out: list[Import] = []
    is_package = path.name == "__init__.py"
    for node, top in _walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                out.append(Import(_owning_module(alias.name, modules), node.lineno, top))
        elif isinstance(node, ast.ImportFrom):
            base = (_resolve_relative(module, is_package, node.level, node.module)
                    if node.level else node.module or "")
            for alias in node.names:
                candidate = f"{base}.{alias.name}"
                target = candidate if candidate in modules else _owning_module(base, modules)
                out.append(Import(target, node.lineno, top))
    return out


def _type_checking_only(node: ast.AST) -> bool:
    """`if TYPE_CHECKING:` blocks never run: their imports are for the type checker."""
    if not isinstance(node, ast.If):
        return False
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _walk(tree: ast.Module):
    """(node, True unless inside a function: a lazy import) for every node that runs."""
    stack: list[tuple[ast.AST, bool]] = [(tree, True)]
    while stack:
        node, top = stack.pop()
        if _type_checking_only(node):
            stack.extend((child, top) for child in node.orelse)
            continue
        yield node, top
        inner = top and not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda)
        stack.extend((child, inner) for child in ast.iter_child_nodes(node))


def _owning_module(name: str, modules: dict[str, Path]) -> str:
    """`stream_app.x.y` -> the longest prefix that is a module; others -> top-level name."""
    if name == PACKAGE or name.startswith(PACKAGE + "."):
        parts = name.split(".")
        while parts and ".".join(parts) not in modules:
            parts.pop()
        return ".".join(parts) or PACKAGE
    return name.split(".")[0]


def import_graph(*, top_level_only: bool = False) -> dict[str, list[Import]]:
    modules = package_modules()
    graph = {}
    for name, path in modules.items():
        found = imports_of(name, path, modules)
        graph[name] = [i for i in found if i.top_level or not top_level_only]
    return graph


def is_stdlib(name: str) -> bool:
    return name in sys.stdlib_module_names or name == "__future__"


def cycles(graph: dict[str, list[Import]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), each sorted."""
    edges = {m: sorted({i.target for i in imps if i.target in graph and i.target != m})
             for m, imps in graph.items()}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    found: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
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

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return sorted(found)
