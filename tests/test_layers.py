"""The layering of ARCHITECTURE.md, enforced: no import goes up a floor, and no two modules import each other.

Every import counts, also one inside a function or under ``TYPE_CHECKING``: a
lazy import is still a dependency, and a circle through it still means the
two modules cannot be understood (or tested, or moved) one without the other.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "src" / "affectlens"

# floor of each top-level module or package of affectlens; a module may import its own floor or lower
FLOORS: dict[str, int] = {
    # 1: the ground
    "errors": 1, "paths": 1, "threads": 1, "modules": 1, "vocab": 1, "claims": 1, "runs": 1,
    "tuneconfig": 1, "progress": 1, "weights": 1, "plots": 1,
    # 2: what every operation reads
    "tasks": 2, "models": 2, "selection": 2, "params": 2, "plan": 2,
    # 3: the papers' operations
    "locate": 3, "interventions": 3, "tune": 3, "circuits": 3, "evaluate": 3,
    # 4: many operations composed
    "study": 4, "grid": 4,
    # 5: the command line and the public API
    "commands": 5, "cli": 5, "__main__": 5, "__init__": 5,
}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PKG.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path) -> set[str]:
    """Absolute names of the affectlens modules (or names in them) that ``path`` imports."""
    mod = _module_name(path)
    pkg = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.split(".")[0] == "affectlens"}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = pkg.split(".")[: len(pkg.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            elif node.module and node.module.split(".")[0] == "affectlens":
                target = node.module
            else:
                continue
            out |= {f"{target}.{a.name}" for a in node.names}
    return out


def _graph() -> dict[str, set[str]]:
    """Module -> the affectlens modules it imports (a name inside a module counts as the module)."""
    files = {_module_name(p): p for p in PKG.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for mod, path in files.items():
        deps = set()
        for name in _imports(path):
            while name and name not in files:
                name = name.rpartition(".")[0]
            if name and name != mod:
                deps.add(name)
        graph[mod] = deps
    return graph


def _floor(mod: str) -> int:
    parts = mod.split(".")
    top = parts[1] if len(parts) > 1 else "__init__"
    if top not in FLOORS:
        raise AssertionError(f"{mod}: new top-level module or package; give it a floor in FLOORS and ARCHITECTURE.md")
    return FLOORS[top]


def _circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_no_import_goes_up_a_floor():
    graph = _graph()
    up = sorted(f"{a} (floor {_floor(a)}) imports {b} (floor {_floor(b)})"
                for a, deps in graph.items() for b in deps
                if b != "affectlens" and _floor(b) > _floor(a))
    assert not up, "\n".join(up)


def test_no_import_circles():
    assert not _circles(_graph())


def test_at_most_twelve_top_level_modules():
    top = sorted(p.stem for p in PKG.glob("*.py") if p.stem not in ("__init__", "__main__", "cli"))
    assert len(top) <= 12, top


@pytest.mark.parametrize("pkg", sorted(p.parent.name for p in PKG.glob("*/__init__.py")))
def test_each_package_says_what_it_is_for(pkg):
    doc = ast.get_docstring(ast.parse((PKG / pkg / "__init__.py").read_text(encoding="utf-8")))
    assert doc and len(doc.split()) >= 8, f"{pkg}/__init__.py needs a docstring saying what it is for"


def test_the_checker_finds_planted_circles_and_upward_imports():
    graph = {"affectlens.a": {"affectlens.b"}, "affectlens.b": {"affectlens.c"}, "affectlens.c": {"affectlens.a"},
             "affectlens.d": set()}
    assert _circles(graph) == [["affectlens.a", "affectlens.b", "affectlens.c"]]
    assert _floor("affectlens.weights.lora") < _floor("affectlens.locate.stats")
    with pytest.raises(AssertionError, match="give it a floor"):
        _floor("affectlens.newthing")


@pytest.mark.parametrize("mod", ["affectlens.models.adapters", "affectlens.models.resolve", "affectlens.tune.distributed",
                                 "affectlens.locate.tuned", "affectlens.tasks.pairs"])
def test_a_submodule_imports_first_and_alone(mod):
    """A package's lazy names must not stand in the way of importing one of its submodules first."""
    import subprocess
    import sys

    code = f"import sys, {mod}; print('torch' in sys.modules)"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    if mod in ("affectlens.tune.distributed", "affectlens.models.resolve"):
        assert r.stdout.strip() == "False", f"{mod} must stay torch-free (the CLI imports it before any work)"
