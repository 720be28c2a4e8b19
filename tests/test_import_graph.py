"""The package is layered: imports (at module level and inside functions alike) only go down the
declared order, and no two modules import each other, however indirectly."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "megatron_kd"

# Lower layers never import higher ones; packages in one layer do not import each other.
LAYERS = [
    {"errors", "console", "files"},
    {"jsonio"},
    {"config"},
    {"models", "data", "runtime"},
    {"checkpoint"},
    {"distill"},
    {"training"},
    {"study", "evals", "convert", "slurm"},
    {"cli"},
    {"__main__"},
]
RANK = {pkg: i for i, layer in enumerate(LAYERS) for pkg in layer}


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports() -> dict[str, list[tuple[str, int, bool, str]]]:
    """module -> [(imported megatron_kd module, line, at module level?, source line)]."""
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        mod, lines = _module_name(path), path.read_text().splitlines()
        tree = ast.parse("\n".join(lines))
        top = {id(n) for n in tree.body}
        found = []
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                # `from megatron_kd.runtime import preemption` imports a module, not a name
                where = PACKAGE.parent / node.module.replace(".", "/")
                names = [f"{node.module}.{a.name}" if (where / a.name).with_suffix(".py").exists()
                         else node.module for a in node.names]
            else:
                assert not isinstance(node, ast.ImportFrom), f"{path}:{node.lineno}: use absolute imports"
                continue
            for name in names:
                if name.split(".")[0] == "megatron_kd":
                    found.append((name, node.lineno, id(node) in top, lines[node.lineno - 1]))
        out[mod] = found
    return out


def _package(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "megatron_kd"


def test_layers_are_declared_and_respected():
    graph = _imports()
    packages = {_package(m) for m in graph} - {"megatron_kd"}
    assert packages <= set(RANK), f"packages without a layer: {sorted(packages - set(RANK))}"
    wrong = []
    for mod, found in graph.items():
        src = _package(mod)
        for target, line, _, text in found:
            dst = _package(target)
            if src in ("megatron_kd", dst) or dst == "megatron_kd":
                continue
            if RANK[dst] >= RANK[src]:
                wrong.append(f"{mod}:{line} ({src}, layer {RANK[src]}) imports {target} "
                             f"({dst}, layer {RANK[dst]}): {text.strip()}")
    assert not wrong, "imports against the layer order:\n" + "\n".join(wrong)


def test_no_import_cycles_between_modules():
    graph = {m: {t for t, *_ in found} for m, found in _imports().items()}
    known = set(graph)
    # a module imports its package's __init__ implicitly; those only re-export, so leave them out
    edges = {m: {t if t in known else t.rsplit(".", 1)[0] for t in ts} - {m} for m, ts in graph.items()}
    index, low, stack, on_stack, cycles, counter = {}, {}, [], set(), [], [0]

    def visit(v):  # Tarjan's strongly connected components
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in edges.get(v, ()):
            if w not in known:
                continue
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

    for v in sorted(known):
        if v not in index:
            visit(v)
    assert not cycles, f"modules that import each other (directly or through others): {cycles}"


def test_lazy_imports_say_why():
    """Inside functions, megatron_kd modules are imported only by the CLI (start-up time: torch
    and megatron-core load after argument parsing) or with a `# lazy:` reason on the line."""
    unexplained = [f"{mod}:{line}: {text.strip()}" for mod, found in _imports().items()
                   for _, line, top, text in found
                   if not top and _package(mod) != "cli" and "# lazy:" not in text]
    assert not unexplained, "lazy imports without a reason:\n" + "\n".join(unexplained)


def test_no_module_imports_another_modules_private_names():
    """What modules share is public (e.g. distill/vocab_parallel.py for the KD objectives):
    `from megatron_kd.x import _name` couples a module to another's internals."""
    bad = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("megatron_kd"):
                bad += [f"{_module_name(path)}:{node.lineno}: {a.name} from {node.module}"
                        for a in node.names if a.name.startswith("_") and not a.name.startswith("__")]
    assert not bad, "private names imported across modules:\n  " + "\n  ".join(bad)
