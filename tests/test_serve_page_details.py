"""The page's details in a real headless browser (Debian's chromium via playwright): the token
prompt in words a person can act on, the accuracy of the weights it serves (and the test
split's), and nothing missing in the console (the favicon)."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from serving import Server, running_server
from test_serve_page import CHROMIUM, CHROMIUM_FLAGS

from tlvision import demo_data_dir
from tlvision.config import TrainConfig
from tlvision.training.fit import fit

TOKEN = "details-token-2b7a"

pytestmark = pytest.mark.skipif(not CHROMIUM.is_file(), reason=f"{CHROMIUM} is absent")


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo set with a test split (its val images again), so the run has a test accuracy."""
    root = tmp_path_factory.mktemp("details")
    data = root / "data"
    shutil.copytree(demo_data_dir(), data)
    shutil.copytree(data / "val", data / "test")
    out = root / "run"
    config = TrainConfig(data_dir=data, out_dir=out, epochs=3, device="cpu", num_workers=0)
    fit(config, log=lambda _: None)
    return out


@pytest.fixture(scope="module")
def server(run_dir: Path) -> Iterator[Server]:
    with running_server(run_dir, environment={"TLVISION_TOKEN": TOKEN}) as running:
        yield running


def percent(value: float) -> str:
    return f"{value * 100:.1f}%"


def test_page_prompt_accuracy_and_favicon(server: Server, run_dir: Path, tmp_path: Path) -> None:
    from playwright.sync_api import expect, sync_playwright

    summary = json.loads((run_dir / "summary.json").read_text())
    served = (
        f"val accuracy {percent(summary['best_val_acc'])} (the weights served: best on val, "
        f"epoch {summary['best_epoch']} of {summary['epochs']})"
    )
    tested = f"test accuracy {percent(summary['test_acc'])} on {summary['test_images']} images"
    responses: list[tuple[str, int]] = []
    console: list[str] = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch_persistent_context(
            str(tmp_path / "profile"), executable_path=str(CHROMIUM), headless=True,
            args=CHROMIUM_FLAGS,
        )  # fmt: skip
        try:
            page = browser.new_page()
            page.on("response", lambda response: responses.append((response.url, response.status)))
            page.on("console", lambda message: console.append(f"{message.type}: {message.text}"))
            page.goto(f"{server.url}/")
            model = page.locator("#model")
            expect(model).to_contain_text("Ask the person who started it", timeout=30_000)
            assert "Authorization" not in model.inner_text()
            expect(page.locator("label[for=token]")).to_contain_text("access token")
            page.fill("#token", "not-the-token")
            page.click("#token-save")
            expect(model).to_contain_text("was not accepted", timeout=30_000)
            page.fill("#token", TOKEN)
            page.click("#token-save")
            expect(model).to_contain_text(served, timeout=30_000)
            expect(model).to_contain_text(tested)
            page.wait_for_timeout(500)  # the icon is fetched after the page has loaded
        finally:
            browser.close()
    icons = [status for url, status in responses if "favicon" in url]
    assert icons and all(status == 200 for status in icons), responses
    assert not [entry for entry in responses if entry[1] == 404], responses
    assert not [line for line in console if "404" in line], console
