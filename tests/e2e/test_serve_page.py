"""`GET /`: the overview page, in Debian's headless chromium against a real `ndingest serve`."""
from __future__ import annotations

import json
import os
import time
import urllib.parse

import pytest
import requests

from ndingest.blocks import Box, Vec3
from ndingest.server.context import ChannelView, LevelView, TokenView
from ndingest.server.page import channel_row_html, neuroglancer_url
from serving import TIMESERIES, ingest_store, serving

DS, PR = "neurostorm_kat11_scale3", "kat11_scale3"


@pytest.fixture(scope="module")
def store(tmp_path_factory, tutorial_data):
    return ingest_store(tmp_path_factory.mktemp("serve-page"), tutorial_data, levels=1, timeseries=True)


@pytest.fixture(scope="module")
def server(store):
    with serving(store["store"]) as running:
        yield running


def chromium():
    pytest.importorskip("selenium", reason="the view extra: pip install 'ndingest[view]'")
    from ndingest.view import CHROMEDRIVER, CHROMIUM, CHROMIUM_ARGS

    if not CHROMIUM.exists():
        pytest.skip("Debian's chromium is not installed (/usr/bin/chromium): apt-get install chromium chromium-driver")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for arg in ["--headless=new", *CHROMIUM_ARGS]:
        options.add_argument(arg)
    os.environ.setdefault("SE_OFFLINE", "true")
    return webdriver.Chrome(options=options, service=Service(executable_path=str(CHROMEDRIVER)))


IMAGES_JS = """
return Array.from(document.images).map(i => ({src: i.getAttribute('src'), complete: i.complete,
                                               width: i.naturalWidth, height: i.naturalHeight}));"""


def test_page_lists_everything_and_every_thumbnail_loads_in_chromium(server):
    browser = chromium()
    try:
        browser.get(server.url + "/")
        deadline = time.monotonic() + 20
        while True:
            images = browser.execute_script(IMAGES_JS)
            if (images and all(i["complete"] for i in images)) or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        text = browser.find_element("tag name", "body").text
        links = [a.get_attribute("href") for a in browser.find_elements("css selector", "a.neuroglancer")]
    finally:
        browser.quit()
    for name in (DS, PR, "image", "annotation", *TIMESERIES, "frames", "300 × 200 × 200", "50 × 40 × 20 × 3"):
        assert name in text, (name, text)
    assert len(images) == 3, images  # image, annotation, frames
    assert all(i["width"] > 0 and i["height"] > 0 for i in images), images
    top = next(i for i in images if "/image/" in i["src"])
    assert top["src"].startswith("/nd/sd/kat11_scale3/image/xy/1/500,650/1000,1100/")  # level 1, middle z
    assert (top["width"], top["height"]) == (150, 100)
    assert len(links) == 2


def test_neuroglancer_links_point_at_this_servers_precomputed_routes(server):
    page = requests.get(server.url + "/", timeout=10)
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    import html
    import re

    hrefs = [html.unescape(h) for h in re.findall(r'<a class="neuroglancer" href="([^"]+)"', page.text)]
    state = json.loads(urllib.parse.unquote(next(h for h in hrefs if "kat11" in h).split("#!", 1)[1]))
    sources = {layer["name"]: layer["source"] for layer in state["layers"]}
    assert sources == {c: f"precomputed://{server.url}/precomputed/{DS}/{PR}/{c}" for c in ("annotation", "image")}
    assert {layer["name"]: layer["type"] for layer in state["layers"]} == {"image": "image",
                                                                        "annotation": "segmentation"}
    for source in sources.values():
        info = requests.get(source.removeprefix("precomputed://") + "/info", timeout=10)
        assert info.status_code == 200 and info.json()["scales"][0]["voxel_offset"] == [1000, 2000, 1000]


def test_private_tokens_are_not_shown_by_a_server_with_keys(store, tmp_path):
    keys = tmp_path / "keys.txt"
    keys.write_text("a-key\n")
    with serving(store["store"], api_keys=keys) as keyed:
        page = requests.get(keyed.url + "/", timeout=10).text
    assert PR in page and TIMESERIES[2] not in page and "frames" not in page


def test_every_name_on_the_page_is_escaped():
    nasty = '<script>alert("x")</script>&'
    dataset = {"dataset_name": nasty, "xvoxelres": 4.0, "yvoxelres": 4.0, "zvoxelres": 40.0, "xoffset": 0,
               "yoffset": 0, "zoffset": 0, "ximagesize": 10, "yimagesize": 10, "zimagesize": 10}
    token = TokenView(nasty, {"project_name": nasty}, dataset, True)
    row = {"channel_name": nasty, "channel_type": "image", "channel_datatype": "uint8", "starttime": 0,
           "endtime": 0, "startwindow": 0.0, "endwindow": 255.0, "readonly": 0}
    level = LevelView(0, "4_4_40", (4.0, 4.0, 40.0), Box(Vec3(0, 0, 0), Vec3(10, 10, 10)), Vec3(128, 128, 16))
    channel = ChannelView(token, row, None, (level,))
    cell = channel_row_html(channel)
    assert "<script>" not in cell and "&lt;script&gt;" in cell
    url = neuroglancer_url("http://127.0.0.1:1", token, [channel])
    assert "<" not in url and '"' not in url


def test_a_server_started_on_an_empty_store_sees_what_is_ingested_later(tmp_path, tutorial_data):
    (tmp_path / "store").mkdir()
    with serving(tmp_path / "store") as empty:
        assert "holds no dataset yet" in requests.get(empty.url + "/", timeout=10).text
        assert requests.get(empty.url + "/nd/sd/public_tokens/", timeout=10).json() == []
        assert requests.get(empty.url + "/nd/sd/kat11_scale3/info/", timeout=10).status_code == 404
        ingest_store(tmp_path, tutorial_data)
        assert requests.get(empty.url + "/nd/sd/public_tokens/", timeout=10).json() == ["kat11_scale3"]
        assert DS in requests.get(empty.url + "/", timeout=10).text
        cut = requests.get(empty.url + "/nd/sd/kat11_scale3/image/raw/0/1000,1002/2000,2002/1000,1001/", timeout=10)
        assert cut.status_code == 200 and len(cut.content) == 4
