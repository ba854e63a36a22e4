"""The package's shape, enforced by reading the sources (function bodies included; no import is executed):
layers import downward only, nothing imports in a circle, no private name crosses a module, and Ray is
imported only from the worker layer up. The layers are described in docs/contributing.md, "The package's folders"."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "dlma_ray"

# a top-level folder (or top-level module) of dlma_ray -> its layer; every module inherits its folder's layer
LAYERS = {
    # 0 vocabulary: no project imports beyond this layer
    "core": 0,
    # 1 the run: config tree, checks, contracts; paths, state, locks, trackers
    "config": 1, "run": 1,
    # 2 domain: records, models, tensor math, judges, filters (no Ray)
    "data": 2, "model": 2, "evaluation": 2,
    # 3 workers: what runs inside a Ray actor, task or train worker, and the metrics they record
    "workers": 3,
    # 4 stages: one stage on Ray, blind to the method
    "stages": 4,
    # 5 methods: what differs by train.method
    "methods": 5,
    # 6 views of a run
    "views": 6,
    # 7 the loop and the command line (the package's top level)
    "pipeline": 7, "commands": 7, "cli": 7, "__main__": 7, "plan": 7,
}
TOP_LEVEL_MODULES_AT_MOST = 8
RAY_FROM = 3


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE).with_suffix("").parts
    return ".".join(p for p in parts if p != "__init__")


def layer_of(module: str) -> int:
    top = module.split(".")[0]
    if top not in LAYERS:
        raise KeyError(f"dlma_ray.{module} has no layer: add it to LAYERS in tests/unit/test_layers.py and the docs")
    return LAYERS[top]


def imports_of(path: Path):
    """(line, imported project module, names imported from it) for every import in the file."""
    tree = ast.parse(path.read_text(), str(path))
    here = module_name(path)
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolve against this module's package
                pkg = here.split(".")[: -node.level or None] if path.name != "__init__.py" else here.split(".")
                base = ".".join([*pkg, base] if base else pkg)
                base = f"dlma_ray.{base}" if base else "dlma_ray"
            if base == "dlma_ray":
                for alias in node.names:
                    yield node.lineno, alias.name, []
            elif base.startswith("dlma_ray."):
                target = base[len("dlma_ray."):]
                folder = PACKAGE.joinpath(*target.split("."))
                subs = [a.name for a in node.names if (folder / f"{a.name}.py").exists()]
                for name in subs:  # `from dlma_ray.stages import score` imports the module stages.score
                    yield node.lineno, f"{target}.{name}", []
                rest = [a.name for a in node.names if a.name not in subs]
                if rest:
                    yield node.lineno, target, rest
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("dlma_ray."):
                    yield node.lineno, alias.name[len("dlma_ray."):], []


def third_party_imports(path: Path) -> set[str]:
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            out.add(node.module.split(".")[0])
    return out


SOURCES = sorted(PACKAGE.rglob("*.py"))


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every circle a depth-first walk of ``graph`` (node -> the nodes it imports) closes."""
    seen, stack, found = set(), [], []

    def visit(node):
        if node in stack:
            found.append(stack[stack.index(node):] + [node])
            return
        if node in seen:
            return
        seen.add(node)
        stack.append(node)
        for t in sorted(graph.get(node, ())):
            visit(t)
        stack.pop()

    for node in sorted(graph):
        visit(node)
    return found


def test_every_module_has_a_layer():
    for path in SOURCES:
        if module_name(path):
            layer_of(module_name(path))


def test_imports_point_down_or_sideways():
    upward = []
    for path in SOURCES:
        here = module_name(path)
        if not here:
            continue
        for line, target, _ in imports_of(path):
            if layer_of(target) > layer_of(here):
                upward.append(f"dlma_ray/{path.relative_to(PACKAGE)}:{line} ({here}, layer {layer_of(here)}) imports "
                              f"{target} (layer {layer_of(target)})")
    assert not upward, "imports pointing up a layer:\n" + "\n".join(upward)


def test_no_import_circle():
    graph: dict[str, set[str]] = {}
    for path in SOURCES:
        here = module_name(path)
        if here:
            graph.setdefault(here, set()).update(t for _, t, _ in imports_of(path) if t != here)
    # A package's __init__ importing its own submodules is how a registry fills itself, not a circle.
    for node, targets in graph.items():
        graph[node] = {t for t in targets if t in graph and not t.startswith(node + ".")}
    cycle = cycles(graph)
    assert not cycle, "import circles: " + "; ".join(" -> ".join(c) for c in cycle)


def test_no_import_circle_between_folders():
    """Folders import one way: a folder whose module imports another folder's is never imported back by it (a
    sideways import between two folders of one layer is fine once; both ways is a circle)."""
    edges: dict[str, set[str]] = {}
    where: dict[tuple[str, str], str] = {}
    for path in SOURCES:
        here = module_name(path)
        if not here or "." not in here:
            continue
        for line, target, _ in imports_of(path):
            a, b = here.split(".")[0], target.split(".")[0]
            if a != b and "." in target and b in LAYERS:
                edges.setdefault(a, set()).add(b)
                where.setdefault((a, b), f"dlma_ray/{path.relative_to(PACKAGE)}:{line} imports {target}")
    both_ways = sorted(f"{a} <-> {b}: {where[(a, b)]}; {where[(b, a)]}" for a in edges for b in edges[a]
                       if a < b and a in edges.get(b, ()))
    assert not both_ways, "folders importing each other:\n" + "\n".join(both_ways)
    cycle = cycles(edges)
    assert not cycle, "import circles between folders: " + "; ".join(" -> ".join(c) for c in cycle)


def test_no_private_name_crosses_a_module():
    crossing = []
    for path in SOURCES:
        for line, target, names in imports_of(path):
            private = [n for n in names if n.startswith("_") and not n.startswith("__")]
            if private:
                crossing.append(f"dlma_ray/{path.relative_to(PACKAGE)}:{line} imports {private} from {target}")
    assert not crossing, "\n".join(crossing)


def test_no_ray_below_the_worker_layer():
    low = [module_name(p) for p in SOURCES if module_name(p) and layer_of(module_name(p)) < RAY_FROM
           and "ray" in third_party_imports(p)]
    assert not low, f"Ray imported below the worker layer: {low}"


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_module_over_500_lines(path):
    """A module is one concern; past about 500 lines it is usually two (a cap on size alone split concerns in two)."""
    if path.relative_to(PACKAGE).as_posix() == "config/tree.py":
        pytest.skip("the config tree is one documented field a line")
    assert len(path.read_text().splitlines()) <= 500


def test_top_level_holds_few_modules():
    top = sorted(p.name for p in PACKAGE.glob("*.py"))
    assert len(top) <= TOP_LEVEL_MODULES_AT_MOST, f"dlma_ray/ holds {len(top)} modules at its top: {top}"


def test_no_two_modules_share_a_file_name():
    seen: dict[str, str] = {}
    clashes = []
    for path in SOURCES:
        if path.name == "__init__.py":
            continue
        rel = str(path.relative_to(PACKAGE))
        if path.name in seen:
            clashes.append(f"{seen[path.name]} and {rel}")
        seen[path.name] = rel
    assert not clashes, "file names used twice: " + "; ".join(clashes)


def test_every_folder_says_what_lives_there():
    for init in PACKAGE.glob("*/__init__.py"):
        doc = ast.get_docstring(ast.parse(init.read_text()))
        assert doc, f"{init.relative_to(PACKAGE)} needs a docstring saying what lives in the folder"
