"""Imports run one way, read from the source (imports inside functions and relative imports included): no
circles among the `hiir.*` modules, no import that climbs a layer, and few imports inside functions, each with
its reason."""
from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FOLDERS = {"platform": "hiir.platform", "models": "hiir.models", "data_prep": "hiir.data_prep"}

# Top to bottom; a module may import its own layer or any layer below it, never one above.
LAYERS = [
    ("cli", ("hiir.platform.cli",)),
    ("results", ("hiir.platform.results",)),
    ("study", ("hiir.platform.study",)),
    ("train", ("hiir.platform.train",)),
    ("evaluation", ("hiir.platform.evaluation",)),
    ("core", ("hiir.platform.config", "hiir.platform.model_section", "hiir.platform.tracking",
              "hiir.platform.fields", "hiir.platform.errors")),
    ("models", ("hiir.models",)),
    ("data_prep", ("hiir.data_prep",)),
]
MAX_FUNCTION_IMPORTS = 20  # in platform/: each one buys start-up time or loads a heavy optional part


def layer(module: str) -> int:
    for rank, (_, prefixes) in enumerate(LAYERS):
        if any(module == p or module.startswith(p + ".") for p in prefixes):
            return rank
    raise AssertionError(f"{module} belongs to no layer; add it to LAYERS")


def modules() -> dict[str, Path]:
    found = {}
    for folder, package in FOLDERS.items():
        for path in (ROOT / folder).rglob("*.py"):
            parts = path.relative_to(ROOT / folder).with_suffix("").parts
            parts = parts[:-1] if parts[-1] == "__init__" else parts
            found[".".join((package, *parts))] = path
    return found


def imports(module: str, path: Path, known: set[str]) -> list[tuple[str, int, bool]]:
    """(imported hiir module, line, inside a function) for every import of `module` (its source at `path`);
    relative imports (`from .presets import build`) are resolved against the module's own package."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    tree = ast.parse(path.read_text())
    inside = {id(n) for f in ast.walk(tree) if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef))
              for n in ast.walk(f)}
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and (node.module or node.level):
            base = node.module or ""
            if node.level:  # relative: climb level - 1 packages from this one
                root = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{root}.{base}" if base else root
            names = [f"{base}.{a.name}" for a in node.names] + [base]
        else:
            continue
        for name in names:
            while name and name not in known:  # `from pkg import module` or `from module import name`
                name = name.rpartition(".")[0]
            if name.startswith("hiir."):
                out.append((name, node.lineno, id(node) in inside))
                break
    return out


def graph() -> dict[str, set[str]]:
    found = modules()
    return {m: {name for name, _, _ in imports(m, p, set(found))} - {m} for m, p in found.items()}


def test_no_import_climbs_a_layer():
    found = modules()
    upward = [f"{found[m].relative_to(ROOT)}:{line} imports {name} ({LAYERS[layer(m)][0]} -> {LAYERS[layer(name)][0]})"
              for m, p in found.items() for name, line, _ in imports(m, p, set(found)) if layer(name) < layer(m)]
    assert not upward, "\n".join(upward)


def test_models_and_data_prep_do_not_know_each_other():
    edges = [(m, n) for m, deps in graph().items() for n in deps
             if {m.split(".")[1], n.split(".")[1]} == {"models", "data_prep"}]
    assert not edges, edges


def test_no_circles():
    edges = graph()
    state: dict[str, int] = defaultdict(int)  # 0 new, 1 on the path, 2 done
    cycles = []

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(edges.get(node, ())):
            if state[nxt] == 1:
                cycles.append(" -> ".join(path[path.index(nxt):] + [node, nxt]) if nxt in path else f"{node} -> {nxt}")
            elif state[nxt] == 0:
                visit(nxt, [*path, node])
        state[node] = 2

    for node in sorted(edges):
        if state[node] == 0:
            visit(node, [])
    assert not cycles, "\n".join(cycles)


def test_imports_inside_functions_are_few_and_each_says_why():
    lines_of: dict[Path, list[str]] = {}
    inside = []
    for path in (ROOT / "platform").rglob("*.py"):
        tree = ast.parse(path.read_text())
        for f in ast.walk(tree):
            if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef)):
                inside += [(path, n.lineno) for n in ast.walk(f) if isinstance(n, (ast.Import, ast.ImportFrom))]
    unexplained = []
    for path, line in sorted(set(inside)):
        text = lines_of.setdefault(path, path.read_text().splitlines())
        if "#" not in text[line - 1] and not text[line - 2].strip().startswith("#"):
            unexplained.append(f"{path.relative_to(ROOT)}:{line}: {text[line - 1].strip()}")
    assert len(set(inside)) <= MAX_FUNCTION_IMPORTS, f"{len(set(inside))} imports inside functions in platform/"
    assert not unexplained, "imports inside functions without a reason:\n" + "\n".join(unexplained)
