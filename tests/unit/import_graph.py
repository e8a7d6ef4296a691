"""The static import graph behind test_layering.py (no tests here, no project imports).

It owns the mechanism: the module files under some root folders, every import of each
read with `ast` (never imported), the graph importer -> imported module, and the checks
on it (cycles, level breaches, imports of scripts). The policy (root folders, levels,
script folders) stays in test_layering.py and comes in as arguments: pure functions.
Imported by name (pytest's prepend mode puts tests/unit on sys.path); not test_*, so
pytest does not collect it.
"""

from __future__ import annotations

import ast
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from itertools import pairwise
from pathlib import Path

Edges = Mapping[str, Mapping[str, str]]  # importer -> {imported: "path:line"}


# --------------------------------------------------------------------------- modules


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


def discover(root: Path, roots: Iterable[str]) -> dict[str, Module]:
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
            is_package = parts[-1] == "__init__"
            name = ".".join(parts[:-1] if is_package else parts)
            modules[name] = Module(name, path, is_package)
    return modules


def ancestors(name: str) -> list[str]:
    """The packages above a dotted name, outermost first: a.b.c -> [a, a.b]."""
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


# --------------------------------------------------------------------------- collector


@dataclass
class _Scan:
    """One module's scan: what resolving its imports needs, and what it has found."""

    mod: Module
    modules: dict[str, Module]
    where_file: Path  # the module's path, relative to the root (for the messages)
    tops: set[str]  # first names of the modules here: other first names are not ours
    sees_siblings: bool  # a script whose folder is first on sys.path
    context: dict[int, str]  # line of an import -> "in a function" / "TYPE_CHECKING"
    found: dict[str, str] = field(default_factory=dict)
    dangling: list[str] = field(default_factory=list)
    shadowed: list[str] = field(default_factory=list)
    folder: str = field(init=False)  # the module's folder, dotted (a script's siblings)
    own: set[str] = field(init=False)  # the module and its packages

    def __post_init__(self) -> None:
        self.folder = self.mod.name.rpartition(".")[0]
        self.own = set(ancestors(self.mod.name)) | {self.mod.name}


def imports_of(mod: Module, modules: dict[str, Module], root: Path,
               script_roots: Iterable[str]) -> tuple[dict[str, str], list[str], list[str]]:
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
    if mod.path is None:
        return {}, [], []
    tree = ast.parse(mod.path.read_text(encoding="utf-8"), filename=str(mod.path))
    sees_siblings = (not mod.is_package and mod.name.split(".")[0] in set(script_roots)
                     and not _drops_own_folder(tree))
    scan = _Scan(mod, modules, mod.path.relative_to(root),
                 {name.split(".")[0] for name in modules}, sees_siblings, {})
    _note_context(tree, scan.context, None)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                _add_name(scan, _absolute(scan, alias.name, node.lineno), node.lineno)
        elif isinstance(node, ast.ImportFrom):
            _add_from(scan, node)
    return scan.found, scan.dangling, scan.shadowed


def _absolute(scan: _Scan, name: str, line: int) -> str:
    """An absolute import's target: a sibling script's module if a script sees one."""
    first = name.split(".")[0]
    if scan.sees_siblings and f"{scan.folder}.{first}" in scan.modules:
        if first in scan.tops:
            scan.shadowed.append(f"{scan.where_file}:{line}: `{name}` gets the script "
                                 f"{scan.folder}.{first}, not the package {first}")
        return f"{scan.folder}.{name}"
    return name


def _add(scan: _Scan, target: str, line: int, explicit: bool) -> None:
    """An edge to `target`, first import only; implicit edges to own packages skipped."""
    if target == scan.mod.name or (not explicit and target in scan.own):
        return
    kind = scan.context.get(line)
    scan.found.setdefault(target, f"{scan.where_file}:{line}" + (f" ({kind})" if kind else ""))


def _add_name(scan: _Scan, name: str, line: int) -> None:
    """`import name` / `from name import ...`: name and all its packages."""
    if name.split(".")[0] not in scan.tops:
        return  # stdlib / third party
    hit = name
    while hit not in scan.modules:
        hit = hit.rpartition(".")[0]
        if not hit:
            break
    if hit != name:
        scan.dangling.append(f"{scan.where_file}:{line}: imports {name}, which is no module here")
    if hit:
        _add(scan, hit, line, explicit=True)
        for pkg in ancestors(hit):
            _add(scan, pkg, line, explicit=False)


def _relative_base(scan: _Scan, node: ast.ImportFrom) -> str | None:
    """`from ..x import y`: from the importer's package, up level-1 steps (None: too far)."""
    mod = scan.mod
    package = mod.name if mod.is_package else mod.name.rpartition(".")[0]
    parts = package.split(".") if package else []
    if node.level - 1 > len(parts) - 1:
        scan.dangling.append(f"{scan.where_file}:{node.lineno}: relative import beyond the top")
        return None
    parts = parts[: len(parts) - (node.level - 1)]
    return ".".join(parts + ([node.module] if node.module else []))


def _add_from(scan: _Scan, node: ast.ImportFrom) -> None:
    """`from base import a, b`: edges to the submodules among a, b and to base."""
    base = (_relative_base(scan, node) if node.level
            else _absolute(scan, node.module or "", node.lineno))
    if base is None or base.split(".")[0] not in scan.tops:
        return
    subs = [f"{base}.{a.name}" for a in node.names if f"{base}.{a.name}" in scan.modules]
    attrs = [a for a in node.names if f"{base}.{a.name}" not in scan.modules]
    if attrs or base not in scan.modules:
        _add_name(scan, base, node.lineno)  # names from base itself: an explicit edge
    else:  # only submodules: base is merely their package
        for pkg in [base, *ancestors(base)]:
            _add(scan, pkg, node.lineno, explicit=False)
    for sub in subs:
        _add_name(scan, sub, node.lineno)


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
        if (isinstance(stmt, (ast.Delete, ast.Assign))
                and any(is_path_0(t) for t in stmt.targets)):
            return True
    return False


def _note_context(node: ast.AST, context: dict[int, str], kind: str | None) -> None:
    """Line of each import -> why it is not a plain top-level one (for the messages)."""
    if isinstance(node, (ast.Import, ast.ImportFrom)):
        if kind:
            context[node.lineno] = kind
        return
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
        kind = kind or "in a function"
    if isinstance(node, ast.If) and (
            (isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING")
            or (isinstance(node.test, ast.Attribute) and node.test.attr == "TYPE_CHECKING")):
        for child in node.body:
            _note_context(child, context, "TYPE_CHECKING")
        for child in node.orelse:
            _note_context(child, context, kind)
        return
    for child in ast.iter_child_nodes(node):
        _note_context(child, context, kind)


def build_graph(root: Path, roots: Iterable[str],
                script_roots: Iterable[str]) -> tuple[dict[str, Module], Graph]:
    """The modules under `root`'s root folders, and the graph of their imports."""
    modules = discover(root, roots)
    graph = Graph()
    for name, mod in sorted(modules.items()):
        found, dangling, shadowed = imports_of(mod, modules, root, script_roots)
        graph.edges[name] = found
        graph.dangling += dangling
        graph.shadowed += shadowed
    return modules, graph


# --------------------------------------------------------------------------- cycles


def find_cycles(edges: Edges) -> list[list[str]]:
    """One shortest cycle per strongly connected component, as a chain a -> ... -> a."""
    cycles = [_shortest_cycle(edges, comp) for comp in _cyclic_components(edges)]
    return sorted(c for c in cycles if c)


def _cyclic_components(edges: Edges) -> list[set[str]]:
    """The strongly connected components with a cycle (Tarjan, iterative)."""
    nodes = sorted(set(edges) | {t for ts in edges.values() for t in ts})
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    components: list[set[str]] = []
    work: list[tuple[str, Iterator[str]]] = []  # the DFS path, each with children left

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        work.append((node, iter(sorted(edges.get(node, ())))))

    for start in nodes:
        if start in index:
            continue
        visit(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    visit(child)
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                comp = _pop_component(stack, on_stack, node)
                if len(comp) > 1 or node in edges.get(node, ()):
                    components.append(comp)
    return components


def _pop_component(stack: list[str], on_stack: set[str], root: str) -> set[str]:
    """Tarjan: the nodes on the stack down to `root`, its component's root."""
    comp = set()
    while True:
        top = stack.pop()
        on_stack.discard(top)
        comp.add(top)
        if top == root:
            return comp


def _shortest_cycle(edges: Edges, comp: set[str]) -> list[str] | None:
    """A shortest cycle through the component's first node (BFS inside the component)."""
    first = min(comp)
    prev: dict[str, str] = {}
    queue = deque([first])
    while queue:
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
                return [chain[0], *reversed(chain[1:-1]), chain[-1]]
            if child not in prev:
                prev[child] = node
                queue.append(child)
    return None


def show_cycles(edges: Edges, cycles: list[list[str]]) -> str:
    """The cycles for a message, each edge with where its import is."""
    lines = []
    for chain in cycles:
        lines.append("  " + " -> ".join(chain))
        for a, b in pairwise(chain):
            lines.append(f"      {a} -> {b}  at {edges[a][b]}")
    return "\n".join(lines)


# --------------------------------------------------------------------------- layers


def level_of(name: str, levels: Mapping[str, int], one_by_one: set[str]) -> int | None:
    """The level of the module's longest prefix in `levels` (None: unplaced); a prefix
    in `one_by_one` covers only itself."""
    if name in levels:
        return levels[name]
    for prefix in reversed(ancestors(name)):
        if prefix in levels:
            return None if prefix in one_by_one else levels[prefix]
    return None


def unplaced(names: Iterable[str], levels: Mapping[str, int], one_by_one: set[str]) -> list[str]:
    return sorted(n for n in names if level_of(n, levels, one_by_one) is None)


def _without_covered_packages(targets: Mapping[str, str],
                              keep: Callable[[str], bool]) -> list[tuple[str, str]]:
    """The targets that `keep` accepts, less a package when one of its modules is there
    too (`from launch.config import x` is one breach, not also one for `launch`)."""
    kept = {t: w for t, w in targets.items() if keep(t)}
    return sorted((t, w) for t, w in kept.items()
                  if not any(o.startswith(t + ".") for o in kept))


def layer_breaches(edges: Edges, levels: Mapping[str, int], one_by_one: set[str],
                   level_names: Mapping[int, str]) -> list[str]:
    """Each import of a module of a higher level than the importer's."""
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
            out.append(f"{where}: {src} (level {ls}, {level_names.get(ls)}) imports "
                       f"{dst} (level {ld}, {level_names.get(ld)})")
    return out


def script_imports(edges: Edges, script_roots: set[str], siblings_ok: set[str]) -> list[str]:
    """Each import of a script module, but a script's of its siblings in `siblings_ok`."""
    out = []
    for src, targets in sorted(edges.items()):
        top = src.split(".")[0]

        def barred(dst, top=top):
            dst_top = dst.split(".")[0]
            return dst_top in script_roots and not (dst_top == top and top in siblings_ok)

        out += [f"{where}: {src} imports the script module {dst}"
                for dst, where in _without_covered_packages(targets, barred)]
    return out
