"""Imports flow one way: the package layering, checked statically with `ast`.

Bottom to top (LEVELS below is the table the checks read):

    common                      helpers; import no raylars package
    comms, ingest, trainers.*   components (trainers.* = the modules listed one by one)
    trainers.worker             the per-rank trainer
    job                         Ray job glue (root config, Train loop adapter, restarts)
    tune                        sweeps
    launch/, benchmarks/        scripts: no package imports them; launch/ imports
                                packages only, benchmarks/ packages and its siblings

Every .py file of the packages and of benchmarks/ is parsed (never imported: this test
imports no project package and runs in well under a second). *All* imports count: at
module top, inside functions, under `if TYPE_CHECKING:`, in try/except. A lazy or
type-only import is still a dependency of the design, and a lazy import that closes a
cycle is a cycle that only breaks later, at call time.
"""

from __future__ import annotations

import ast
import textwrap
from collections import deque
from dataclasses import dataclass, field
from functools import cache
from itertools import pairwise
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

# Folders at the repository root that hold modules to check. Any other root folder with
# .py files (but those in NOT_CODE) makes test_every_root_folder_is_known fail.
ROOTS = ("common", "comms", "ingest", "trainers", "job", "tune", "launch", "benchmarks")
NOT_CODE = {"tests", "outputs", "multirun", "conf", "build", "dist", "__pycache__"}

LEVEL_NAMES = {
    0: "common helpers",
    1: "components",
    2: "per-rank trainer",
    3: "Ray job glue",
    4: "tune",
    5: "scripts",
}

# Module (or package prefix) -> level. A module may import modules of its level or lower.
# The level of a module is that of its longest prefix in this table, except for the
# prefixes in ONE_BY_ONE, which cover only themselves: each module of those packages is
# listed, so that a new one must be placed (component or not) by whoever adds it.
LEVELS = {
    "common": 0,
    "comms": 1,
    "ingest": 1,
    "trainers": 1,  # trainers/__init__.py: a component-level module (may not pull in worker)
    "trainers.models": 1,
    "trainers.lars": 1,
    "trainers.schedule": 1,
    "trainers.precision": 1,
    "trainers.checkpoint": 1,
    "trainers.optim": 1,
    "trainers.batching": 1,
    "trainers.config": 1,
    "trainers.faults": 1,
    "trainers.worker": 2,
    "job": 3,
    "tune": 4,
    "launch": 5,
    "benchmarks": 5,
}
ONE_BY_ONE = {"trainers"}

# Script folders: their files run as `python launch/run.py`, so the script's own folder
# is first on sys.path and `import x` there means the sibling file x.py if there is one.
# No package imports a script. `launch/` scripts import packages only (not each other);
# `benchmarks/` scripts import packages and their benchmarks/ siblings (bench_util, ...),
# never launch.
SCRIPT_ROOTS = {"launch", "benchmarks"}
SIBLINGS_OK = {"benchmarks"}


# --------------------------------------------------------------------------- collector


@dataclass
class Module:
    name: str  # dotted; a package's __init__.py is the package's name
    path: Path | None  # None: a folder with no __init__.py (a namespace package)
    is_package: bool


@dataclass
class Graph:
    # importer -> {imported module: "path:line" of the first import of it}
    edges: dict[str, dict[str, str]] = field(default_factory=dict)
    # imports of a name under a repo root that is no module file (moved or deleted)
    dangling: list[str] = field(default_factory=list)
    # imports in a script that get a sibling script named like a package
    shadowed: list[str] = field(default_factory=list)


def discover(root: Path, roots=ROOTS) -> dict[str, Module]:
    """Every module under the given root folders (missing folders are skipped)."""
    modules: dict[str, Module] = {}
    for top in roots:
        base = root / top
        if not base.is_dir():
            continue
        for path in sorted(base.rglob("*.py")):
            if "__pycache__" in path.parts:
                continue
            parts = list(path.relative_to(root).with_suffix("").parts)
            # Every folder on the way is a package, with or without __init__.py.
            for i in range(1, len(parts)):
                pkg = ".".join(parts[:i])
                modules.setdefault(pkg, Module(pkg, None, True))
            if parts[-1] == "__init__":
                name = ".".join(parts[:-1])
                modules[name] = Module(name, path, True)
            else:
                name = ".".join(parts)
                modules[name] = Module(name, path, False)
    return modules


def _ancestors(name: str) -> list[str]:
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


def imports_of(mod: Module, modules: dict[str, Module], root: Path,
               script_roots=SCRIPT_ROOTS) -> tuple[dict[str, str], list[str], list[str]]:
    """The repo modules `mod` imports -> where; its dangling imports; its shadowed ones.

    Edges to packages: `import pkg.mod` / `from pkg.mod import x` first runs
    pkg/__init__.py, so it is an (implicit) edge to `pkg` as well as to `pkg.mod`; it is
    counted, e.g. `comms.config -> trainers` (so trainers/__init__.py pulling in the
    worker would show as a cycle and as a layering breach). But when the importer is
    itself inside `pkg`, that implicit edge is left out: Python has already started
    pkg/__init__.py before any module of the package runs, so it never triggers
    anything, and counting it would turn the ordinary pattern "pkg/__init__.py imports
    pkg.a; pkg.a imports pkg.b" into a false cycle pkg.a -> pkg -> pkg.a.
    An *explicit* use of the package's own __init__ stays an edge: `from pkg import
    name` inside pkg.a, where `name` is defined in __init__.py (not a submodule), needs
    __init__.py to have got that far, which is exactly a real circular import.
    `from pkg import sub` where pkg/sub.py exists resolves to `pkg.sub` (the package is
    then only implicit).
    In a script folder, an absolute import whose first name is a sibling file resolves
    to that file (`from bench_util import f` in benchmarks/x.py: benchmarks.bench_util),
    unless the script first drops its folder from sys.path (see _drops_own_folder).
    """
    found: dict[str, str] = {}
    dangling: list[str] = []
    shadowed: list[str] = []
    if mod.path is None:
        return found, dangling, shadowed
    tree = ast.parse(mod.path.read_text(encoding="utf-8"), filename=str(mod.path))
    tops = {name.split(".")[0] for name in modules}
    folder = mod.name.rpartition(".")[0]
    sees_siblings = (not mod.is_package and mod.name.split(".")[0] in script_roots
                     and not _drops_own_folder(tree))

    def absolute(name: str, line: int) -> str:
        first = name.split(".")[0]
        if sees_siblings and f"{folder}.{first}" in modules:
            if first in tops:
                shadowed.append(f"{where_file}:{line}: `{name}` gets the script "
                                f"{folder}.{first}, not the package {first}")
            return f"{folder}.{name}"
        return name
    own = set(_ancestors(mod.name)) | {mod.name}
    where_file = mod.path.relative_to(root)
    context: dict[int, str] = {}  # line of an import -> "in a function" / "TYPE_CHECKING"

    def add(target: str, line: int, explicit: bool) -> None:
        if target == mod.name or (not explicit and target in own):
            return
        kind = context.get(line)
        found.setdefault(target, f"{where_file}:{line}" + (f" ({kind})" if kind else ""))

    def add_name(name: str, line: int) -> None:
        """`import name` / `from name import ...`: name and all its packages."""
        if name.split(".")[0] not in tops:
            return  # stdlib / third party
        hit = name
        while hit not in modules:
            hit = hit.rpartition(".")[0]
            if not hit:
                break
        if hit != name:
            dangling.append(f"{where_file}:{line}: imports {name}, which is no module here")
        if hit:
            add(hit, line, explicit=True)
            for pkg in _ancestors(hit):
                add(pkg, line, explicit=False)

    _note_context(tree, context, None)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                add_name(absolute(alias.name, node.lineno), node.lineno)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: from the importer's package, up level-1 steps
                package = mod.name if mod.is_package else mod.name.rpartition(".")[0]
                parts = package.split(".") if package else []
                if node.level - 1 > len(parts) - 1:
                    dangling.append(f"{where_file}:{node.lineno}: relative import beyond the top")
                    continue
                parts = parts[: len(parts) - (node.level - 1)]
                base = ".".join(parts + ([node.module] if node.module else []))
            else:
                base = absolute(node.module or "", node.lineno)
            if base.split(".")[0] not in tops:
                continue
            subs = [f"{base}.{a.name}" for a in node.names if f"{base}.{a.name}" in modules]
            attrs = [a for a in node.names if f"{base}.{a.name}" not in modules]
            if attrs or base not in modules:
                add_name(base, node.lineno)  # names from base itself: an explicit edge
            else:  # only submodules: base is merely their package
                for pkg in [base, *_ancestors(base)]:
                    add(pkg, node.lineno, explicit=False)
            for sub in subs:
                add_name(sub, node.lineno)
    return found, dangling, shadowed


def _drops_own_folder(tree: ast.Module) -> bool:
    """`sys.path.pop(0)`, `del sys.path[0]` or `sys.path[0] = ...` at the top level of a
    script: its folder is then off sys.path before it imports anything of ours."""

    def is_path_0(node) -> bool:
        return (isinstance(node, ast.Subscript) and ast.unparse(node.value) == "sys.path"
                and ast.unparse(node.slice) == "0")

    for stmt in tree.body:
        if (isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Call)
                and ast.unparse(stmt.value.func) == "sys.path.pop"
                and [ast.unparse(a) for a in stmt.value.args] == ["0"]):
            return True
        if isinstance(stmt, ast.Delete) and any(is_path_0(t) for t in stmt.targets):
            return True
        if isinstance(stmt, ast.Assign) and any(is_path_0(t) for t in stmt.targets):
            return True
    return False


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _note_context(node: ast.AST, context: dict[int, str], kind: str | None) -> None:
    """Line of each import -> why it is not a plain top-level one (for the messages)."""
    if isinstance(node, (ast.Import, ast.ImportFrom)):
        if kind:
            context[node.lineno] = kind
        return
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
        kind = kind or "in a function"
    if isinstance(node, ast.If) and _is_type_checking(node.test):
        for child in node.body:
            _note_context(child, context, "TYPE_CHECKING")
        for child in node.orelse:
            _note_context(child, context, kind)
        return
    for child in ast.iter_child_nodes(node):
        _note_context(child, context, kind)


def build_graph(root: Path, roots=ROOTS) -> tuple[dict[str, Module], Graph]:
    modules = discover(root, roots)
    graph = Graph()
    for name, mod in sorted(modules.items()):
        found, dangling, shadowed = imports_of(mod, modules, root)
        graph.edges[name] = found
        graph.dangling += dangling
        graph.shadowed += shadowed
    return modules, graph


# --------------------------------------------------------------------------- checkers


def find_cycles(edges: dict[str, dict[str, str]]) -> list[list[str]]:
    """One shortest cycle per strongly connected component, as a chain a -> ... -> a."""
    nodes = sorted(set(edges) | {t for ts in edges.values() for t in ts})
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    components: list[set[str]] = []
    counter = 0

    for start in nodes:  # Tarjan, iterative
        if start in index:
            continue
        work = [(start, iter(sorted(edges.get(start, ()))))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(edges.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                comp = set()
                while True:
                    top = stack.pop()
                    on_stack.discard(top)
                    comp.add(top)
                    if top == node:
                        break
                if len(comp) > 1 or node in edges.get(node, ()):
                    components.append(comp)

    cycles = []
    for comp in components:
        first = min(comp)
        prev: dict[str, str] = {}
        queue = deque([first])
        while queue:  # BFS inside the component, back to `first`
            node = queue.popleft()
            for child in sorted(edges.get(node, ())):
                if child not in comp:
                    continue
                if child == first:
                    chain = [first]
                    while node != first:
                        chain.append(node)
                        node = prev[node]
                    chain.append(first)
                    chain = [chain[0], *reversed(chain[1:-1]), chain[-1]]
                    cycles.append(chain)
                    queue.clear()
                    break
                if child not in prev:
                    prev[child] = node
                    queue.append(child)
    return sorted(cycles)


def level_of(name: str, levels=LEVELS, one_by_one=ONE_BY_ONE) -> int | None:
    if name in levels:
        return levels[name]
    for prefix in reversed(_ancestors(name)):
        if prefix in levels:
            return None if prefix in one_by_one else levels[prefix]
    return None


def unplaced(names, levels=LEVELS, one_by_one=ONE_BY_ONE) -> list[str]:
    return sorted(n for n in names if level_of(n, levels, one_by_one) is None)


def _without_covered_packages(targets: dict[str, str], keep) -> list[tuple[str, str]]:
    """The targets that `keep` accepts, less a package when one of its modules is there
    too (`from launch.config import x` is one breach, not also one for `launch`)."""
    kept = {t: w for t, w in targets.items() if keep(t)}
    return sorted((t, w) for t, w in kept.items()
                  if not any(o.startswith(t + ".") for o in kept))


def layer_breaches(edges, levels=LEVELS, one_by_one=ONE_BY_ONE) -> list[str]:
    out = []
    for src, targets in sorted(edges.items()):
        ls = level_of(src, levels, one_by_one)
        if ls is None:
            continue  # reported by test_every_module_has_a_level (as is an unplaced dst)

        def higher(dst, ls=ls):
            ld = level_of(dst, levels, one_by_one)
            return ld is not None and ld > ls

        for dst, where in _without_covered_packages(targets, higher):
            ld = level_of(dst, levels, one_by_one)
            out.append(f"{where}: {src} (level {ls}, {LEVEL_NAMES.get(ls)}) imports "
                       f"{dst} (level {ld}, {LEVEL_NAMES.get(ld)})")
    return out


def script_imports(edges, script_roots=SCRIPT_ROOTS, siblings_ok=SIBLINGS_OK) -> list[str]:
    out = []
    for src, targets in sorted(edges.items()):
        top = src.split(".")[0]

        def barred(dst, top=top):
            dst_top = dst.split(".")[0]
            return dst_top in script_roots and not (dst_top == top and top in siblings_ok)

        out += [f"{where}: {src} imports the script module {dst}"
                for dst, where in _without_covered_packages(targets, barred)]
    return out


def _show(edges, cycles) -> str:
    lines = []
    for chain in cycles:
        lines.append("  " + " -> ".join(chain))
        for a, b in pairwise(chain):
            lines.append(f"      {a} -> {b}  at {edges[a][b]}")
    return "\n".join(lines)


# --------------------------------------------------------------------------- the repo

@cache
def _repo() -> tuple[dict[str, Module], Graph]:
    return build_graph(REPO)  # parsed once, on first use (a syntax error fails the tests)


def test_the_collector_sees_the_repo():
    modules, _ = _repo()
    assert len([m for m in modules.values() if m.path]) > 20, sorted(modules)


def test_every_root_folder_is_known():
    unknown = []
    for folder in sorted(REPO.iterdir()):
        if (not folder.is_dir() or folder.name.startswith(".") or folder.name in NOT_CODE
                or folder.name.endswith(".egg-info") or folder.name in ROOTS):
            continue
        if any(p for p in folder.rglob("*.py") if "__pycache__" not in p.parts):
            unknown.append(folder.name)
    assert not unknown, (
        f"new root folder(s) with Python code: {unknown}. Add each to ROOTS and LEVELS in "
        f"{Path(__file__).relative_to(REPO)} (or to NOT_CODE if it is no code).")


def test_every_module_has_a_level():
    missing = unplaced(_repo()[0])
    assert not missing, (
        f"module(s) with no level: {missing}. Add each (or its package) to LEVELS in "
        f"{Path(__file__).relative_to(REPO)}, at the level it belongs to: "
        f"{LEVEL_NAMES}")


def test_no_import_cycles():
    edges = _repo()[1].edges
    cycles = find_cycles(edges)
    assert not cycles, "import cycle(s) between files:\n" + _show(edges, cycles)


def test_nothing_imports_launch_or_other_scripts():
    breaches = script_imports(_repo()[1].edges)
    assert not breaches, (
        "launch/ and benchmarks/ are scripts: no package imports them, launch/ scripts "
        "import packages only, benchmarks/ packages and each other:\n  " + "\n  ".join(breaches))


def test_no_script_shadows_a_package():
    # A script's folder is first on sys.path: a sibling named like a package hides it.
    shadowed = _repo()[1].shadowed
    assert not shadowed, ("rename the script, or drop its folder first (sys.path.pop(0)):\n  "
                          + "\n  ".join(shadowed))


def test_imports_flow_down_the_levels():
    breaches = layer_breaches(_repo()[1].edges)
    assert not breaches, "import(s) of a higher level:\n  " + "\n  ".join(breaches)


def test_imports_of_repo_packages_name_existing_modules():
    # A stale `from trainers.loop import x` after a move would otherwise shrink to an
    # edge to `trainers` only, and slip past the checks above.
    dangling = _repo()[1].dangling
    assert not dangling, "\n".join(dangling)


# --------------------------------------------------------------------------- self-tests

# Today's two cycles (the old layout); trainers.loop is today's per-rank trainer.
OLD_LEVELS = {**LEVELS, "trainers.loop": 2}
CYCLE_A = {"trainers.loop": {"launch.config": "x:1"}, "launch.config": {"trainers.loop": "x:2"}}
CYCLE_B = {"launch.job": {"tune.sweep": "x:1"}, "tune.sweep": {"tune.runner": "x:2"},
           "tune.runner": {"launch.job": "x:3"}}


def test_cycle_finder_reports_todays_cycles():
    edges = {**CYCLE_A, **CYCLE_B, "trainers.models": {}, "common.paths": {}}
    edges["tune.runner"] = {"launch.job": "x:3", "trainers.models": "x:4"}  # off the cycle
    assert find_cycles(edges) == [
        ["launch.config", "trainers.loop", "launch.config"],
        ["launch.job", "tune.sweep", "tune.runner", "launch.job"],
    ]
    assert "launch.job -> tune.sweep -> tune.runner -> launch.job" in _show(edges, find_cycles(edges))
    assert find_cycles({"a": {"a": "x:1"}}) == [["a", "a"]]
    assert find_cycles({"a": {"b": ""}, "b": {"c": ""}, "c": {}}) == []
    # two cycles through one node are one component; the shortest one is shown
    assert find_cycles({"a": {"b": "", "c": ""}, "b": {"a": ""}, "c": {"d": ""},
                        "d": {"a": ""}}) == [["a", "b", "a"]]


def test_layer_checkers_report_todays_breaches():
    edges = {**CYCLE_A, **CYCLE_B}
    assert layer_breaches(edges, OLD_LEVELS) == [
        "x:1: trainers.loop (level 2, per-rank trainer) imports launch.config (level 5, scripts)",
        "x:3: tune.runner (level 4, tune) imports launch.job (level 5, scripts)",
    ]
    assert script_imports(edges) == [
        "x:1: trainers.loop imports the script module launch.config",
        "x:3: tune.runner imports the script module launch.job",
    ]
    assert script_imports({"benchmarks.ingest": {"launch.prepare_data": "b:3",
                                                 "benchmarks.bench_util": "b:4"},
                           "launch.run": {"launch.config": "l:1", "job.config": "l:2"},
                           "job.cli": {"benchmarks.bench_util": "j:1"}}) == [
        "b:3: benchmarks.ingest imports the script module launch.prepare_data",
        "j:1: job.cli imports the script module benchmarks.bench_util",
        "l:1: launch.run imports the script module launch.config",
    ]
    # the new layout is clean
    ok = {"trainers.worker": {"trainers.models": "", "comms": "", "ingest.config": "", "common": ""},
          "job.loop": {"trainers.worker": ""}, "tune.runner": {"job.loop": ""},
          "launch.run": {"tune.runner": "", "job": ""}, "comms.config": {"common.validation": ""}}
    assert layer_breaches(ok) == [] and script_imports(ok) == [] and find_cycles(ok) == []
    # a component may not import the worker, nor common any package
    assert len(layer_breaches({"trainers": {"trainers.worker": ""},
                               "common.paths": {"ingest": ""}})) == 2


def test_unknown_modules_are_reported():
    assert unplaced(["trainers.loop", "trainers.models", "newpkg.x", "job.sub.deep", "trainers"]) == [
        "newpkg.x", "trainers.loop"]
    assert level_of("trainers.worker") == 2 and level_of("job.sub.deep") == 3


SYNTHETIC = {
    # today's cycle A: a top-level import one way, a lazy one back
    "trainers/__init__.py": '"""pkg"""\n',
    "trainers/loop.py": "import torch\nfrom launch.config import Config\n",
    "launch/__init__.py": "",
    "launch/config.py": """
        from __future__ import annotations
        def f():
            from trainers.loop import CHECKPOINT_FILE
        """,
    # today's cycle B, through a TYPE_CHECKING import, a relative submodule import and
    # a dotted plain import inside a function
    "launch/job.py": """
        from typing import TYPE_CHECKING
        if TYPE_CHECKING:
            from tune import sweep
        """,
    "tune/__init__.py": "",
    "tune/sweep.py": "from . import runner\n",
    "tune/runner.py": "def g():\n    import launch.job\n",
    # the ingest pattern: __init__ imports its submodules (one lazily), they import
    # siblings: no cycle (imagefolder). But ingest.parquet imports a name that
    # ingest/__init__.py defines: an explicit edge to it, so a real cycle.
    "ingest/__init__.py": """
        from ingest.config import DataConfig
        def load():
            from ingest import imagefolder, parquet
        """,
    "ingest/config.py": "import common.validation\n",
    "ingest/imagefolder.py": "from .config import DataConfig\nfrom ingest.config import x\n",
    "ingest/parquet.py": "try:\n    from ingest import DataConfig\nexcept ImportError:\n    pass\n",
    "common/validation.py": "",
    # a nested package without __init__.py, and a relative import two levels up
    "job/sub/a.py": "from ..b import thing\nfrom .. import b\n",
    "job/b.py": "from job.moved import gone\nimport job.sub\n",
    # scripts: sibling imports by bare name, and a script named like a package
    "benchmarks/lars.py": "import sys\nfrom launch.config import compose\nfrom trainers import loop\n"
                          "from bench_util import write_json\nimport ingest\n",
    "benchmarks/bench_util.py": "import json\n",
    "benchmarks/ingest.py": "",
    "launch/run.py": "import config\nimport tune.sweep\n",
    "benchmarks/tune.py": "import sys\nsys.path.pop(0)\nfrom tune.sweep import run\n",  # the package
    "benchmarks/old.py": "import sys\nsys.path[0] = 'repo'\nimport ingest\n",  # the package
}


def test_collector_on_synthetic_files(tmp_path):
    for rel, text in SYNTHETIC.items():
        path = tmp_path / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text).lstrip("\n"))
    modules, graph = build_graph(tmp_path)
    edges = {k: set(v) for k, v in graph.edges.items() if v}
    assert edges == {
        "trainers.loop": {"launch.config", "launch"},
        "launch.config": {"trainers.loop", "trainers"},
        "launch.job": {"tune.sweep", "tune"},
        "tune.sweep": {"tune.runner"},
        "tune.runner": {"launch.job", "launch"},
        "ingest": {"ingest.config", "ingest.imagefolder", "ingest.parquet"},
        "ingest.config": {"common.validation", "common"},
        "ingest.imagefolder": {"ingest.config"},
        "ingest.parquet": {"ingest"},  # explicit: a name from ingest/__init__.py
        "job.sub.a": {"job.b"},
        "job.b": {"job", "job.sub"},  # job: the dangling job.moved falls back to it
        "benchmarks.lars": {"launch.config", "launch", "trainers.loop", "trainers",
                            "benchmarks.bench_util", "benchmarks.ingest"},  # not the package
        "launch.run": {"launch.config", "tune.sweep", "tune"},
        "benchmarks.tune": {"tune.sweep", "tune"},
        "benchmarks.old": {"ingest"},
    }
    assert graph.edges["launch.job"]["tune.sweep"] == "launch/job.py:3 (TYPE_CHECKING)"
    assert graph.edges["launch.config"]["trainers.loop"] == "launch/config.py:3 (in a function)"
    assert graph.edges["trainers.loop"]["launch.config"] == "trainers/loop.py:2"
    assert graph.dangling == ["job/b.py:1: imports job.moved, which is no module here"]
    assert find_cycles(graph.edges) == [
        ["ingest", "ingest.parquet", "ingest"],
        ["launch.config", "trainers.loop", "launch.config"],
        ["launch.job", "tune.sweep", "tune.runner", "launch.job"],
    ]
    assert unplaced(modules) == ["trainers.loop"]
    assert layer_breaches(graph.edges, OLD_LEVELS) == [
        "trainers/loop.py:2: trainers.loop (level 2, per-rank trainer) imports launch.config (level 5, scripts)",
        "tune/runner.py:2 (in a function): tune.runner (level 4, tune) imports launch.job (level 5, scripts)",
    ]
    assert [b.split(": ", 1)[1] for b in script_imports(graph.edges)] == [
        "benchmarks.lars imports the script module launch.config",
        "launch.run imports the script module launch.config",
        "trainers.loop imports the script module launch.config",
        "tune.runner imports the script module launch.job",
    ]
    assert graph.shadowed == [
        "benchmarks/lars.py:5: `ingest` gets the script benchmarks.ingest, not the package ingest"]
