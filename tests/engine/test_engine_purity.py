"""The engine is pure (docs/engine.md): no file I/O, and every module imports on its own.

Rule data reaches the engine loaded (stream_app/rules/loader.py); a module under
stream_app/engine/ that imported a file-system or I/O module, or called open(), would
let a rule read a file behind the operator's --rules-dir.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ENGINE = Path(__file__).resolve().parents[2] / "stream_app" / "engine"
MODULES = sorted(ENGINE.rglob("*.py"))
FORBIDDEN_MODULES = {"pathlib", "importlib.resources", "io", "os"}


def _module_name(path: Path) -> str:
    parts = ("stream_app", "engine", *path.relative_to(ENGINE).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _violations(tree: ast.AST) -> list[str]:
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [f"import {a.name}" for a in node.names
                      if a.name in FORBIDDEN_MODULES or a.name.split(".")[0] in {"os", "io"}]
        elif isinstance(node, ast.ImportFrom) and node.module:
            if node.module in FORBIDDEN_MODULES or node.module.split(".")[0] in {"os", "io"}:
                found.append(f"from {node.module} import ...")
            elif node.module == "importlib" and any(a.name == "resources" for a in node.names):
                found.append("from importlib import resources")
        elif isinstance(node, ast.Call):
            func = node.func
            if isinstance(func, ast.Name) and func.id == "open":
                found.append(f"open() at line {node.lineno}")
            elif isinstance(func, ast.Attribute) and func.attr in {"open", "read_text",
                                                                   "read_bytes"}:
                found.append(f".{func.attr}() at line {node.lineno}")
    return found


def test_engine_modules_exist():
    assert {_module_name(p) for p in MODULES} >= {
        f"stream_app.engine{m}" for m in ("", ".engine", ".decisions", ".parse", ".records",
                                          ".derive", ".derive.evaluator", ".ruledata",
                                          ".state", ".normalise")}


@pytest.mark.parametrize("path", MODULES, ids=[_module_name(p) for p in MODULES])
def test_engine_module_does_no_file_io(path):
    assert _violations(ast.parse(path.read_text(encoding="utf-8"))) == []


def test_the_check_catches_file_io():
    source = ("import os\nfrom pathlib import Path\nfrom importlib import resources\n"
              "import io\nopen('x')\nPath('y').read_text()\n")
    assert len(_violations(ast.parse(source))) == 6


@pytest.mark.parametrize("path", MODULES, ids=[_module_name(p) for p in MODULES])
def test_engine_module_imports_alone(path):
    # A fresh interpreter per module: an import cycle shows up only when the cycle's
    # second module is the one imported first.
    proc = subprocess.run([sys.executable, "-c", f"import {_module_name(path)}"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr


def test_engine_public_api_is_complete():
    import stream_app.engine as engine

    assert sorted(engine.__all__) == sorted(set(engine.__all__))
    for name in engine.__all__:
        assert getattr(engine, name) is not None, name
