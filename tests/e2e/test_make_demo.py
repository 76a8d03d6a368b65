"""`make demo` as a newcomer runs it (with this venv, already installed)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from PIL import Image

from conftest import REPO


def test_make_demo_runs_the_tutorial_and_writes_a_slice_of_each_channel(tmp_path):
    venv = Path(sys.executable).parent.parent
    demo = tmp_path / "demo"
    proc = subprocess.run(["make", "-C", str(REPO), "demo", f"VENV={venv}", f"DEMO={demo}",
                           "-o", f"{venv}/.installed-ndingest"],  # never reinstall from inside the tests
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    assert "neurostorm_kat11_scale3" in out and "window range" in out.lower()  # the tutorial's table
    assert "blocks equal" in out  # the verify summary
    assert f"store: {demo}/store" in out
    for channel in ("image", "annotation"):
        with Image.open(demo / f"{channel}_xy_1100.png") as picture:
            assert picture.size == (300, 200)
