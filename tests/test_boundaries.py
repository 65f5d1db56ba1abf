"""Package boundaries of ../shared/STYLE.md, checked on the import statements themselves.

Every import counts, including those inside functions and under ``TYPE_CHECKING``: an import deferred to
dodge a cycle is still a cycle in the design.
"""

from __future__ import annotations

import ast
import sys
from functools import cache
from graphlib import CycleError, TopologicalSorter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("api", "orchestrator", "strategies", "verifiers", "workers", "tasks", "models", "deploy", "bench", "training")
# What the service runs and ships. models/ holds data and no code today; it is listed so that any code put there
# (a trained PRM's modeling_prm.py is model data) is held to the same rules. training/ (recipes, data synthesis,
# measurement) and bench/ stand outside the service: they import it, never the reverse.
SERVICE = ("api", "orchestrator", "strategies", "verifiers", "workers", "tasks", "deploy", "models")
OUTSIDE_THE_SERVICE = {"training", "bench"}
# What each package may not import: a package root, or a dotted module prefix.
FORBIDDEN = {
    "orchestrator": {"vllm", "ray", "torch", "strategies", "workers", "api", "verifiers", "tasks"},
    "strategies": {"vllm", "ray", "torch", "workers", "api", "verifiers", "tasks", "orchestrator.db", "orchestrator.controller"},
    "verifiers": {"vllm", "ray", "torch", "api", "strategies", "workers"},
    "tasks": {"vllm", "ray", "torch", "api", "orchestrator", "strategies", "verifiers", "workers"},
    "api": {"vllm", "ray", "torch", "workers"},
}
# (No service package may import training/ or bench/ either: OUTSIDE_THE_SERVICE, checked for all of them below.)
# The service never talks to vLLM or Ray but through workers/. training/ (offline sampling and measurement of
# the bundled models with vLLM's batch LLM) and bench/ (raw-vLLM baselines, simulated Ray nodes, killed actors)
# are tools that stand outside the service and measure it, so they may.
ENGINE_FREE = ("api", "orchestrator", "strategies", "verifiers", "tasks", "deploy")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


@cache
def modules() -> dict[str, Path]:
    return {module_name(p): p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")}


def imported_from(node: ast.ImportFrom, path: Path) -> str:
    """The absolute module a ``from ... import`` in ``path`` reads from (relative imports resolved)."""
    base = node.module or ""
    if not node.level:
        return base
    here = module_name(path)
    package = here if path.name == "__init__.py" else here.rpartition(".")[0]
    up = package.split(".")[: len(package.split(".")) - node.level + 1]
    return ".".join(up + ([base] if base else []))


def is_private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def imports(path: Path) -> set[str]:
    """Every module ``path`` imports, as dotted names (``from a import b`` gives ``a.b`` when that is a module)."""
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = imported_from(node, path)
            # ``from pkg import mod`` depends on ``pkg.mod``; ``from mod import name`` on ``mod``. (Importing a
            # submodule runs its package's __init__ first, as every import does: not counted as an edge.)
            subs = {f"{base}.{a.name}" for a in node.names} & modules().keys()
            out |= subs | ({base} if len(subs) < len(node.names) else set())
    return out


def banned(name: str, rules: set[str]) -> bool:
    return any(name == r or name.startswith(r + ".") for r in rules)


def test_packages_import_only_what_they_may():
    violations = []
    for package, rules in FORBIDDEN.items():
        for path in (ROOT / package).rglob("*.py"):
            bad = sorted(n for n in imports(path) if banned(n, rules))
            if bad:
                violations.append(f"{path.relative_to(ROOT)} imports {bad}")
    assert not violations, "\n".join(violations)


def test_only_workers_import_vllm_and_ray_within_the_service():
    violations = []
    for package in ENGINE_FREE:
        for path in (ROOT / package).rglob("*.py"):
            bad = sorted(n for n in imports(path) if banned(n, {"vllm", "ray"}))
            if bad:
                violations.append(f"{path.relative_to(ROOT)} imports {bad}")
    assert not violations, "\n".join(violations)


def test_the_service_imports_neither_training_nor_benchmarks():
    # The wheel and the images carry neither (pyproject.toml, deploy/docker/): an import would fail there only.
    violations = []
    for package in SERVICE:
        for path in (ROOT / package).rglob("*.py"):
            bad = sorted(n for n in imports(path) if banned(n, OUTSIDE_THE_SERVICE))
            if bad:
                violations.append(f"{path.relative_to(ROOT)} imports {bad}")
    assert not violations, "\n".join(violations)


def private_imports(path: Path) -> list[str]:
    """Every ``from x import _y`` in ``path`` (relative imports too) whose ``_y`` is private, not dunder."""
    return [
        f"{path.relative_to(ROOT)}:{node.lineno} imports {'.' * node.level}{node.module or ''}.{a.name}"
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.ImportFrom)
        for a in node.names
        if is_private(a.name)
    ]


def private_attributes(path: Path) -> list[str]:
    """Every ``mod._y`` in ``path`` where ``mod`` names one of the project's modules (``import a.b as mod``,
    ``from a import mod``) and ``_y`` is private, not dunder: a private name reached without importing it."""
    tree = ast.parse(path.read_text())
    aliases: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            aliases |= {a.asname: a.name for a in node.names if a.asname and a.name in modules()}
        elif isinstance(node, ast.ImportFrom):
            base = imported_from(node, path)
            aliases |= {a.asname or a.name: f"{base}.{a.name}" for a in node.names if f"{base}.{a.name}" in modules()}
    return [
        f"{path.relative_to(ROOT)}:{node.lineno} reads {aliases[node.value.id]}.{node.attr}"
        for node in ast.walk(tree)
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in aliases and is_private(node.attr)
    ]


def test_no_module_imports_another_modules_private_name():
    # A leading underscore says "may change without notice"; what two modules share is public in one of them
    # (training.common holds what the v1 and v2 recipes share to train). Reaching it as an attribute of the
    # imported module is the same dependency.
    paths = [path for pkg in PACKAGES for path in (ROOT / pkg).rglob("*.py")]
    violations = [v for path in paths for v in private_imports(path) + private_attributes(path)]
    assert not violations, "\n".join(violations)


def import_graph() -> dict[str, set[str]]:
    mods = modules()
    return {name: {n for n in imports(path) if n in mods and n != name} for name, path in mods.items()}


def test_no_import_cycle_anywhere():
    try:
        TopologicalSorter(import_graph()).prepare()
    except CycleError as err:
        raise AssertionError(f"import cycle: {' -> '.join(err.args[1])}") from None


def test_tasks_import_only_the_standard_library_and_themselves():
    # Serving code imports the task: it must load without torch, transformers or the training code.
    for path in (ROOT / "tasks").rglob("*.py"):
        roots = {name.split(".")[0] for name in imports(path)}
        assert roots <= set(sys.stdlib_module_names) | {"__future__", "tasks"}, (path, sorted(roots))


def test_strategies_carry_no_type_ignores():
    hits = [f"{p.relative_to(ROOT)}:{i}" for p in (ROOT / "strategies").rglob("*.py") for i, line in enumerate(p.read_text().splitlines(), 1) if "type: ignore" in line]
    assert not hits, hits


# Where the service's parts are put together: deploy/assembly.py, and the controller's one context per request.
BUILDERS = {"Controller": {"deploy.assembly"}, "Toolbox": {"deploy.assembly"}, "StrategyContext": {"deploy.assembly", "orchestrator.controller"}}


def test_the_service_is_assembled_in_one_place():
    violations = []
    for name, path in modules().items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call):
                called = node.func.id if isinstance(node.func, ast.Name) else node.func.attr if isinstance(node.func, ast.Attribute) else None
                if called in BUILDERS and name not in BUILDERS[called]:
                    violations.append(f"{name}:{node.lineno} builds a {called}")
    assert not violations, "\n".join(violations)
