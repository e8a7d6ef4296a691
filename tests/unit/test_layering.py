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

This file holds the tables and the tests; the collector, the graph, the cycle finder
and the layer checks are in import_graph.py beside it (pure functions, given the tables).
"""

from __future__ import annotations

import textwrap
from functools import cache
from pathlib import Path

import import_graph
from import_graph import Graph, Module, find_cycles
from import_graph import show_cycles as _show

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
    "trainers.speed": 1,
    "trainers.progress": 1,
    "trainers.resume": 1,
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


# --------------------------------------------------------------------------- the tables
# The mechanism is in import_graph.py (beside this file); these bind it to the tables.


def build_graph(root: Path, roots=ROOTS) -> tuple[dict[str, Module], Graph]:
    return import_graph.build_graph(root, roots, SCRIPT_ROOTS)


def level_of(name: str, levels=LEVELS, one_by_one=ONE_BY_ONE) -> int | None:
    return import_graph.level_of(name, levels, one_by_one)


def unplaced(names, levels=LEVELS, one_by_one=ONE_BY_ONE) -> list[str]:
    return import_graph.unplaced(names, levels, one_by_one)


def layer_breaches(edges, levels=LEVELS, one_by_one=ONE_BY_ONE) -> list[str]:
    return import_graph.layer_breaches(edges, levels, one_by_one, LEVEL_NAMES)


def script_imports(edges, script_roots=SCRIPT_ROOTS, siblings_ok=SIBLINGS_OK) -> list[str]:
    return import_graph.script_imports(edges, script_roots, siblings_ok)


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
