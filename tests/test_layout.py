"""The layout's promises (issues #14 and #31): every import, function-level included, points
down the layers of docs/architecture.md; no import circle; no private name taken from another
package; backend names compared only inside medwb/backends; the apps do not import the benchmark."""
import ast
from pathlib import Path

import pytest

from medwb.backends import registry

PACKAGE = Path(__file__).resolve().parents[1] / "medwb"

# Bottom to top (docs/architecture.md). A unit is a subpackage of medwb or a top-level module;
# a unit may import units of lower layers only. Core modules may import each other (the
# circle check below still holds them). Units in one layer do not import each other.
LAYERS = [
    {"medwb", "errors", "offline", "paths", "clock", "jsonl", "child", "envs", "sysinfo", "plots", "bundle"},
    {"quality"},
    {"tasks"},
    {"models"},
    {"provenance"},
    {"runner"},
    {"backends"},
    {"apps"},
    {"bench", "eval"},
    {"routes", "cluster"},
    {"jobs", "doctor"},
    {"cli"},
    {"__main__"},
]
CORE = LAYERS[0]
RANK = {unit: i for i, layer in enumerate(LAYERS) for unit in layer}


def _modules(root: Path = PACKAGE) -> dict[str, ast.Module]:
    out = {}
    for path in sorted(root.rglob("*.py")):
        name = ".".join(path.relative_to(root.parent).with_suffix("").parts).removesuffix(".__init__")
        out[name] = ast.parse(path.read_text(encoding="utf-8"), str(path))
    return out


def _is_package(module: str, modules: dict) -> bool:
    return any(m.startswith(module + ".") for m in modules)


def _edges(modules: dict[str, ast.Module]) -> list[tuple[str, str, int, list[str]]]:
    """Every import of a medwb module by a medwb module, anywhere in the file: (importer,
    imported module, line, names taken from it). Relative imports are resolved."""
    edges = []
    for module, tree in modules.items():
        package = module if _is_package(module, modules) else module.rsplit(".", 1)[0]
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                targets = [(a.name, []) for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = package.split(".")
                    base = ".".join(parts[:len(parts) - node.level + 1] + ([base] if base else []))
                targets = []
                for a in node.names:  # `from medwb.x import y`: y may be a module or a name
                    sub = f"{base}.{a.name}"
                    targets.append((sub, []) if sub in modules else (base, [a.name]))
            else:
                continue
            for target, names in targets:
                if not target.startswith("medwb"):
                    continue
                while target not in modules and "." in target:
                    target = target.rsplit(".", 1)[0]
                if target in modules and target != module:
                    edges.append((module, target, node.lineno, names))
    return edges


def unit(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "medwb"


def layer_problems(modules: dict[str, ast.Module]) -> list[str]:
    """Upward or sideways arrows between units, private names taken across units, and
    units missing from LAYERS, each as one line naming the import."""
    problems = sorted({f"{u}: not in LAYERS (tests/test_layout.py)" for u in map(unit, modules) if u not in RANK})
    for src, dst, line, names in _edges(modules):
        a, b = unit(src), unit(dst)
        if a == b or a not in RANK or b not in RANK or (a in CORE and b in CORE):
            continue
        if dst.startswith(src + "."):  # a package's __init__ naming its own modules
            continue
        if RANK[b] >= RANK[a]:
            way = "sideways" if RANK[b] == RANK[a] else "upward"
            problems.append(f"{src}:{line} imports {dst}: {way} ({a} is layer {RANK[a]}, {b} is layer {RANK[b]})")
        private = [n for n in names if n.startswith("_")] + \
            [p for p in dst.split(".") if p.startswith("_") and not p.startswith("__")]
        if private:
            problems.append(f"{src}:{line} takes private {', '.join(private)} from {dst}")
    return problems


def cycles(modules: dict[str, ast.Module]) -> list[list[str]]:
    """Import circles between modules, counting every import (a package's __init__ importing
    its own modules is left out: Python resolves those)."""
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for src, dst, _, _ in _edges(modules):
        if not src.startswith(dst + "."):
            graph[src].add(dst)
    index, low, stack, on, found, counter = {}, {}, [], set(), [], [0]

    def strong(v):  # Tarjan's strongly connected components
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))
    for v in sorted(graph):
        if v not in index:
            strong(v)
    return found


def test_every_import_points_down_the_layers():
    problems = layer_problems(_modules())
    assert problems == [], "imports against docs/architecture.md's layers:\n" + "\n".join(problems)


def test_no_import_circle_counting_function_level_imports():
    assert cycles(_modules()) == []


def _tree(tmp_path: Path, files: dict[str, str]) -> dict[str, ast.Module]:
    for name, text in files.items():
        path = tmp_path / "medwb" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return _modules(tmp_path / "medwb")


def test_the_layout_check_catches_a_function_level_upward_import(tmp_path):
    files = {"__init__.py": "", "backends/__init__.py": "", "bench/__init__.py": "", "bench/run.py": "X = 1\n",
             "backends/pytorch.py": "def load():\n    from medwb.bench.run import X\n    return X\n"}
    assert layer_problems(_tree(tmp_path, files)) == [
        "medwb.backends.pytorch:2 imports medwb.bench.run: upward (backends is layer 6, bench is layer 8)"]


def test_the_layout_check_catches_sideways_private_and_circles(tmp_path):
    files = {"__init__.py": "", "bench/__init__.py": "", "eval/__init__.py": "",
             "bench/run.py": "def f():\n    from medwb.eval.run import _helper\n",
             "eval/run.py": "from medwb.bench import run\ndef _helper():\n    pass\n",
             "cluster/__init__.py": "", "cluster/tasks.py": "from ..bench.run import _records\n"}
    modules = _tree(tmp_path, files)
    problems = layer_problems(modules)
    assert "medwb.bench.run:2 imports medwb.eval.run: sideways (bench is layer 8, eval is layer 8)" in problems
    assert "medwb.bench.run:2 takes private _helper from medwb.eval.run" in problems
    assert "medwb.cluster.tasks:1 takes private _records from medwb.bench.run" in problems
    assert cycles(modules) == [["medwb.bench.run", "medwb.eval.run"]]


def test_backend_names_are_compared_only_inside_backends():
    names = set(registry.names())
    families = {n.split("-")[0] for n in names}  # startswith("openvino") and the like
    offenders = []
    for module, tree in _modules().items():
        if module.startswith("medwb.backends"):
            continue
        for node in ast.walk(tree):
            strings = []
            if isinstance(node, ast.Compare):
                strings = [n for n in [node.left, *node.comparators] if isinstance(n, ast.Constant)]
            elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and \
                    node.func.attr in ("startswith", "endswith"):
                strings = [n for n in node.args if isinstance(n, ast.Constant)]
            elif isinstance(node, ast.Subscript) and isinstance(node.slice, ast.Constant):
                strings = [node.slice]
            for s in strings:
                if isinstance(s.value, str) and (s.value in names or s.value in families):
                    offenders.append(f"{module}:{node.lineno}: {s.value!r}")
    assert offenders == [], "ask medwb.backends.registry instead of comparing backend names"


def test_the_apps_do_not_import_the_benchmark():
    found = [f"{src}:{line} imports {dst}" for src, dst, line, _ in _edges(_modules())
             if src.startswith("medwb.apps") and dst.startswith("medwb.bench")]
    assert found == []


def test_every_backend_in_the_registry_loads_its_entry():
    for name in registry.names():
        entry = registry.get(name)
        assert entry.env and entry.family and entry.route and entry.precisions
    assert registry.is_reference({"backend": "pytorch", "precision": "fp32"})


def test_the_reference_runs_first_and_a_failed_one_is_not_compared_against():
    from medwb.bench.probe import against_reference
    seen = []

    def measure(item, reference):
        seen.append((item, reference))
        result = {"error": "boom"} if item == "bad-ref" else {"texts": [item]}
        return [{"variant": item}], result
    records = against_reference("ref", ["a", "b"], measure)
    assert [r["variant"] for r in records] == ["ref", "a", "b"]
    assert seen == [("ref", None), ("a", {"texts": ["ref"]}), ("b", {"texts": ["ref"]})]
    seen.clear()
    against_reference("bad-ref", ["a"], measure)
    assert seen == [("bad-ref", None), ("a", None)]
    seen.clear()
    assert [r["variant"] for r in against_reference(None, ["a"], measure)] == ["a"]


def test_unknown_backend_and_table_column_are_named():
    from medwb.bench.records import table
    from medwb.errors import MedwbError
    with pytest.raises(MedwbError, match=r"variants\[0\]: backend 'tensorrt' is unknown; use one of pytorch, bigdl"):
        registry.get("tensorrt", "variants[0]")
    with pytest.raises(ValueError, match="unknown table column"):
        table([], ["variant", "speed"])
    assert list(table([{"record_type": "run"}, {"variant": "x", "size_bytes": 2_500_000}],
                      ["variant", "size_MB"]).itertuples(index=False)) == [("x", 2.5)]
