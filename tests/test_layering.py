"""The layout is the architecture: service -> workers -> optimization, and the reference world is
configuration, not a code path of the engine."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
        elif isinstance(node, ast.ImportFrom) and node.level > 0:
            package = path.relative_to(ROOT).parent.parts
            base = ".".join(package[:len(package) - node.level + 1])
            names.add(f"{base}.{node.module}" if node.module else base)
    return names


@pytest.mark.parametrize("package, forbidden", [
    ("optimization", ("workers", "service", "tally", "redis", "rq", "fastapi")),
    ("workers", ("service", "tally", "fastapi")),
    ("service", ("tally", "torch")),
])
def test_imports_flow_service_workers_optimization(package, forbidden):
    for path in (ROOT / package).rglob("*.py"):
        for name in _imports(path):
            assert name.split(".")[0] not in forbidden, f"{path.relative_to(ROOT)} imports {name}"


def test_only_the_worker_process_imports_the_worker_runtime():
    """``workers/runtime`` runs inside ``tally worker``; the data layer (``workers/*.py``) and the API share
    what is above it and never reach into it (the CLI's ``tally worker`` starts it)."""
    users = [p for d in ("workers", "service", "tally") for p in (ROOT / d).rglob("*.py")
             if "workers.runtime" in {n[:len("workers.runtime")] for n in _imports(p)}
             and p.parent != ROOT / "workers" / "runtime"]
    assert [str(p.relative_to(ROOT)) for p in users] == ["tally/cli/serve.py"]


@pytest.mark.parametrize("path", ["optimization/engine.py", "optimization/pipelines.py", "optimization/optimizer.py",
                                  "optimization/counter.py", "optimization/yolo.py", *[
                                      str(p.relative_to(ROOT)) for d in ("workers", "service")
                                      for p in (ROOT / d).rglob("*.py")]])
def test_production_paths_never_ask_which_model_they_hold(path):
    for name in _imports(ROOT / path):
        if name.startswith("optimization.reference"):
            assert path == "workers/settings.py" and name == "optimization.reference.models", (path, name)
    assert _model_id_comparisons(ROOT / path) == [], path


MODEL_IDS = {"reference", "reference-web"}


def _model_id_comparisons(path: Path) -> list[int]:
    """Lines that compare anything with a model id, or match on one: a branch on which model is loaded."""
    def names_a_model(node) -> bool:
        if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
            return any(names_a_model(e) for e in node.elts)
        return isinstance(node, ast.Constant) and node.value in MODEL_IDS

    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Compare) and any(names_a_model(o) for o in (node.left, *node.comparators)):
            found.append(node.lineno)
        elif isinstance(node, ast.MatchValue) and names_a_model(node.value):
            found.append(node.lineno)
    return found


def test_the_model_id_rule_finds_a_branch_on_the_model(tmp_path):
    branch = tmp_path / "branch.py"
    branch.write_text("def f(spec):\n    if spec.id == 'reference':\n        return 1\n"
                      "    return spec.id in ('x', 'reference-web')\n")
    assert _model_id_comparisons(branch) == [2, 4]


def test_the_engine_imports_nothing_from_the_reference_world():
    import subprocess
    import sys

    code = ("import sys, optimization.engine, optimization.pipelines, optimization.optimizer; "
            "print([m for m in sys.modules if m.startswith('optimization.reference')])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True).stdout
    assert out.strip() == "[]"


@pytest.mark.unit
def test_the_unit_tier_refuses_connections_and_processes():
    import socket
    import subprocess

    with pytest.raises(AssertionError, match="unit test may not"):
        socket.create_connection(("127.0.0.1", 6379), timeout=1)
    with pytest.raises(AssertionError, match="unit test may not"):
        subprocess.run(["true"])
