"""The package's architecture, checked: data flows one way through layers of
subpackages, and no module imports itself through a cycle.

Every `import` of toolken_plus counts, also those inside functions (a
function-level import hides a cycle, it does not remove it). A subpackage may
import from its own modules and from lower layers only; subpackages that
share a layer (train, infer) never import each other.
"""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "toolken_plus"

# Lowest first. `toolken_plus/__init__.py` (the public API) may re-export anything.
LAYERS = [
    {"rundir", "config", "distributed", "loggers"},  # files on disk, config glue, torchrun ranks, run loggers: no model, no data
    {"data"},  # examples, readers, prompts, encoding
    {"tools"},  # Tool, plugins, argument parsing, isolation
    {"tasks"},  # benchmarks: data → examples, prompts, items, scoring
    {"backbone"},  # the frozen LM
    {"kv"},  # KV rows and shared-prefix attention
    {"adapter"},  # the trained toolken head and its files
    {"rerank"},  # Toolken+ stage 2
    {"train", "infer"},  # the two recipes, independent of each other
    {"serve"},  # the agent behind an HTTP API
    {"cli"},  # command-line entry points
]
RANK = {pkg: i for i, layer in enumerate(LAYERS) for pkg in layer}


def _modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


def _imports(name: str, path: Path) -> set[str]:
    """toolken_plus modules that `name` imports anywhere in its body."""
    is_pkg = path.name == "__init__.py"
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".")[: len(name.split(".")) - node.level + (1 if is_pkg else 0)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            found.add(target)
            found |= {f"{target}.{a.name}" for a in node.names}  # `from pkg import module`
    return {m for m in found if m.split(".")[0] in ("toolken_plus", "toolken_plus_tools")}


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    graph = {}
    for name, path in modules.items():
        deps = set()
        for m in _imports(name, path):
            # the longest known module a dotted name refers to (an attribute import resolves to its module)
            while m and m not in modules and "." in m:
                m = m.rsplit(".", 1)[0]
            if m in modules and m != name:
                deps.add(m)
            elif m.startswith("toolken_plus_tools"):
                deps.add(m)
        graph[name] = deps
    return graph


def _subpackage(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None


def test_every_subpackage_has_a_layer():
    unplaced = {_subpackage(m) for m in _modules()} - set(RANK) - {None}
    assert not unplaced, f"place {unplaced} in LAYERS"


def test_imports_go_down_the_layers_only():
    wrong = []
    for module, deps in _graph().items():
        src = _subpackage(module)
        if src is None:
            continue  # the public API
        for dep in deps:
            dst = _subpackage(dep)
            if dep.startswith("toolken_plus_tools"):
                wrong.append(f"{module} → {dep} (core code must not import the built-in tool packs)")
            elif dst is None:
                wrong.append(f"{module} → toolken_plus (the public API is for users, not the library)")
            elif dst != src and RANK[dst] >= RANK[src]:
                wrong.append(f"{module} ({src}) → {dep} ({dst})")
    assert not wrong, "imports against the layering:\n" + "\n".join(sorted(wrong))


def test_no_import_cycles():
    graph = _graph()
    index, low, stack, on_stack, cycles = {}, {}, [], set(), []

    def visit(v):  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in graph:
                continue
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            scc = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                scc.append(w)
                if w == v:
                    break
            if len(scc) > 1:
                cycles.append(sorted(scc))

    for v in graph:
        if v not in index:
            visit(v)
    assert not cycles, f"import cycles: {cycles}"


def test_the_checker_sees_function_level_imports(tmp_path):
    mod = tmp_path / "m.py"
    mod.write_text("def f():\n    from toolken_plus.infer.agent import Agent\n")
    assert "toolken_plus.infer.agent" in _imports("toolken_plus.train.m", mod)
