"""Rejecting unknown inputs: the threshold calibrated at training time, predict/API/serve/export
with --reject, and older runs without rejection data."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image
from scipy.special import logsumexp
from serving import Server, demo_val_images, running_server, train_demo_run
from test_serve_page import CHROMIUM, CHROMIUM_FLAGS

from tlvision import api
from tlvision.cli import main
from tlvision.data.images import load_rgb_image
from tlvision.data.transforms import prepare_pixels
from tlvision.inference.runtime import TorchClassifier
from tlvision.runs.reader import load_run_model

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return train_demo_run(tmp_path_factory.mktemp("rejection") / "run")


@pytest.fixture(scope="module")
def foreign_images(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Images of none of the demo classes: flat colours and noise."""
    folder = tmp_path_factory.mktemp("foreign")
    rng = np.random.default_rng(0)
    paths = []
    for index in range(4):
        pixels = rng.integers(0, 256, size=(64, 64, 3), dtype=np.uint8)
        if index % 2:
            pixels[:] = pixels[0, 0]
        path = folder / f"foreign_{index}.png"
        Image.fromarray(pixels).save(path)
        paths.append(path)
    return paths


def energies(run_dir: Path, paths: list[Path]) -> np.ndarray:
    """-logsumexp of the saved model's logits, computed here from torch's own output."""
    loaded = load_run_model(run_dir)
    classifier = TorchClassifier(loaded)
    pixels = np.stack([prepare_pixels(load_rgb_image(p), loaded.preprocessing) for p in paths])
    return np.asarray(-logsumexp(classifier.logits(pixels).astype(np.float64), axis=1))


def rejection_json(run_dir: Path) -> dict[str, object]:
    document: dict[str, object] = json.loads((run_dir / "rejection.json").read_text())
    return document


def test_training_calibrates_the_threshold_on_val(run_dir: Path) -> None:
    document = rejection_json(run_dir)
    val = demo_val_images()
    scores = energies(run_dir, val)
    assert document["score"] == "energy" and document["val_images"] == len(val)
    threshold = float(document["threshold"])  # type: ignore[arg-type]
    assert threshold == pytest.approx(np.quantile(scores, 0.95, method="higher"), abs=1e-4)
    assert np.mean(scores > threshold + 1e-6) <= 0.05
    histogram = document["val_histogram"]
    assert sum(histogram["counts"]) == len(val)  # type: ignore[index]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["rejection_threshold"] == document["threshold"]


def test_a_frozen_run_calibrates_on_its_cached_val_codes(run_dir: Path, tmp_path: Path) -> None:
    """The head over the cached val codes, not a second pass of the body over val (that pass
    took most of a warm frozen run's seconds), and the same threshold as from the images."""
    document = rejection_json(run_dir)
    assert document["val_logits_from"] == "cached codes"
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    assert main(["calibrate", str(copy)]) == 0
    from_images = rejection_json(copy)
    assert from_images["val_logits_from"] == "images"
    assert from_images["threshold"] == pytest.approx(document["threshold"], abs=1e-4)


def test_predict_json_rows_gain_unknown_and_ood_score(
    run_dir: Path, foreign_images: list[Path], capsys: pytest.CaptureFixture[str]
) -> None:
    paths = [*demo_val_images()[::3], *foreign_images]
    arguments = ["predict", str(run_dir), *map(str, paths), "--json", "--runtime", "torch"]
    assert main([*arguments, "--device", "cpu", "--reject", "auto"]) == 0
    rows = json.loads(capsys.readouterr().out)
    threshold = float(rejection_json(run_dir)["threshold"])  # type: ignore[arg-type]
    expected = energies(run_dir, paths)
    assert [row["path"] for row in rows] == [str(path) for path in paths]
    for row, score in zip(rows, expected, strict=True):
        assert row["ood_score"] == pytest.approx(score, abs=1e-4)
        assert row["unknown"] is bool(row["ood_score"] > threshold)
        assert (row["class"] is None) is row["unknown"]
        assert row["top"]  # the closest classes, also for an unknown image
    assert any(row["unknown"] for row in rows[-len(foreign_images) :])
    assert main([*arguments, "--device", "cpu"]) == 0  # off by default: the rows as before
    assert all("unknown" not in row for row in json.loads(capsys.readouterr().out))


def test_text_output_names_the_closest_class_of_an_unknown_image(
    run_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    image = demo_val_images()[0]
    arguments = ["predict", str(run_dir), str(image), "--device", "cpu", "--runtime", "torch"]
    assert main([*arguments, "--reject", "-1000"]) == 0  # every score is above: all unknown
    [line] = capsys.readouterr().out.splitlines()
    assert line.startswith(f"{image}: unknown (closest: fish 0.")
    assert main([*arguments, "--reject", "1000"]) == 0
    [line] = capsys.readouterr().out.splitlines()
    assert line.startswith(f"{image}: fish 0.")


def test_api_predict_with_reject(run_dir: Path, foreign_images: list[Path]) -> None:
    run = api.load(run_dir)
    predictions = run.predict(foreign_images, reject="auto", device="cpu", runtime="torch")
    threshold = float(rejection_json(run_dir)["threshold"])  # type: ignore[arg-type]
    for prediction in predictions:
        assert prediction.ood_score is not None
        assert prediction.unknown is (prediction.ood_score > threshold)
        assert (prediction.class_name is None) is prediction.unknown
    plain = run.predict(foreign_images, device="cpu", runtime="torch")
    assert all(p.unknown is None and p.class_name is not None for p in plain)


def test_bad_reject_value_is_a_one_line_error(
    run_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    image = str(demo_val_images()[0])
    assert main(["predict", str(run_dir), image, "--reject", "sometimes"]) == 2
    error = capsys.readouterr().err
    assert "--reject sometimes" in error and "auto" in error and "Traceback" not in error


def test_older_run_names_the_fix_and_calibrate_writes_it(
    run_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    older = tmp_path / "older"
    shutil.copytree(run_dir, older)
    (older / "rejection.json").unlink()
    image = str(demo_val_images()[0])
    predict = ["predict", str(older), image, "--device", "cpu", "--runtime", "torch", "--json"]
    assert main([*predict, "--reject", "auto"]) == 2
    error = capsys.readouterr().err
    assert f"tlvision calibrate {older}" in error and "--reject off" in error
    assert main(["serve", str(older), "--port", "0", "--reject", "auto"]) == 2
    assert f"tlvision calibrate {older}" in capsys.readouterr().err
    assert main(["calibrate", str(older), "--json"]) == 0
    written = json.loads(capsys.readouterr().out)
    assert written["threshold"] == pytest.approx(rejection_json(run_dir)["threshold"], abs=1e-4)
    assert main([*predict, "--reject", "auto"]) == 0
    assert "ood_score" in json.loads(capsys.readouterr().out)[0]


def test_export_sidecar_carries_the_rejection_rule(run_dir: Path, tmp_path: Path) -> None:
    out = api.load(run_dir).export(format="onnx", out=tmp_path / "model.onnx")
    rejection = json.loads(Path(f"{out}.json").read_text())["rejection"]
    assert rejection["score"] == "energy" and "logsumexp" in rejection["formula"]
    assert rejection["threshold"] == rejection_json(run_dir)["threshold"]


@pytest.fixture(scope="module")
def rejecting_server(run_dir: Path) -> Iterator[tuple[Server, float]]:
    """A server whose threshold is the median val score: about half the val images unknown."""
    threshold = float(np.median(energies(run_dir, demo_val_images())))
    with running_server(run_dir, "--runtime", "torch", "--reject", repr(threshold)) as server:
        yield server, threshold


def test_serve_never_gives_a_rejected_image_a_class(
    rejecting_server: tuple[Server, float], run_dir: Path
) -> None:
    server, threshold = rejecting_server
    paths = demo_val_images()[:12]
    files = [("files", (path.name, path.read_bytes())) for path in paths]
    response = httpx.post(f"{server.url}/v1/predict", files=files, timeout=60)
    assert response.status_code == 200, response.text
    predictions = response.json()["predictions"]
    expected = energies(run_dir, paths)
    for prediction, score in zip(predictions, expected, strict=True):
        assert prediction["ood_score"] == pytest.approx(score, abs=1e-4)
        assert prediction["unknown"] is bool(prediction["ood_score"] > threshold)
        if prediction["unknown"]:
            assert prediction["class"] is None and prediction["probability"] is None
        else:
            assert prediction["class"] == prediction["top"][0]["class"]
    assert {p["unknown"] for p in predictions} == {True, False}


def test_report_shows_the_val_score_distribution(run_dir: Path, tmp_path: Path) -> None:
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    page = api.load(copy).report(device="cpu").read_text()
    threshold = float(rejection_json(copy)["threshold"])  # type: ignore[arg-type]
    assert f'<b id="rejection-threshold">{threshold:.4f}</b>' in page
    assert 'alt="out-of-distribution scores on val"' in page
    (copy / "rejection.json").unlink()
    assert f"tlvision calibrate {copy}" in api.load(copy).report(device="cpu").read_text()


@pytest.mark.skipif(not CHROMIUM.is_file(), reason=f"{CHROMIUM} is absent")
def test_page_shows_unknown_for_a_rejected_image(run_dir: Path, tmp_path: Path) -> None:
    from playwright.sync_api import expect, sync_playwright

    image = demo_val_images()[0]
    with (
        running_server(run_dir, "--runtime", "torch", "--reject", "-1000") as server,
        sync_playwright() as playwright,
    ):
        browser = playwright.chromium.launch_persistent_context(
            str(tmp_path / "profile"), executable_path=str(CHROMIUM), headless=True,
            args=CHROMIUM_FLAGS,
        )  # fmt: skip
        try:
            page = browser.new_page()
            page.goto(f"{server.url}/")
            expect(page.locator("#model")).to_contain_text("fish, monument, tool", timeout=30_000)
            page.set_input_files("#file-input", str(image))
            expect(page.locator(".result .predicted-class")).to_have_text("unknown", timeout=60_000)
            expect(page.locator(".result .predicted-probability")).to_contain_text("closest: ")
        finally:
            browser.close()
