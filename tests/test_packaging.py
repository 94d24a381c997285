"""A non-editable install runs: the wheel carries conf/, tasks/ and sweeps/ and the Hydra
search-path plugin, so `python -m sia` composes from any working directory."""
from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys

from conftest import REPO


def test_the_wheel_runs_outside_the_source_tree(tmp_path):
    wheels, target, elsewhere = tmp_path / "wheels", tmp_path / "site", tmp_path / "cwd"
    elsewhere.mkdir()
    # built from a copy of the tracked files: a build writes sia.egg-info/ and build/ into its source
    # folder, and CI installs the vLLM venv (pip install -e . in the checkout) while the suite runs
    source = tmp_path / "source"
    tracked = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, check=True, capture_output=True).stdout
    for name in filter(None, tracked.decode().split("\0")):
        if (REPO / name).is_file():
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, source / name)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                    "-w", str(wheels), str(source)], check=True, capture_output=True, timeout=300)
    wheel = next(wheels.glob("sia-*.whl"))
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target),
                    str(wheel)], check=True, capture_output=True, timeout=300)
    env = {**os.environ, "PYTHONPATH": str(target)}
    probe = subprocess.run([sys.executable, "-c", "import sia, sia.tasks as t; print(sia.__file__); "
                            "print(t.available_tasks())"], cwd=elsewhere, env=env, capture_output=True,
                           text=True, timeout=120)
    assert probe.returncode == 0, probe.stderr
    assert str(target) in probe.stdout and "legal_charge" in probe.stdout and "sql_qa" in probe.stdout
    composed = subprocess.run([sys.executable, "-m", "sia", "+sweep=seeds", "model.engine=vllm", "--cfg", "all"],
                              cwd=elsewhere, env=env, capture_output=True, text=True, timeout=120)
    assert composed.returncode == 0, composed.stderr
    assert "seed: 0,1,2,3,4" in composed.stdout                      # sweeps found via the plugin
    assert "_target_: sia.engine.vllm_engine.VLLMEngine" in composed.stdout   # model.engine=vllm alias


# ---- the import graph: sia/ at the bottom, tasks/ above it, no circles ----------------------

def _module_name(path) -> str:
    """Dotted name of a source file as Python imports it (tasks/ is the package ``sia_tasks``)."""
    rel = path.relative_to(REPO).with_suffix("")
    parts = list(rel.parts)
    if parts[0] == "tasks":
        parts[0] = "sia_tasks"
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _under_type_checking(node, parents) -> bool:
    while node in parents:
        node = parents[node]
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            return True
    return False


def _imports(path, name: str, known: set[str]) -> set[str]:
    """Every module of ``known`` that ``path`` imports, at module level or inside a function
    (a lazy import closes a circle as well); imports only a type checker runs are left out."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(tree):
        if _under_type_checking(node, parents):
            continue
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package.split(".")[: len(package.split(".")) - node.level + 1] if node.level else []
            stem = ".".join(base + ([node.module] if node.module else []))
            # ``from pkg import mod`` imports the module pkg.mod; ``from mod import name`` the module mod
            targets = [f"{stem}.{a.name}" if f"{stem}.{a.name}" in known else stem for a in node.names]
        else:
            continue
        for target in targets:
            while target and target not in known:     # ``import a.b.c`` of a name inside a.b
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def _import_graph() -> dict[str, set[str]]:
    files = {_module_name(p): p for root in ("sia", "tasks") for p in (REPO / root).rglob("*.py")
             if "__pycache__" not in p.parts}
    known = set(files) | {"sia_tasks", "tasks", "benchmarks"}
    return {name: _imports(path, name, known) for name, path in files.items()}


def _a_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle of ``graph`` (depth-first search), or None when it has none."""
    state: dict[str, int] = {}          # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_sia_and_tasks_import_each_other_without_a_circle():
    graph = _import_graph()
    assert len([m for m in graph if m.startswith("sia_tasks.")]) > 10, sorted(graph)   # tasks/ was read
    assert "sia_tasks.sql_qa.supervised" in graph["sia_tasks.sql_qa.task"]             # and edges found
    cycle = _a_cycle(graph)
    assert cycle is None, "import circle: " + " -> ".join(cycle)


def test_sia_imports_nothing_from_tasks_or_benchmarks():
    upward = {name: sorted(t for t in targets if t.split(".")[0] in ("sia_tasks", "tasks", "benchmarks"))
              for name, targets in _import_graph().items() if name.split(".")[0] == "sia"}
    assert {name: t for name, t in upward.items() if t} == {}


def test_the_circle_finder_finds_a_lazy_import_circle(tmp_path):
    """The check itself: a circle closed by an import inside a function is one."""
    for name, text in {"a.py": "from .b import f\n", "b.py": "def f():\n    from .a import g\n",
                       "c.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .a import g\n"}.items():
        (tmp_path / name).write_text(text)
    known = {"p.a", "p.b", "p.c"}
    graph = {f"p.{n}": _imports(tmp_path / f"{n}.py", f"p.{n}", known) for n in "abc"}
    assert graph == {"p.a": {"p.b"}, "p.b": {"p.a"}, "p.c": set()}
    assert _a_cycle(graph) == ["p.a", "p.b", "p.a"]
    assert _a_cycle({"p.a": {"p.b"}, "p.b": set()}) is None
