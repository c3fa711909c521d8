"""The package's import graph: no cycles, and no upward imports (lower layers never import the CLIs, the train
loop or the evaluator). Read from the source with `ast`, lazy (function-level) imports included, since a cycle
through a lazy import is still a cycle of responsibilities."""

import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1] / "beltcrack_jax"

# Layer -> packages/modules it must never import (prefix match on dotted names).
FORBIDDEN = {
    "beltcrack_jax.models": ("beltcrack_jax.train", "beltcrack_jax.eval", "beltcrack_jax.cli", "beltcrack_jax.convert",
                             "beltcrack_jax.weights", "beltcrack_jax.predict", "beltcrack_jax.export"),
    "beltcrack_jax.weights": ("beltcrack_jax.train", "beltcrack_jax.eval", "beltcrack_jax.cli", "beltcrack_jax.convert"),
    "beltcrack_jax.configs": ("beltcrack_jax.models", "beltcrack_jax.train", "beltcrack_jax.eval", "beltcrack_jax.cli"),
    "beltcrack_jax.ops": ("beltcrack_jax.models", "beltcrack_jax.train", "beltcrack_jax.eval", "beltcrack_jax.cli"),
    "beltcrack_jax.train": ("beltcrack_jax.convert", "beltcrack_jax.cli", "beltcrack_jax.predict", "beltcrack_jax.export"),
}
# Every CLI may use the shared `cli.logs` / `cli.config_flag` helpers; nothing else in cli/ is a library.
CLI_HELPERS = ("beltcrack_jax.cli.logs", "beltcrack_jax.cli.config_flag", "beltcrack_jax.cli")


def module_name(path: pathlib.Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in ROOT.rglob("*.py")}


def _resolve(name: str) -> str | None:
    """The module a dotted import name lands in (`from pkg import sub` names the submodule when there is one)."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def imports_of(mod: str) -> set[str]:
    tree = ast.parse(MODULES[mod].read_text())
    is_pkg = MODULES[mod].name == "__init__.py"
    out = set()
    for node in ast.walk(tree):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                pkg = mod.split(".") if is_pkg else mod.split(".")[:-1]
                base = ".".join(pkg[: len(pkg) - node.level + 1] + ([base] if base else []))
            names = [f"{base}.{a.name}" for a in node.names]
        for n in names:
            target = _resolve(n) if n.startswith("beltcrack_jax") else None
            # A submodule reaching its own package (`import beltcrack_jax.data` in data/pipeline.py) is no cycle:
            # Python has imported the package before the submodule, so the import is a no-op.
            if target and target != mod and not mod.startswith(target + "."):
                out.add(target)
    return out


GRAPH = {m: imports_of(m) for m in MODULES}


def test_no_import_cycles():
    # Tarjan's strongly connected components; every component must be a single module.
    index, low, stack, on_stack, cycles, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in GRAPH[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                cycles.append(sorted(comp))

    for m in sorted(GRAPH):
        if m not in index:
            visit(m)
    assert not cycles, f"import cycles: {cycles}"


@pytest.mark.parametrize("layer", sorted(FORBIDDEN))
def test_no_upward_imports(layer):
    bad = [f"{m} -> {t}" for m, targets in GRAPH.items() if m == layer or m.startswith(layer + ".")
           for t in targets if t.startswith(FORBIDDEN[layer]) and not t.startswith(CLI_HELPERS)]
    assert not bad, "upward imports: " + "; ".join(sorted(bad))
