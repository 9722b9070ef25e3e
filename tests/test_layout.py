"""The layout's promises (the architecture issue): backend names are compared only inside
medwb/backends, the apps do not import the benchmark, and no module-level import cycle."""
import ast
from pathlib import Path

import pytest

from medwb.backends import registry

PACKAGE = Path(__file__).resolve().parents[1] / "medwb"


def _modules() -> dict[str, ast.Module]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        name = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts).removesuffix(".__init__")
        out[name] = ast.parse(path.read_text(encoding="utf-8"), str(path))
    return out


def _imports(tree: ast.Module, module: str, top_level_only: bool) -> set[str]:
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    found = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            base = node.module
            found.add(base)
            found |= {f"{base}.{a.name}" for a in node.names}
    return {m for m in found if m.startswith("medwb")}


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
    for module, tree in _modules().items():
        if module.startswith("medwb.apps"):
            bench = {m for m in _imports(tree, module, top_level_only=False) if m.startswith("medwb.bench")}
            assert bench == set(), f"{module} imports {bench}"


def test_no_module_level_import_cycles():
    modules = _modules()
    graph = {m: {i for i in _imports(t, m, top_level_only=True) if i in modules and i != m}
             for m, t in modules.items()}

    def visit(node, stack):
        if node in stack:
            pytest.fail("import cycle: " + " -> ".join(stack[stack.index(node):] + [node]))
        for nxt in graph[node]:
            visit(nxt, stack + [node])
    for m in graph:
        visit(m, [])


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
