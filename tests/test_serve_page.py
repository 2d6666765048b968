"""The web page of `tlvision serve` in a real headless browser: Debian's chromium via playwright."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from conftest import predict_with_torch
from PIL import Image
from serving import Server, demo_val_images, running_server, train_demo_run

from tlvision.runs.reader import load_run_model

CHROMIUM = Path("/usr/bin/chromium")
VIEWPORT = (1280, 720)
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

pytestmark = pytest.mark.skipif(
    not CHROMIUM.is_file(),
    reason=f"{CHROMIUM} is absent: install Debian's chromium (.ci/run does: apt-get install "
    "chromium)",
)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return train_demo_run(tmp_path_factory.mktemp("page") / "run")


TOKEN = "page-token-81c3"


@pytest.fixture(scope="module")
def server(run_dir: Path) -> Iterator[Server]:
    """The default runtime (auto: ONNX Runtime, exported on first use, where installed), with
    a token, so the page has to ask for it."""
    with running_server(run_dir, environment={"TLVISION_TOKEN": TOKEN}) as running:
        yield running


def test_page_asks_for_the_token_then_classifies_an_upload(
    server: Server, run_dir: Path, tmp_path: Path
) -> None:
    from playwright.sync_api import expect, sync_playwright

    image = next(path for path in demo_val_images() if path.parent.name == "tool")
    expected = predict_with_torch(load_run_model(run_dir), [image])[0].top[0][0]
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch_persistent_context(
            str(tmp_path / "profile"),
            executable_path=str(CHROMIUM),
            headless=True,
            args=CHROMIUM_FLAGS,
            viewport={"width": VIEWPORT[0], "height": VIEWPORT[1]},
        )
        try:
            page = browser.new_page()
            page.goto(f"{server.url}/")
            expect(page.locator("#token-box")).to_be_visible(timeout=30_000)
            expect(page.locator("#model")).to_contain_text("token")
            page.fill("#token", TOKEN)
            page.click("#token-save")
            expect(page.locator("#model")).to_contain_text("fish, monument, tool", timeout=30_000)
            expect(page.locator("#token-box")).to_be_hidden()
            page.set_input_files("#file-input", str(image))
            predicted = page.locator(".result .predicted-class")
            expect(predicted).not_to_have_text("…", timeout=60_000)
            assert predicted.inner_text() == expected
            bars = page.locator(".result .bars li")
            expect(bars).to_have_count(3)  # the page asks for the top 3 by default
            expect(page.locator(".result .map-figure")).to_be_visible(timeout=60_000)
            assert page.locator(".result .map").evaluate("image => image.naturalWidth") > 0
            expect(page.locator(".result .map")).to_have_js_property("complete", True)
            shown = page.locator(".result .map").bounding_box()  # in the viewport
            scrolled = page.evaluate("() => [window.scrollX, window.scrollY]")
            screenshot = tmp_path / "page.png"
            page.screenshot(path=str(screenshot), full_page=True)
        finally:
            browser.close()
    # The screenshot is the page as drawn: the viewport's width, and where the page shows the
    # class map, the overlay the server makes for this image (scaled by the browser).
    overlay = httpx.post(
        f"{server.url}/v1/maps",
        files=[("file", (image.name, image.read_bytes()))],
        headers={"Authorization": f"Bearer {TOKEN}"},
        timeout=60,
    )
    assert overlay.status_code == 200 and shown is not None
    with Image.open(screenshot) as drawn:
        assert drawn.format == "PNG" and drawn.width == VIEWPORT[0] and drawn.height >= VIEWPORT[1]
        left, top = shown["x"] + scrolled[0], shown["y"] + scrolled[1]  # in the whole page
        box = [round(value) for value in (left, top, shown["width"], shown["height"])]
        assert box[2] > 50 and box[3] > 50, shown
        region = drawn.convert("RGB").crop((box[0], box[1], box[0] + box[2], box[1] + box[3]))
    expected = Image.open(io.BytesIO(overlay.content)).convert("RGB").resize(region.size)
    region_pixels = np.asarray(region, dtype=np.float32)
    difference = np.abs(region_pixels - np.asarray(expected, dtype=np.float32)).mean()
    assert region_pixels.std() > 20  # a picture, not a blank box
    assert difference < 10, difference  # 0.9 of 255 here
