"""A real neuroglancer opens each ingested tutorial channel as is and draws the right data.

The `neuroglancer` package's own client runs in Debian's headless chromium (selenium,
offline). The store folder is served by a tiny CORS static server on 127.0.0.1, and each
channel is added as `precomputed://http://127.0.0.1:PORT/DATASET/PROJECT/CHANNEL`.
`viewer.volume()` misreads volumes with a non-zero voxel_offset (DESIGN.md, Known
pitfalls), so this compares what neuroglancer *draws*: an xy screenshot at one voxel per
pixel, centred on the voxel boundary x=1150, y=2100 and the centre of voxel z=1100.
"""
from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("neuroglancer", reason="the view extra: pip install 'ndingest[view]'")
pytest.importorskip("selenium", reason="the view extra: pip install 'ndingest[view]'")

from conftest import ingest_tutorial, read_cutout
from ndingest.sample import ANNOTATION_FILE, IMAGE_FILE
from ndingest.view import CHROMEDRIVER, CHROMIUM, CHROMIUM_ARGS, ChannelFiles, StoreServer

if not CHROMIUM.exists():
    pytest.skip("Debian's chromium is not installed (/usr/bin/chromium): apt-get install chromium chromium-driver",
                allow_module_level=True)
import neuroglancer  # noqa: E402
import neuroglancer.segment_colors  # noqa: E402
import neuroglancer.webdriver  # noqa: E402

CHANNELS = "neurostorm_kat11_scale3/kat11_scale3"
OFFSET = (1000, 2000, 1000)           # x, y, z voxels, the dataset's offset
SIZE = (300, 200, 200)                # x, y, z
Z = 1100                              # the tutorial's slice: absolute z, cutout index 100
CENTRE = (1150, 2100)                 # x, y: a voxel boundary, so pixels and voxels line up
VIEW = (400, 300)                     # screenshot width, height: the volume plus a 50 px margin
EXPECTED_TOP_LEFT = (VIEW[1] // 2 - (CENTRE[1] - OFFSET[1]), VIEW[0] // 2 - (CENTRE[0] - OFFSET[0]))  # row, col
# Neither background can be confused with data: image pixels are grey (r == g == b);
# segment colours are hsv with v = 1, so one channel is always 255, never black.
IMAGE_BACKGROUND = "#0000c8"
SEGMENTATION_BACKGROUND = "#000000"
TIMEOUT = 20.0                        # s; a real draw takes about 1 s


class RecordingFiles(ChannelFiles):
    """The store server `ndingest view` uses, remembering (path, status) of each request."""

    requests: list[tuple[str, int]]

    def send_response(self, code, message=None):
        self.requests.append((self.path, code))
        super().send_response(code, message)


class StaticServer(StoreServer):
    def __init__(self, folder: Path):
        self.requests: list[tuple[str, int]] = []
        super().__init__(folder, channels={f"{CHANNELS}/{name}": True for name in ("image", "annotation")},
                         handler=type("Handler", (RecordingFiles,), {"requests": self.requests}))


class Browser:
    """One neuroglancer viewer, its client in headless chromium, and the console errors it logged."""

    def __init__(self):
        assert CHROMEDRIVER.exists(), "chromium is installed but chromium-driver is not (/usr/bin/chromedriver)"
        neuroglancer.set_server_bind_address("127.0.0.1")
        self.started_server = not neuroglancer.server.is_server_running()
        self.viewer = neuroglancer.Viewer()
        self.errors: list[str] = []
        self.webdriver = neuroglancer.webdriver.Webdriver(
            self.viewer, headless=True, browser="chrome", browser_binary_path=str(CHROMIUM),
            extra_command_line_args=CHROMIUM_ARGS, print_logs=False)
        self.webdriver.add_log_listener(self._log)
        with self.viewer.config_state.txn() as s:
            s.show_ui_controls = False
            s.show_panel_borders = False
            s.viewer_size = list(VIEW)

    def _log(self, entry):
        if getattr(entry, "level", None) == "error" or getattr(entry, "type_", None) == "javascript":
            self.errors.append(entry.text)

    def show(self, name: str, layer, background: str) -> None:
        """Only `layer`, xy only, one screen pixel per voxel, at the centre of voxel z=Z."""
        with self.viewer.txn() as s:
            s.dimensions = neuroglancer.CoordinateSpace(names=["x", "y", "z"], units="nm", scales=[32, 32, 40])
            s.layout = "xy"
            s.position = [CENTRE[0], CENTRE[1], Z + 0.5]
            s.cross_section_scale = 1
            s.cross_section_orientation = [0, 0, 0, 1]
            s.show_axis_lines = False
            s.show_scale_bar = False
            s.show_default_annotations = False
            s.cross_section_background_color = background
            s.layers.clear()
            s.layers[name] = layer

    def source_states(self) -> dict[str, list[str]]:
        """Each layer's data sources as the client sees them: 'ok', 'loading' or 'error: MESSAGE'."""
        return self.webdriver.driver.execute_script("""
            const out = {};
            for (const m of window.viewer.layerManager.managedLayers) {
              const layer = m.layer;
              out[m.name] = layer === null || layer === undefined ? ['loading'] : layer.dataSources.map(d => {
                const s = d.loadState;
                if (s === undefined) return 'loading';
                if (s.error !== undefined) return 'error: ' + (s.error.message || String(s.error));
                return s.dataSource !== undefined ? 'ok' : 'loading';
              });
            }
            return out;""")

    def wait_for_sources(self, name: str) -> list[str]:
        deadline = time.monotonic() + TIMEOUT
        while True:
            states = self.source_states().get(name, ["loading"])
            if any(s.startswith("error") for s in states) or (states and all(s == "ok" for s in states)):
                return states
            if time.monotonic() > deadline:
                return states
            time.sleep(0.1)

    def screenshot(self) -> np.ndarray:
        """RGBA pixels once every visible chunk is drawn; fails (never hangs) if that never happens."""
        for _ in range(5):
            done = threading.Event()
            reply = []
            self.viewer.async_screenshot(lambda s: (reply.append(s), done.set()))
            if not done.wait(TIMEOUT):
                pytest.fail(f"neuroglancer did not finish drawing within {TIMEOUT:.0f} s "
                            f"(data sources: {self.source_states()}, console errors: {self.errors})")
            shot = reply[0].screenshot
            if (shot.width, shot.height) == VIEW:
                return shot.image_pixels
        pytest.fail(f"screenshot is {shot.width}x{shot.height}, not {VIEW[0]}x{VIEW[1]}")

    def close(self):
        self.webdriver.__exit__(None, None, None)
        if self.started_server:
            neuroglancer.server.stop()


@pytest.fixture(scope="module")
def session(tmp_path_factory, tutorial_data):
    """The tutorial ingested by the CLI, its store served on 127.0.0.1, and a headless neuroglancer."""
    folder = tmp_path_factory.mktemp("neuroglancer")
    ingest_tutorial(folder, tutorial_data)
    server = StaticServer(folder / "store")
    browser = None
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SE_OFFLINE", "true")  # selenium never goes online for a driver or browser
        mp.setenv("SE_CHROMEDRIVER", str(CHROMEDRIVER))
        try:
            browser = Browser()
            yield server, browser
        finally:
            if browser is not None:
                browser.close()
            server.close()


def draw(session, channel: str, layer_type: str, background: str):
    """Open CHANNEL in neuroglancer as is; return its screenshot and the store's answers."""
    server, browser = session
    source = f"precomputed://{server.url}/{CHANNELS}/{channel}"
    if layer_type == "image":
        # opacity 1 and an identity shader: a uint8 voxel v is drawn as grey (v, v, v)
        layer = neuroglancer.ImageLayer(source=source, opacity=1.0,
                                        shader="void main() { emitGrayscale(toNormalized(getDataValue())); }")
    else:
        # every label opaque in its own hash colour, zero included (so zeros are drawn too)
        layer = neuroglancer.SegmentationLayer(source=source, hide_segment_zero=False, selected_alpha=1.0,
                                               not_selected_alpha=1.0, saturation=1.0)
    del server.requests[:]
    browser.errors.clear()
    browser.show(channel, layer, background)
    states = browser.wait_for_sources(channel)
    assert states == ["ok"], f"neuroglancer could not open {source}: {states}"
    pixels = browser.screenshot()
    return pixels, list(server.requests), list(browser.errors)


def drawn_box(mask: np.ndarray) -> tuple[int, int, int, int]:
    rows, cols = np.nonzero(mask)
    assert rows.size, "neuroglancer drew nothing but background"
    return rows.min(), cols.min(), rows.max() + 1 - rows.min(), cols.max() + 1 - cols.min()


def check_store_answers(requests, errors, channel):
    paths = [p for p, _ in requests]
    assert f"/{CHANNELS}/{channel}/info" in paths, paths
    assert all(code == 200 for _, code in requests), f"the store answered neuroglancer with errors: {requests}"
    z0 = OFFSET[2] + (Z - OFFSET[2]) // 16 * 16
    chunk = f"_{z0}-{z0 + 16}"
    assert any(p.startswith(f"/{CHANNELS}/{channel}/32_32_40/") and p.endswith(chunk) for p in paths), \
        f"no chunk holding z={Z} was read: {paths}"
    assert not errors, f"neuroglancer logged errors: {errors}"


def test_neuroglancer_draws_the_image_channel_voxel_for_voxel(session, tutorial_data):
    pixels, requests, errors = draw(session, "image", "image", IMAGE_BACKGROUND)
    check_store_answers(requests, errors, "image")
    source = read_cutout(tutorial_data / IMAGE_FILE)            # (z, y, x)
    expected = source[Z - OFFSET[2]]                             # the xy slice at z=1100: 200 rows (y) x 300 cols (x)
    assert (pixels[..., 3] == 255).all()

    # where neuroglancer drew data: the grey pixels (the background is blue)
    rgb = pixels[..., :3].astype(int)
    grey = (rgb[..., 0] == rgb[..., 1]) & (rgb[..., 1] == rgb[..., 2])
    top, left, height, width = drawn_box(grey)
    assert (height, width) == expected.shape == (SIZE[1], SIZE[0]), "drawn extent is not the volume's 300 x 200"
    assert grey[top:top + height, left:left + width].all() and grey.sum() == height * width
    assert (top, left) == EXPECTED_TOP_LEFT, \
        f"volume drawn at row {top}, col {left}, not where its voxel_offset puts it {EXPECTED_TOP_LEFT}"

    # the best placement of the source slice near the expected one is exactly where the volume was drawn
    drawn = rgb[..., 0]
    matches = {}
    for dr in range(-2, 3):
        for dc in range(-2, 3):
            r, c = EXPECTED_TOP_LEFT[0] + dr, EXPECTED_TOP_LEFT[1] + dc
            matches[r, c] = float((drawn[r:r + height, c:c + width] == expected).mean())
    best = max(matches, key=matches.get)
    assert best == (top, left), f"data placed at {best}, extent at {(top, left)}"
    window = drawn[top:top + height, left:left + width]
    diff = np.abs(window - expected.astype(int))
    corr = np.corrcoef(window.ravel(), expected.ravel())[0, 1]
    assert diff.max() <= 1 and (diff == 0).mean() >= 0.999, \
        f"drawn slice differs from the source: {(diff == 0).mean():.4%} equal, max diff {diff.max()}, r={corr:.4f}"
    assert corr > 0.999
    # the match is specific: neither a neighbouring z slice nor a one-pixel shift would pass
    for dz in (-1, 1):
        assert (window == source[Z - OFFSET[2] + dz]).mean() < 0.5
    shifted = [v for k, v in matches.items() if k != best]
    assert max(shifted) < 0.5


def test_neuroglancer_draws_the_annotation_channel_as_segmentation(session, tutorial_data):
    pixels, requests, errors = draw(session, "annotation", "segmentation", SEGMENTATION_BACKGROUND)
    check_store_answers(requests, errors, "annotation")
    labels = read_cutout(tutorial_data / ANNOTATION_FILE)[Z - OFFSET[2]]   # (y, x) uint32 at z=1100
    ids = np.unique(labels)
    assert ids[0] == 0 and len(ids) >= 5, "the tutorial slice should hold background and several neurites"
    assert (pixels[..., 3] == 255).all()

    # where neuroglancer drew labels: every label (zero included) is an opaque colour, the background black
    rgb = pixels[..., :3].astype(np.int64)
    drawn = rgb[..., 0] << 16 | rgb[..., 1] << 8 | rgb[..., 2]
    top, left, height, width = drawn_box(drawn != 0)
    assert (height, width) == labels.shape == (SIZE[1], SIZE[0]), "drawn extent is not the volume's 300 x 200"
    assert (drawn[top:top + height, left:left + width] != 0).all() and (drawn != 0).sum() == height * width
    assert (top, left) == EXPECTED_TOP_LEFT, \
        f"volume drawn at row {top}, col {left}, not where its voxel_offset puts it {EXPECTED_TOP_LEFT}"
    window = drawn[top:top + height, left:left + width]

    # one colour per label, a different colour for each label: the partition is the source's
    pairs = np.unique(np.stack([labels.ravel().astype(np.int64), window.ravel()]), axis=1)
    colours_per_label = {int(i): sorted(int(c) for c in pairs[1, pairs[0] == i]) for i in ids}
    assert all(len(c) == 1 for c in colours_per_label.values()), \
        f"a label is drawn in several colours (shifted or misread): {colours_per_label}"
    assert len(np.unique(pairs[1])) == len(ids), "two labels are drawn in one colour"
    # same label boundaries, pixel for pixel
    for axis in (0, 1):
        np.testing.assert_array_equal(np.diff(window, axis=axis) != 0, np.diff(labels.astype(np.int64), axis=axis) != 0)
    # and each colour is the one neuroglancer's own hash gives that id (default colour seed 0), up to the
    # GPU's rounding (one step per channel): the ids themselves, not only the partition, were read right
    # (byte order, uint32); random ids' hash colours are far apart
    def channels(colour):
        return np.array([colour >> 16 & 255, colour >> 8 & 255, colour & 255])

    for label, (colour,) in colours_per_label.items():
        expected = int(neuroglancer.segment_colors.hex_string_from_segment_id(0, label)[1:], 16)
        assert np.abs(channels(colour) - channels(expected)).max() <= 1, \
            f"label {label} drawn as #{colour:06x}, neuroglancer's colour for it is #{expected:06x}"
