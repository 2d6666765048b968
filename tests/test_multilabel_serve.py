"""A multi-label run served: /v1/predict carries the labels over the recorded thresholds and
every class's probability, and the page (Debian's chromium via playwright) shows each label."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from multilabel_data import write_multilabel_dataset
from serving import Server, running_server
from test_serve_page import CHROMIUM, CHROMIUM_FLAGS

from tlvision.config import TrainConfig
from tlvision.inference.multilabel import labels_over
from tlvision.training.fit import fit


@pytest.fixture(scope="module")
def run_and_data(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("served")
    data = write_multilabel_dataset(root / "data")
    config = TrainConfig(
        data_dir=data, out_dir=root / "run", no_cache=True, input_size=48, batch_size=8,
        num_workers=0, device="cpu", strategy="linear-probe", head="logreg",
    )  # fmt: skip
    fit(config, log=lambda _: None)
    return root / "run", data


@pytest.fixture(scope="module")
def server(run_and_data: tuple[Path, Path]) -> Iterator[Server]:
    with running_server(run_and_data[0], "--runtime", "torch") as running:
        yield running


def _two_colour_image(data: Path) -> Path:
    """A val image that holds two colours (its row has two labels)."""
    for line in (data / "val.csv").read_text().splitlines()[1:]:
        name, labels = line.split(",")
        if labels.count(";") == 1:
            return data / name
    raise AssertionError("no two-label image")


def test_predict_endpoint_gives_labels_over_the_thresholds(
    server: Server, run_and_data: tuple[Path, Path]
) -> None:
    run, data = run_and_data
    image = _two_colour_image(data)
    response = httpx.post(
        f"{server.url}/v1/predict", files=[("files", (image.name, image.read_bytes()))], timeout=60
    )
    assert response.status_code == 200, response.text
    [prediction] = response.json()["predictions"]
    names = ["blue", "green", "red"]
    assert list(prediction["probabilities"]) == names
    thresholds = json.loads((run / "model.json").read_text())["thresholds"]
    probabilities = [prediction["probabilities"][name] for name in names]
    assert prediction["labels"] == labels_over(probabilities, names, thresholds)  # type: ignore[arg-type]


@pytest.mark.skipif(not CHROMIUM.is_file(), reason=f"{CHROMIUM} is absent")
def test_page_shows_each_label_with_its_probability(
    server: Server, run_and_data: tuple[Path, Path], tmp_path: Path
) -> None:
    from playwright.sync_api import expect, sync_playwright

    image = _two_colour_image(run_and_data[1])
    answer = httpx.post(
        f"{server.url}/v1/predict", files=[("files", (image.name, image.read_bytes()))], timeout=60
    ).json()["predictions"][0]
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch_persistent_context(
            str(tmp_path / "profile"), executable_path=str(CHROMIUM), headless=True,
            args=CHROMIUM_FLAGS,
        )  # fmt: skip
        try:
            page = browser.new_page()
            page.goto(f"{server.url}/")
            page.set_input_files("#file-input", str(image))
            predicted = page.locator(".result .predicted-class")
            expect(predicted).not_to_have_text("…", timeout=60_000)
            assert predicted.inner_text() == (", ".join(answer["labels"]) or "no label")
            shown = page.locator(".result .predicted-probability").inner_text()
            for name in answer["labels"]:
                assert f"{name} {answer['probabilities'][name] * 100:.1f}%" in shown
            expect(page.locator(".result .bars li")).to_have_count(3)  # every class
            expect(page.locator(".result .bars li.is-label")).to_have_count(len(answer["labels"]))
        finally:
            browser.close()
