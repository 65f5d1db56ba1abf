"""Package boundaries of ../shared/STYLE.md, checked on the import statements themselves."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FORBIDDEN = {
    "orchestrator": {"vllm", "ray", "strategies", "workers", "api", "verifiers", "models"},
    "strategies": {"vllm", "ray", "workers", "api", "verifiers", "models", "torch"},
    "verifiers": {"vllm", "ray", "api", "strategies"},
    "api": {"vllm", "ray", "workers", "torch"},
}


def imported_roots(path: Path) -> set[str]:
    roots = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            roots |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            roots.add(node.module.split(".")[0])
    return roots


def test_packages_import_only_what_they_may():
    violations = []
    for package, banned in FORBIDDEN.items():
        for path in (ROOT / package).rglob("*.py"):
            bad = imported_roots(path) & banned
            if bad:
                violations.append(f"{path.relative_to(ROOT)} imports {sorted(bad)}")
    assert not violations, "\n".join(violations)


def test_only_workers_import_vllm_and_ray_among_service_packages():
    for package in ("orchestrator", "strategies", "verifiers", "api"):
        for path in (ROOT / package).rglob("*.py"):
            assert not imported_roots(path) & {"vllm", "ray"}, path
