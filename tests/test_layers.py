"""The layers (DESIGN "Layers") as setup.cfg's import-linter contracts state them: the real
package keeps every contract and has no import loop, and each contract breaks on one
deliberately bad import, added to a copy of the package (never to the package itself)
that goes first on PYTHONPATH. Function-level imports count; `if TYPE_CHECKING:` ones do not.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "pipeline" / "ndingest"
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")

LAYERS = "Layers: a module imports only its own layer or below"
READERS_STORES = "Readers never import stores"
STORES_READERS = "Stores never import readers"
TASKS_SERVER = "Tasks never import the server"
SERVER_TASKS = "The server never imports the tasks"
ACYCLIC = "No import loop among the modules of any package"
CONTRACTS = {LAYERS, READERS_STORES, STORES_READERS, TASKS_SERVER, SERVER_TASKS, ACYCLIC}

# Every import loop among ndingest's modules (each package's __init__ a module of its
# own), from grimp's graph of every import statement, function-level ones included.
CYCLES = """
import sys
import grimp

graph = grimp.build_graph("ndingest", exclude_type_checking_imports=True)
edges = {m: graph.find_modules_directly_imported_by(m) for m in graph.modules}
index, low, stack, on_stack, loops = {}, {}, [], set(), []

def visit(m):
    index[m] = low[m] = len(index)
    stack.append(m)
    on_stack.add(m)
    for n in edges[m]:
        if n not in index:
            visit(n)
            low[m] = min(low[m], low[n])
        elif n in on_stack:
            low[m] = min(low[m], index[n])
    if low[m] == index[m]:
        found = []
        while True:
            n = stack.pop()
            on_stack.discard(n)
            found.append(n)
            if n == m:
                break
        if len(found) > 1 or m in edges[m]:
            loops.append(sorted(found))

sys.setrecursionlimit(10000)
for m in sorted(graph.modules):
    if m not in index:
        visit(m)
for loop in loops:
    print("import loop: " + ", ".join(loop))
sys.exit(1 if loops else 0)
"""


def _env(pythonpath: Path) -> dict:
    return {**os.environ, "PYTHONPATH": str(pythonpath)}


def lint(folder: Path, pythonpath: Path) -> tuple[int, dict[str, bool], str]:
    """`lint-imports` with `folder`'s setup.cfg: exit code, {contract: kept}, its output."""
    done = subprocess.run([str(LINT_IMPORTS), "--no-cache", str(folder / "setup.cfg")], cwd=folder,
                          env=_env(pythonpath), capture_output=True, text=True, timeout=120)
    out = done.stdout + done.stderr
    verdicts = {}
    for line in out.splitlines():
        for name in CONTRACTS:
            if line.strip() in (f"{name} KEPT", f"{name} BROKEN"):
                verdicts[name] = line.strip().endswith("KEPT")
    return done.returncode, verdicts, out


def cycles(pythonpath: Path) -> tuple[int, str]:
    done = subprocess.run([sys.executable, "-c", CYCLES], env=_env(pythonpath), capture_output=True, text=True,
                          timeout=120)
    return done.returncode, done.stdout + done.stderr


@pytest.fixture
def copy(tmp_path: Path) -> Path:
    """A copy of the package under tmp_path/src, and of setup.cfg in tmp_path."""
    shutil.copytree(PACKAGE, tmp_path / "src" / "ndingest", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "setup.cfg", tmp_path / "setup.cfg")
    return tmp_path


def add_import(copy: Path, module: str, statement: str) -> None:
    """Append a function that imports (`statement`) to `module` (a path under ndingest/)."""
    path = copy / "src" / "ndingest" / module
    path.write_text(path.read_text() + f"\n\ndef _deliberately_bad():\n    {statement}\n")


def test_the_package_keeps_every_contract_and_has_no_import_loop():
    code, verdicts, out = lint(ROOT, ROOT / "pipeline")
    assert code == 0 and verdicts == dict.fromkeys(CONTRACTS, True), out
    code, out = cycles(ROOT / "pipeline")
    assert code == 0 and out == "", out


@pytest.mark.parametrize("module, statement, broken", [
    ("blocks.py", "from . import cli", {LAYERS, ACYCLIC}),  # core imports a face (which imports core)
    ("spec.py", "from .kvpath import KvPath", {LAYERS}),  # the model imports a store
    ("wire/cutouts.py", "from ..server import context", {LAYERS, ACYCLIC}),  # the wire imports the server
    ("tiff.py", "from . import markers", {READERS_STORES}),  # a reader imports a store
    ("runlock.py", "from . import tiff", {STORES_READERS}),  # a store imports a reader
    ("runner.py", "from .server import keys", {TASKS_SERVER}),  # tasks import the server
    ("server/keys.py", "from .. import runner", {SERVER_TASKS}),  # the server imports the tasks
    ("markers.py", "from . import edits", {ACYCLIC}),  # a loop inside the stores (edits imports markers)
    ("server/context.py", "from . import writes", {ACYCLIC}),  # a loop inside ndingest.server
])
def test_a_bad_import_breaks_its_contract(copy: Path, module: str, statement: str, broken: set[str]):
    add_import(copy, module, statement)
    code, verdicts, out = lint(copy, copy / "src")
    assert code != 0 and {name for name, kept in verdicts.items() if not kept} == broken, out
    assert set(verdicts) == CONTRACTS, out


@pytest.mark.parametrize("module, statement", [
    ("markers.py", "from . import edits"),
    ("server/context.py", "from . import writes"),
])
def test_the_grimp_check_names_a_loop(copy: Path, module: str, statement: str):
    add_import(copy, module, statement)
    code, out = cycles(copy / "src")
    looped = {module.removesuffix(".py").replace("/", "."), statement.split()[-1]}
    assert code == 1 and "import loop:" in out and all(name in out for name in looped), out


def test_an_import_for_type_checking_only_counts_for_nothing(copy: Path):
    path = copy / "src" / "ndingest" / "blocks.py"
    path.write_text(path.read_text() + "\n\nfrom typing import TYPE_CHECKING\n\nif TYPE_CHECKING:\n"
                                       "    from . import cli  # noqa: F401\n")
    code, verdicts, out = lint(copy, copy / "src")
    assert code == 0 and all(verdicts.values()), out
    assert cycles(copy / "src")[0] == 0
