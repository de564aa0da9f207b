"""The package layout (issue 21): lib/ walked with ast, every import inside lib resolved to a module.

- no import cycle between modules;
- no module over 500 lines;
- lib.core imports nothing above it, and no pipeline step imports the run machinery (lib.runs);
- the notebooks import only modules that exist.
"""
import ast
import json
from pathlib import Path

import pytest

from lib.core import paths

LIB = paths.ROOT / "lib"
MAX_LINES = 500


def module_name(path: Path) -> str:
    parts = path.relative_to(paths.ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(LIB.rglob("*.py"))}


def imports_of(name: str) -> set[str]:
    """The lib modules ``name`` imports (anywhere in it, lazy imports in functions included)."""
    path = MODULES[name]
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name in MODULES}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            for a in node.names:
                target = f"{source}.{a.name}"
                found.add(target if target in MODULES else source)
    return {m for m in found if m in MODULES and m != name}


GRAPH = {m: imports_of(m) for m in MODULES}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph[v]:
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
                out.append(sorted(comp))

    for v in graph:
        if v not in index:
            visit(v)
    return out


def test_the_walk_sees_the_imports_it_must():
    # the checks below mean something only if the walk resolves relative, lazy and package imports
    assert "lib.core.paths" in GRAPH["lib.core.atomic"] or "lib.core.paths" in GRAPH["lib.core.stages"]
    assert any(m.startswith("lib.data.") for m in GRAPH["lib.evaluate.classifier"])
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_cycles():
    assert cycles(GRAPH) == []


def test_no_module_over_500_lines():
    long = {m: n for m, p in MODULES.items() if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert long == {}


def test_dependencies_point_one_way():
    core_up = {m: sorted(d for d in deps if not d.startswith("lib.core") and d != "lib")
               for m, deps in GRAPH.items() if m.startswith("lib.core")}
    assert {m: d for m, d in core_up.items() if d} == {}, "lib.core imports a step"
    runner_users = {m: sorted(d for d in deps if d.startswith("lib.runs"))
                    for m, deps in GRAPH.items() if not m.startswith("lib.runs")}
    assert {m: d for m, d in runner_users.items() if d} == {}, "a step imports the run machinery"


@pytest.mark.parametrize("nb", sorted((paths.ROOT / "notebooks").glob("*.ipynb")), ids=lambda p: p.stem)
def test_notebooks_import_modules_that_exist(nb):
    for cell in json.loads(nb.read_text())["cells"]:
        if cell["cell_type"] != "code":
            continue
        for node in ast.walk(ast.parse("".join(cell["source"]))):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("lib"):
                for a in node.names:
                    assert f"{node.module}.{a.name}" in MODULES or node.module in MODULES, (nb.name, node.module, a.name)
