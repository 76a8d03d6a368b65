"""`make demo` as a newcomer runs it (with this venv, already installed)."""
from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import requests
from PIL import Image

from conftest import REPO
from ndingest.sample import IMAGE_FILE
from serving import serving


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

    # the tutorial's two URLs it prints answer from `ndingest serve` on the demo's store
    urls = [line.strip() for line in out.splitlines() if line.strip().startswith("http://127.0.0.1:8080/ocp/ca/")]
    assert len(urls) == 2, out
    with serving(demo / "store") as server:
        cutout = requests.get(urls[0].replace("http://127.0.0.1:8080", server.url), timeout=60)
        assert cutout.status_code == 200, cutout.text
        with h5py.File(io.BytesIO(cutout.content), "r") as f, \
                h5py.File(demo / "data" / IMAGE_FILE, "r") as source:
            np.testing.assert_array_equal(f["image/CUTOUT"][...], source["image/CUTOUT"][...])
        png = requests.get(urls[1].replace("http://127.0.0.1:8080", server.url), timeout=60)
        assert png.status_code == 200 and png.headers["content-type"] == "image/png", png.text
        with Image.open(io.BytesIO(png.content)) as served, Image.open(demo / "image_xy_1100.png") as sliced:
            assert np.array_equal(np.asarray(served), np.asarray(sliced))
