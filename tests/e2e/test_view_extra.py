"""neuroglancer and selenium are the `view` extra (`pip install 'ndingest[view]'`), not
install requirements: a host without them ingests and verifies, and `ndingest view` there
says in one line how to get them (exit 2).

A host without the extra is simulated at the import edge: the CLI runs in a Python
subprocess whose `sys.modules` maps both packages to None, so any import of them (or of a
submodule) raises ModuleNotFoundError, as it would if they were not installed."""
from __future__ import annotations

import configparser
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO, Run, write_spec
from ndingest.sample import ANNOTATION_FILE, IMAGE_FILE

VIEW_EXTRA = {"neuroglancer": "neuroglancer>=2.38", "selenium": "selenium>=4.20"}

WITHOUT_VIEW_EXTRA = """
import sys
sys.modules["neuroglancer"] = None
sys.modules["selenium"] = None
from ndingest.cli import main
sys.exit(main(sys.argv[1:]))
"""


def run_without_view_extra(*args: str, cwd: Path, timeout: float = 300) -> Run:
    """`ndingest ARGS` in a process that cannot import neuroglancer or selenium."""
    proc = subprocess.run([sys.executable, "-c", WITHOUT_VIEW_EXTRA, *args], cwd=cwd, capture_output=True,
                          text=True, timeout=timeout)
    return Run(proc.returncode, proc.stdout, proc.stderr)


@pytest.fixture(scope="module")
def ingested(tmp_path_factory, tutorial_data) -> tuple[Path, Run, Run]:
    """The tutorial ingested and verified without the view extra: (spec, ingest run, verify run)."""
    folder = tmp_path_factory.mktemp("no-view-extra")
    spec = write_spec(folder, image=tutorial_data / IMAGE_FILE, annotation=tutorial_data / ANNOTATION_FILE)
    ingest = run_without_view_extra("ingest", str(spec), cwd=folder)
    verify = run_without_view_extra("verify", str(spec), cwd=folder)
    return spec, ingest, verify


def test_tutorial_ingests_and_verifies_without_the_view_extra(ingested):
    spec, ingest, verify = ingested
    assert ingest.returncode == 0, ingest.stderr
    assert verify.returncode == 0, verify.stderr
    assert "blocks equal" in verify.stdout
    assert (spec.parent / "store/neurostorm_kat11_scale3/kat11_scale3/image/info").is_file()


def test_view_without_the_extra_says_how_to_install_it_in_one_line(ingested):
    spec, ingest, _ = ingested
    assert ingest.returncode == 0, ingest.stderr
    result = run_without_view_extra("view", str(spec), cwd=spec.parent, timeout=60)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("ndingest: error: ndingest view needs the view extra"), lines[0]
    assert "pip install 'ndingest[view]'" in lines[0]
    assert result.stdout == ""


def test_view_without_the_extra_says_so_before_looking_at_the_store(tmp_path, tutorial_data):
    spec = write_spec(tmp_path, image=tutorial_data / IMAGE_FILE)  # never ingested
    result = run_without_view_extra("view", str(spec), "--screenshot", str(tmp_path / "v.png"), cwd=tmp_path,
                                    timeout=60)
    assert result.returncode == 2, result.stderr
    assert result.stderr.count("\n") == 1 and "ndingest[view]" in result.stderr, result.stderr
    assert not (tmp_path / "v.png").exists()


IMPORT_EVERY_MODULE = """
import importlib, pkgutil, sys
sys.modules["neuroglancer"] = None
sys.modules["selenium"] = None
import ndingest
for module in pkgutil.walk_packages(ndingest.__path__, "ndingest."):
    if module.name != "ndingest.view":
        importlib.import_module(module.name)
"""


def test_no_module_but_view_imports_neuroglancer_or_selenium(tmp_path):
    proc = subprocess.run([sys.executable, "-c", IMPORT_EVERY_MODULE], cwd=tmp_path, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr


def requirement_names(value: str) -> dict[str, str]:
    """A setup.cfg requirement list (one a line) as {lower-case name: requirement line}."""
    lines = [line.strip() for line in value.splitlines() if line.strip()]
    return {re.match(r"[A-Za-z0-9._-]+", line).group(0).lower(): line for line in lines}


def test_setup_cfg_puts_neuroglancer_and_selenium_in_the_view_extra_only():
    cfg = configparser.ConfigParser(interpolation=None)
    cfg.read(REPO / "setup.cfg")
    required = requirement_names(cfg["options"]["install_requires"])
    extras = cfg["options.extras_require"]
    assert not set(VIEW_EXTRA) & set(required), required
    assert "view" in extras, dict(extras)
    view = requirement_names(extras["view"])
    assert {name: line.replace(" ", "") for name, line in view.items()} == VIEW_EXTRA
    for name, extra in extras.items():
        if name != "view":
            assert not set(VIEW_EXTRA) & set(requirement_names(extra)), (name, extra)


def make_dry_run(venv: Path, *targets: str) -> str:
    """The commands `make TARGETS` would run with VENV=venv (`make -n`: nothing runs)."""
    proc = subprocess.run(["make", "-n", "-C", str(REPO), *targets, f"VENV={venv}"], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


@pytest.mark.parametrize("target", ["demo", "test"])
def test_make_installs_the_view_extra_and_reinstalls_when_setup_cfg_changes(tmp_path, target):
    venv = tmp_path / "venv"
    venv.mkdir()
    stamp = venv / ".installed-ndingest"
    stamp.touch()
    older = (REPO / "setup.cfg").stat().st_mtime - 60
    os.utime(stamp, (older, older))  # an existing venv installed before setup.cfg last changed
    assert re.search(r"pip install .*-e \"?\.\[test,view\]\"?", make_dry_run(venv, target))
    newer = max((REPO / name).stat().st_mtime for name in ("setup.cfg", "pyproject.toml", "Makefile")) + 60
    os.utime(stamp, (newer, newer))  # installed since: no reinstall
    assert "pip install" not in make_dry_run(venv, target)
