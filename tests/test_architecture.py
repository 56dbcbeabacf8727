"""Import hygiene and layering of `stream_app` (docs/architecture.md).

* Every module imports alone in a fresh interpreter (no order-dependent import cycles).
* No import cycle, at module level or through imports inside functions.
* Layers import downwards only:
  - `vocabulary` imports nothing of the project;
  - the engine imports only itself, `vocabulary`, the standard library and orjson;
  - the edge (every module outside the engine, the shell, the services, the commands and
    devtools: adapters, rule loading and import, config, metrics, topics, runtime) never
    imports the shell, a service, a command or devtools;
  - the services (`stream_app.queue`, `stream_app.report`: their own processes around the
    work queue's database) never import the shell, a command or devtools; the report
    reads the queue's schema, the queue never imports the report;
  - the Faust shell (`stream_app.streaming`) is imported by nobody outside it (the CLI
    starts the worker by module name);
  - development tools (`stream_app.devtools`) use the product; no product module
    imports them.

Module lists come from the source tree, so the rules follow renames and new modules.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.support.imports import PACKAGE, import_graph, is_stdlib, package_modules
from tests.support.imports import cycles as find_cycles
from tests.support.paths import REPO

ENGINE = f"{PACKAGE}.engine"
VOCABULARY = f"{PACKAGE}.vocabulary"
SHELL = f"{PACKAGE}.streaming"
QUEUE = f"{PACKAGE}.queue"
REPORT = f"{PACKAGE}.report"
DEVTOOLS = f"{PACKAGE}.devtools"
# Entry points: the CLI and the commands that are not the shell or a development tool.
COMMANDS = (f"{PACKAGE}.cli", f"{PACKAGE}.__main__", f"{PACKAGE}.replay")
ENGINE_THIRD_PARTY = {"orjson"}



def within(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def layer_of(module: str) -> str:
    if module == VOCABULARY:
        return "vocabulary"
    if within(module, ENGINE):
        return "engine"
    if within(module, SHELL):
        return "shell"
    if within(module, DEVTOOLS):
        return "devtools"
    if within(module, QUEUE) or within(module, REPORT):
        return "service"
    if module in COMMANDS:
        return "command"
    return "edge"


GRAPH = import_graph()


def test_the_layers_exist():
    modules = package_modules()
    for package in (ENGINE, SHELL, QUEUE, REPORT, DEVTOOLS, VOCABULARY):
        assert package in modules, f"{package} is gone: update the layer names in this test"
    assert any(layer_of(m) == "edge" for m in modules)


def test_every_module_imports_alone_in_a_fresh_interpreter():
    # `__main__` runs the CLI when imported; it is what `python -m stream_app` executes.
    modules = sorted(m for m in package_modules() if not m.endswith(".__main__"))
    done = subprocess.run([sys.executable, "-m", "tests.support.import_each", *modules],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    failures = json.loads(done.stdout.strip().splitlines()[-1])
    assert not failures, "\n\n".join(f"{m}:\n{tb}" for m, tb in failures.items())


def test_a_module_that_fails_to_import_is_reported():
    done = subprocess.run([sys.executable, "-m", "tests.support.import_each",
                           f"{PACKAGE}.vocabulary", f"{PACKAGE}.no_such_module"],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    failures = json.loads(done.stdout.strip().splitlines()[-1])
    assert list(failures) == [f"{PACKAGE}.no_such_module"]
    assert "ModuleNotFoundError" in failures[f"{PACKAGE}.no_such_module"]


def test_no_import_cycles():
    found = find_cycles(GRAPH)
    assert not found, f"import cycles: {found}"


def _violations(rule) -> list[str]:
    return [f"{module}:{imp.line} imports {imp.target}"
            for module, imports in sorted(GRAPH.items()) for imp in imports
            if not rule(module, imp.target)]


def test_vocabulary_imports_nothing_of_the_project():
    assert _violations(lambda m, t: m != VOCABULARY or not within(t, PACKAGE)) == []


def test_engine_imports_only_itself_vocabulary_stdlib_and_orjson():
    def allowed(module: str, target: str) -> bool:
        if layer_of(module) != "engine":
            return True
        if within(target, PACKAGE):
            return within(target, ENGINE) or target == VOCABULARY or target == PACKAGE
        return is_stdlib(target) or target in ENGINE_THIRD_PARTY

    assert _violations(allowed) == []


# The rule loader fills the engine's typed rows: those row classes are its contract with
# the engine, too many to list in the engine's public API.
ENGINE_INTERNALS_ALLOWED = {(f"{PACKAGE}.rules.loader", f"{ENGINE}.ruledata")}


def test_nothing_outside_the_engine_reaches_past_its_public_api():
    def allowed(module: str, target: str) -> bool:
        if layer_of(module) == "engine" or not within(target, ENGINE) or target == ENGINE:
            return True
        return (module, target) in ENGINE_INTERNALS_ALLOWED

    assert _violations(allowed) == []


def test_the_edge_does_not_import_the_shell_services_commands_or_devtools():
    def allowed(module: str, target: str) -> bool:
        if layer_of(module) not in ("edge", "engine", "vocabulary"):
            return True
        return not within(target, PACKAGE) or layer_of(target) not in (
            "shell", "service", "command", "devtools")

    assert _violations(allowed) == []


def test_services_do_not_import_the_shell_commands_or_devtools():
    def allowed(module: str, target: str) -> bool:
        if layer_of(module) != "service" or not within(target, PACKAGE):
            return True
        if within(module, QUEUE) and within(target, REPORT):
            return False
        return layer_of(target) not in ("shell", "command", "devtools")

    assert _violations(allowed) == []


def test_nobody_outside_the_shell_imports_it():
    def allowed(module: str, target: str) -> bool:
        return layer_of(target) != "shell" or layer_of(module) == "shell"

    assert _violations(allowed) == []


def test_product_modules_do_not_import_devtools():
    def allowed(module: str, target: str) -> bool:
        return layer_of(target) != "devtools" or layer_of(module) == "devtools"

    assert _violations(allowed) == []


@pytest.mark.parametrize("layer, module, target", [
    ("engine", f"{ENGINE}.engine", f"{PACKAGE}.config"),
    ("edge", f"{PACKAGE}.metrics", SHELL),
    ("service", f"{QUEUE}.api", f"{REPORT}.figures"),
    ("devtools", f"{PACKAGE}.topics", f"{DEVTOOLS}.demo"),
])
def test_the_rules_catch_an_upward_import(layer, module, target):
    """The rules above are not vacuous: a planted upward import breaks each of them."""
    from tests.support.imports import Import

    planted = {**GRAPH, module: [*GRAPH.get(module, []), Import(target, 1, True)]}
    rules = {
        "engine": lambda m, t: layer_of(m) != "engine" or not within(t, PACKAGE)
        or within(t, ENGINE) or t in (VOCABULARY, PACKAGE),
        "edge": lambda m, t: layer_of(m) != "edge" or not within(t, PACKAGE)
        or layer_of(t) not in ("shell", "service", "command", "devtools"),
        "service": lambda m, t: layer_of(m) != "service" or not within(t, PACKAGE)
        or not (within(m, QUEUE) and within(t, REPORT))
        and layer_of(t) not in ("shell", "command", "devtools"),
        "devtools": lambda m, t: layer_of(t) != "devtools" or layer_of(m) == "devtools",
    }
    bad = [(m, i.target) for m, imps in planted.items() for i in imps
           if not rules[layer](m, i.target)]
    assert (module, target) in bad
