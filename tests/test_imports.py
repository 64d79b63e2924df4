"""The import graph of ``studio``: one way everywhere (no circle, counting lazy and type-checking imports)."""

from __future__ import annotations

import ast
from pathlib import Path

import studio

ROOT = Path(studio.__file__).parent


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """``module -> modules it imports`` over every ``import`` statement in ``studio/`` (also inside functions and
    ``if TYPE_CHECKING:``), resolved to the deepest ``studio`` module named. A submodule's implicit import of its
    parent package is Python's mechanism, not a dependency, and is left out."""
    files = {module_name(p): p for p in ROOT.rglob("*.py")}
    edges: dict[str, set[str]] = {m: set() for m in files}
    for module, path in files.items():
        package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    base = ".".join(package[: len(package) - node.level + 1] + ([base] if base else []))
                names = [base, *(f"{base}.{alias.name}" for alias in node.names)]
            else:
                continue
            for name in names:
                while name and name not in files:
                    name = name.rpartition(".")[0]
                if name and name != module:
                    edges[module].add(name)
    return edges


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(edges[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def test_the_finder_sees_a_circle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_studio_imports_one_way():
    graph = import_graph()
    assert len(graph) > 50 and "studio.adapters.registry" in graph["studio.adapters.layer"]
    assert cycles(graph) == []


def imported_by(statement: str) -> set[str]:
    """Top-level packages a fresh interpreter has imported after ``statement``."""
    import subprocess
    import sys

    code = f"{statement}; import sys; print(' '.join(sorted({{m.split('.')[0] for m in sys.modules}})))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return set(out.stdout.split())


HEAVY = {"diffusers", "peft", "transformers", "gradio", "scipy", "sklearn", "matplotlib", "pandas"}


def test_the_light_paths_import_no_heavy_library():
    """Scoring, worlds and the CLI's start import none of diffusers, peft, transformers, gradio (cold start)."""
    assert imported_by("import studio, studio.cli") & (HEAVY | {"torch"}) == set()
    scoring = imported_by("import studio.judges, studio.evaluation, studio.worlds, studio.generation")
    assert "torch" in scoring and "safetensors" in scoring  # the check sees what is imported
    assert scoring & HEAVY == set()
