"""The direction of imports (issue 40): the core (``harness/``) imports no plugin implementation and no report.

The graph is read from the source with ``ast`` (no module is imported), over every ``import`` statement, including
those inside functions: a function-level import is as much a dependency as a module-level one, it only runs later.
Imports under ``if TYPE_CHECKING:`` (annotations only, never run) are not dependencies.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("harness", "defenses", "attacks", "judges", "leaderboards")
CORE = "sdd_bench.harness"
# what the core may import from the plugin packages: nothing.  The contracts a plugin fulfils are the core's own
# (harness/contracts.py, harness/judging.py, harness/registry.py); the plugin packages re-export them.
ALLOWED_FROM_CORE: frozenset[str] = frozenset()


def _modules() -> dict[str, Path]:
    mods = {}
    for pkg in PACKAGES:
        for f in sorted((ROOT / pkg).rglob("*.py")):
            parts = list(f.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            mods["sdd_bench." + ".".join(parts)] = f
    return mods


def _targets(mod: str, path: Path, node: ast.AST, known: dict) -> list[str]:
    """The known modules an import statement names: ``import a.b``, ``from a import b`` (b a module or a name of a),
    and relative imports resolved against ``mod``."""
    if isinstance(node, ast.Import):
        names = [a.name for a in node.names]
    else:
        base = node.module or ""
        if node.level:
            pkg = mod.split(".") if path.name == "__init__.py" else mod.split(".")[:-1]
            pkg = pkg[:len(pkg) - (node.level - 1)]
            base = ".".join(pkg + ([base] if base else []))
        names = [base] + [f"{base}.{a.name}" for a in node.names]
    return [n for n in names if n in known]


def _type_checking_only(tree: ast.AST) -> set[int]:
    """ids of the import nodes under ``if TYPE_CHECKING:``: annotations only, never executed, so no dependency."""
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING":
            out.update(id(n) for stmt in node.body for n in ast.walk(stmt))
    return out


def import_graph() -> dict[str, set[str]]:
    known = _modules()
    graph: dict[str, set[str]] = {}
    for mod, path in known.items():
        deps = set()
        tree = ast.parse(path.read_text(), filename=str(path))
        skip = _type_checking_only(tree)
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)) and id(node) not in skip:
                deps.update(t for t in _targets(mod, path, node, known) if t != mod)
        graph[mod] = deps
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan's algorithm, iterative)."""
    index, low, on, stack, out, counter = {}, {}, set(), [], [], [0]
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter[0]
        counter[0] += 1
        stack.append(root)
        on.add(root)
        while work:
            v, it = work[-1]
            for w in it:
                if w not in index:
                    index[w] = low[w] = counter[0]
                    counter[0] += 1
                    stack.append(w)
                    on.add(w)
                    work.append((w, iter(sorted(graph[w]))))
                    break
                if w in on:
                    low[v] = min(low[v], index[w])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[v])
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
    return out


def test_the_graph_sees_function_level_and_relative_imports():
    g = import_graph()
    # a module-level relative import and a function-level absolute one (both present in the tree)
    assert "sdd_bench.harness.errors" in g["sdd_bench.harness.pipeline"]
    assert "sdd_bench.harness.pipeline" in g["sdd_bench.leaderboards.cell_cli"]
    assert "sdd_bench.harness.stages" in g["sdd_bench.attacks.restore"]  # inside RestoreAttack.attack
    assert "sdd_bench.harness.pipeline" not in g["sdd_bench.harness.stages"]  # only under TYPE_CHECKING there


def test_the_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles():
    found = cycles(import_graph())
    assert not found, "import cycles (a plugin registers what the core needs instead of the core importing it): " + \
        "; ".join(" <-> ".join(c) for c in found)


@pytest.mark.parametrize("layer", ["sdd_bench.defenses", "sdd_bench.attacks", "sdd_bench.judges",
                                   "sdd_bench.leaderboards"])
def test_the_core_imports_no_plugin_and_no_report(layer):
    bad = sorted(f"{m} -> {d}" for m, deps in import_graph().items() if m.startswith(CORE + ".") or m == CORE
                 for d in deps if (d == layer or d.startswith(layer + ".")) and d not in ALLOWED_FROM_CORE)
    assert not bad, f"the core imports {layer} (register it from the plugin side instead, or move the contract into " \
                    f"harness/): " + ", ".join(bad)
