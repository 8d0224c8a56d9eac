"""The package structure: no import cycles, layers that only import downwards, each module importable alone.

A layer is a folder (docs/architecture.md); lowest first:

- core: ``bench/core/`` (the schema, registry, errors, I/O, device, record), which imports nothing above it;
- domain: ``bench/data/``, ``bench/models/``, ``bench/attacks/``, ``bench/sampling/``;
- training: ``bench/train/``;
- plugins: ``methods/`` and ``metrics/``, which import the layers below but not each other, and no
  method imports another method (``methods.base`` and the shared ``methods._energy`` aside);
- application: ``bench/run/`` (resolve, run, evaluate);
- presentation: ``bench/leaderboard/`` (compare, report);
- interface: ``bench/cli/`` and the annex ``bench/tools/`` (sweep, doctor, perf, zoo), which nothing
  below imports.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("bench", "methods", "metrics")
LAYERS = (
    ("core", ("bench", "bench.core")),
    ("domain", ("bench.data", "bench.models", "bench.attacks", "bench.sampling")),
    ("training", ("bench.train",)),
    ("plugins", ("methods", "metrics")),
    ("application", ("bench.run",)),
    ("presentation", ("bench.leaderboard",)),
    ("interface", ("bench.cli", "bench.tools", "bench.__main__")),
)
# modules anything may load: the schema and its helpers import at most the errors module (and the
# schema its settings helpers)
LEAVES = {
    "bench.core.errors": set(),
    "bench.core.config": {"bench.core.errors", "bench.core.settings"},
    "bench.core.settings": {"bench.core.errors"},
    "bench.core.io": {"bench.core.errors"},
    "bench.core.timing": set(),
    "bench.core.device": {"bench.core.errors"},
    "bench.core.signals": set(),
}
# not methods: the interface and the private modules the methods share (the registry imports public ones only)
SHARED_METHOD_MODULES = {
    "methods",
    "methods.base",
    "methods._energy",
    "methods._adversarial",
    "methods._ebjdat",
    "methods._settings",
}


def layer_of(mod: str) -> int:
    """The index in :data:`LAYERS` of the folder ``mod`` lives in (the longest matching prefix)."""
    best, length = None, -1
    for i, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            if (mod == prefix or mod.startswith(prefix + ".")) and len(prefix) > length:
                best, length = i, len(prefix)
    assert best is not None, f"{mod} is in no layer: add its folder to LAYERS"
    return best


def project_modules() -> dict[str, Path]:
    mods = {}
    for pkg in PACKAGES:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            mods[".".join(parts)] = path
    return mods


MODULES = project_modules()


def imports_of(mod: str, path: Path) -> set[str]:
    """Every project module ``mod`` imports, at module level or inside functions."""
    out = set()
    is_pkg = path.name == "__init__.py"
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative import
                base = mod.split(".") if is_pkg else mod.split(".")[:-1]
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            names = [
                f"{target}.{a.name}" if f"{target}.{a.name}" in MODULES else target
                for a in node.names
            ]
        else:
            continue
        for name in names:
            while name and name not in MODULES:
                name = name.rpartition(".")[0]
            if name and name != mod:
                out.add(name)
    return out


GRAPH = {m: imports_of(m, p) for m, p in MODULES.items()}


def test_no_import_cycle():
    """Tarjan's strongly connected components over every project import (function-level ones too)."""
    index, low, stack, on, cycles = {}, {}, [], set(), []
    counter = [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in GRAPH[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                cycles.append(sorted(comp))

    sys.setrecursionlimit(10_000)
    for v in GRAPH:
        if v not in index:
            visit(v)
    assert not cycles, f"import cycles: {cycles}"


def test_the_graph_sees_imports():
    """The checks below mean something only if the parser finds real edges."""
    assert (
        "methods.base" in GRAPH["methods.ebjdat"]
        and "bench.train.trainer" in GRAPH["bench.run.train_and_evaluate"]
    )
    assert (
        "metrics.base" in GRAPH["metrics.clean"] and "bench.core.registry" in GRAPH["methods.base"]
    )


def test_every_module_is_in_a_layer_folder_and_bench_root_is_small():
    for mod in MODULES:
        layer_of(mod)
    assert len([p for p in (ROOT / "bench").iterdir() if p.name != "__pycache__"]) <= 12


def test_layers_import_only_downwards():
    bad = {m: sorted(d for d in deps if layer_of(d) > layer_of(m)) for m, deps in GRAPH.items()}
    assert not {m: d for m, d in bad.items() if d}, "modules importing a higher layer"


def test_core_imports_nothing_outside_core():
    bad = {
        m: sorted(d for d in deps if layer_of(d) != 0)
        for m, deps in GRAPH.items()
        if layer_of(m) == 0
    }
    assert not {m: d for m, d in bad.items() if d}


def test_leaves_import_nothing_else_of_the_project():
    for mod, allowed in LEAVES.items():
        assert GRAPH[mod] <= allowed, f"{mod} imports {sorted(GRAPH[mod] - allowed)}"


def test_plugins_import_only_lower_layers_and_methods_import_no_other_method():
    for mod, deps in GRAPH.items():
        top = mod.split(".")[0]
        if top not in ("methods", "metrics"):
            continue
        other = "metrics" if top == "methods" else "methods"
        assert not [d for d in deps if d.split(".")[0] == other], mod
        if top == "methods" and mod not in SHARED_METHOD_MODULES:
            others = [d for d in deps if d.startswith("methods") and d not in SHARED_METHOD_MODULES]
            assert not others, f"method module {mod} imports another method: {others}"


def test_the_core_loads_without_the_plugin_packages():
    core = sorted(m for m in MODULES if layer_of(m) < layer_of("methods"))
    code = (
        "import importlib, sys\n"
        f"for m in {core!r}: importlib.import_module(m)\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('methods', 'metrics'))\n"
        "assert not bad, bad\n"
    )
    res = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert res.returncode == 0, res.stderr[-2000:]


FORK_EACH = """
import importlib, os, sys, traceback
import click, numpy, pandas, scipy.stats, torch, torchvision, tqdm, yaml  # third-party only: no project module
failed = {}
for mod in sys.argv[1:]:
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child starts with no project module imported
        os.close(r)
        try:
            importlib.import_module(mod)
            code = 0
        except BaseException:
            os.write(w, traceback.format_exc().strip().splitlines()[-1].encode())
            code = 1
        os._exit(code)
    os.close(w)
    with os.fdopen(r) as fh:
        err = fh.read()
    if os.waitpid(pid, 0)[1] != 0:
        failed[mod] = err
print(failed)
sys.exit(1 if failed else 0)
"""


def test_every_module_imports_alone():
    """Each module imported first, in a process holding no project module (forked from one that
    imported only third-party packages): a module-level import cycle fails here whatever the order."""
    res = subprocess.run(
        [sys.executable, "-c", FORK_EACH, *sorted(MODULES)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-2000:]


def test_method_files_stay_small():
    for path in (ROOT / "methods").glob("*.py"):
        if not path.name.startswith("_"):
            assert len(path.read_text().splitlines()) <= 150, path.name


def test_library_files_stay_under_300_lines():
    long = {m: n for m, p in MODULES.items() if (n := len(p.read_text().splitlines())) > 300}
    assert not long, f"split these modules (at most 300 lines each): {long}"
