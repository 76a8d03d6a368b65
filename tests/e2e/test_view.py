"""`ndingest view`: the printed URL opens in a real headless chromium with both layers
loaded from the store; `--screenshot` draws them; a store without the channels is an error."""
from __future__ import annotations

import io
import os
import subprocess
import time

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("neuroglancer", reason="the view extra: pip install 'ndingest[view]'")
pytest.importorskip("selenium", reason="the view extra: pip install 'ndingest[view]'")

from conftest import NDINGEST, ingest_tutorial, run_cli, write_spec
from ndingest.sample import IMAGE_FILE
from ndingest.view import CHROMEDRIVER, CHROMIUM, CHROMIUM_ARGS

if not CHROMIUM.exists():
    pytest.skip("Debian's chromium is not installed (/usr/bin/chromium): apt-get install chromium chromium-driver",
                allow_module_level=True)

from selenium import webdriver  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402

STORE_URL = "neurostorm_kat11_scale3/kat11_scale3"
LAYERS_JS = """
const out = {};
if (window.viewer === undefined) return null;
for (const m of window.viewer.layerManager.managedLayers) {
  const layer = m.layer;
  out[m.name] = {type: layer ? layer.type : null, states: !layer ? ['loading'] : layer.dataSources.map(d => {
    const s = d.loadState;
    if (s === undefined) return 'loading';
    if (s.error !== undefined) return 'error: ' + (s.error.message || String(s.error));
    return s.dataSource !== undefined ? 'ok' : 'loading';
  })};
}
return out;"""


@pytest.fixture(scope="module")
def ingested(tmp_path_factory, tutorial_data):
    return ingest_tutorial(tmp_path_factory.mktemp("view"), tutorial_data)[0]


def chromium() -> webdriver.Chrome:
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for arg in ["--headless=new", *CHROMIUM_ARGS]:
        options.add_argument(arg)
    os.environ.setdefault("SE_OFFLINE", "true")
    return webdriver.Chrome(options=options, service=Service(executable_path=str(CHROMEDRIVER)))


def test_view_prints_a_url_that_opens_both_layers_from_the_store(ingested):
    proc = subprocess.Popen([NDINGEST, "view", str(ingested)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        assert line.startswith("neuroglancer: http://127.0.0.1:"), (line, proc.stderr.read() if proc.poll() else "")
        url = line.split(": ", 1)[1].strip()
        browser = chromium()
        try:
            browser.get(url)
            deadline = time.monotonic() + 30
            while True:
                layers = browser.execute_script(LAYERS_JS)
                ready = layers and len(layers) == 2 and all(v["states"] and "loading" not in v["states"]
                                                            for v in layers.values())
                if ready or time.monotonic() > deadline:
                    break
                time.sleep(0.2)
            assert layers == {"image": {"type": "image", "states": ["ok"]},
                              "annotation": {"type": "segmentation", "states": ["ok"]}}, layers
            state = browser.execute_script("return window.viewer.state.toJSON();")
        finally:
            browser.quit()
        sources = {layer["name"]: layer["source"] for layer in state["layers"]}
        for name in ("image", "annotation"):
            source = sources[name] if isinstance(sources[name], str) else sources[name]["url"]
            assert source.startswith("precomputed://http://127.0.0.1:") and source.endswith(f"/{STORE_URL}/{name}")
        assert state["position"] == [1150, 2100, 1100.5]  # the dataset's centre, absolute voxels
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_view_screenshot_draws_the_image_and_the_segments(ingested, tmp_path):
    out = tmp_path / "view.png"
    result = run_cli("view", str(ingested), "--screenshot", str(out), "--width", "600", "--height", "400")
    assert result.returncode == 0, result.stderr
    pixels = np.asarray(Image.open(io.BytesIO(out.read_bytes())).convert("RGB")).astype(int)
    assert pixels.shape == (400, 600, 3)
    r, g, b = pixels[..., 0], pixels[..., 1], pixels[..., 2]
    grey = (r == g) & (g == b) & (r > 0)
    coloured = (np.abs(r - g) > 40) | (np.abs(g - b) > 40)
    assert grey.mean() > 0.05 and len(np.unique(r[grey])) > 20  # EM texture, not a flat fill
    assert coloured.mean() > 0.01  # segments drawn over it


def test_view_before_ingest_is_one_clear_line(tmp_path, tutorial_data):
    spec = write_spec(tmp_path, image=tutorial_data / IMAGE_FILE)
    result = run_cli("view", str(spec))
    assert result.returncode == 2 and "Traceback" not in result.stderr  # a usage error, not store I/O
    assert "not in the catalog; run ingest first" in result.stderr.strip().splitlines()[-1]


def test_views_file_server_answers_byte_ranges_with_206_and_allows_them_across_origins(tmp_path):
    """Sharded volumes are read by range: the store server of `ndingest view` answers one
    byte range with 206 and its bytes, a suffix range too, a range past the end with 416,
    and a CORS preflight that asks for `Range` is allowed."""
    import requests

    from ndingest.view import StoreServer

    data = bytes(range(256)) * 40
    (tmp_path / "vol").mkdir()
    (tmp_path / "vol" / "0.shard").write_bytes(data)
    server = StoreServer(tmp_path, channels={"vol": True})
    try:
        url = f"{server.url}/vol/0.shard"
        reply = requests.get(url, headers={"Range": "bytes=100-299"}, timeout=10)
        assert reply.status_code == 206 and reply.content == data[100:300]
        assert reply.headers["Content-Range"] == f"bytes 100-299/{len(data)}"
        assert "Content-Range" in reply.headers["Access-Control-Expose-Headers"]
        tail = requests.get(url, headers={"Range": "bytes=-16"}, timeout=10)
        assert tail.status_code == 206 and tail.content == data[-16:]
        open_ended = requests.get(url, headers={"Range": f"bytes={len(data) - 5}-"}, timeout=10)
        assert open_ended.status_code == 206 and open_ended.content == data[-5:]
        assert requests.get(url, headers={"Range": f"bytes={len(data)}-"}, timeout=10).status_code == 416
        whole = requests.get(url, timeout=10)
        assert whole.status_code == 200 and whole.content == data
        preflight = requests.options(url, headers={"Origin": "http://elsewhere", "Access-Control-Request-Method": "GET",
                                                   "Access-Control-Request-Headers": "range"}, timeout=10)
        assert preflight.status_code == 204 and "Range" in preflight.headers["Access-Control-Allow-Headers"]
        assert preflight.headers["Access-Control-Allow-Origin"] == "*"
    finally:
        server.close()
