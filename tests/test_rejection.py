"""Rejecting unknown inputs: the train codes stored and the threshold calibrated at training
time, predict/API/serve/export with --reject, energy runs (older, or calibrated so) unchanged,
and older runs without rejection data."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw
from scipy.special import logsumexp
from serving import Server, demo_val_images, running_server, train_demo_run
from test_serve_page import CHROMIUM, CHROMIUM_FLAGS

from tlvision import api
from tlvision.cli import main
from tlvision.config import TrainConfig
from tlvision.data.images import load_rgb_image
from tlvision.data.transforms import prepare_pixels
from tlvision.inference.runtime import TorchClassifier
from tlvision.labelling.pool import pool_codes
from tlvision.models.pixels import PixelNormalize
from tlvision.models.stages import StageCodes
from tlvision.runs.reader import load_run_model, run_splits
from tlvision.training.fit import fit

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return train_demo_run(tmp_path_factory.mktemp("rejection") / "run")


@pytest.fixture(scope="module")
def energy_run(run_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same model calibrated with energy, as runs were before the code-space score."""
    energy = tmp_path_factory.mktemp("energy") / "run"
    shutil.copytree(run_dir, energy)
    assert main(["calibrate", str(energy), "--score", "energy"]) == 0
    return energy


@pytest.fixture(scope="module")
def foreign_images(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Images of none of the demo classes: flat colours, noise and a glyph."""
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
    glyph = Image.new("RGB", (96, 96), "white")
    ImageDraw.Draw(glyph).text((30, 30), "A", fill="black")
    glyph.save(folder / "glyph.png")
    return [*paths, folder / "glyph.png"]


def pixels_of(run_dir: Path, paths: list[Path]) -> np.ndarray:
    preprocessing = load_run_model(run_dir).preprocessing
    return np.stack([prepare_pixels(load_rgb_image(p), preprocessing) for p in paths])


def energies(run_dir: Path, paths: list[Path]) -> np.ndarray:
    """-logsumexp of the saved model's logits, computed here from torch's own output."""
    classifier = TorchClassifier(load_run_model(run_dir))
    logits = classifier.logits(pixels_of(run_dir, paths))
    return np.asarray(-logsumexp(logits.astype(np.float64), axis=1))


def stored_codes(run_dir: Path) -> np.ndarray:
    from safetensors.numpy import load_file

    codes: np.ndarray = load_file(str(run_dir / "ood_codes.safetensors"))["codes"]
    return codes


@torch.inference_mode()
def top_codes(run_dir: Path, paths: list[Path]) -> np.ndarray:
    """The head's input, computed here by the model cut below its head (not models.ood)."""
    loaded = load_run_model(run_dir)
    normalize = PixelNormalize(loaded.preprocessing)
    cut = StageCodes(loaded.model, loaded.backbone, [None])
    pixels = torch.from_numpy(pixels_of(run_dir, paths))
    codes: np.ndarray = cut(normalize(pixels))[None].numpy().astype(np.float64)
    return codes


def code_distances(run_dir: Path, paths: list[Path]) -> np.ndarray:
    """1 - the largest cosine similarity to the stored train codes, computed here in NumPy."""
    codes = top_codes(run_dir, paths)
    codes /= np.linalg.norm(codes, axis=1, keepdims=True)
    train = stored_codes(run_dir).astype(np.float64)
    return np.asarray(1.0 - (codes @ train.T).max(axis=1))


def rejection_json(run_dir: Path) -> dict[str, object]:
    document: dict[str, object] = json.loads((run_dir / "rejection.json").read_text())
    return document


def test_training_stores_the_train_codes(run_dir: Path) -> None:
    document = rejection_json(run_dir)
    codes = stored_codes(run_dir)
    splits = run_splits(load_run_model(run_dir).metadata)
    train = [path for path, _label in splits.samples["train"]]  # all: under the cap of 5,000
    assert codes.dtype == np.float16 and codes.shape == (len(train), 1280)
    assert document["train_codes"] == len(train) and document["max_train_codes"] == 5000
    assert document["codes_file"] == "ood_codes.safetensors" and document["k"] == 1
    assert np.allclose(np.linalg.norm(codes.astype(np.float32), axis=1), 1.0, atol=1e-2)
    # the codes the saved model gives the train images now, up to float16 and resampling
    expected = top_codes(run_dir, train)
    expected /= np.linalg.norm(expected, axis=1, keepdims=True)
    similarity = np.sum(expected * codes.astype(np.float64), axis=1)
    assert similarity.min() > 0.99


def test_a_stage_probe_stores_and_scores_its_stage_codes(
    tiny_dataset: Path, tmp_path: Path
) -> None:
    """A linear probe cut at stage2: the stored train codes and label-next's pool codes are the
    stage's pooled codes, computed here from the saved body's feature maps."""
    out = tmp_path / "probe"
    config = TrainConfig(
        data_dir=tiny_dataset, out_dir=out, strategy="linear-probe", stage="stage2",
        input_size=64, epochs=1, batch_size=8, num_workers=0, device="cpu",
    )  # fmt: skip
    fit(config, log=lambda _message: None)
    loaded = load_run_model(out)
    train = [path for path, _label in run_splits(loaded.metadata).samples["train"]]
    pixels = PixelNormalize(loaded.preprocessing)(torch.from_numpy(pixels_of(out, train)))
    with torch.inference_mode():
        feature_maps, logits = loaded.model.body(pixels)["stage2"], loaded.model(pixels)
    by_hand = feature_maps.mean(dim=(2, 3)).numpy().astype(np.float64)
    unit = by_hand / np.linalg.norm(by_hand, axis=1, keepdims=True)
    stored = stored_codes(out).astype(np.float64)
    assert stored.shape == (len(train), by_hand.shape[1]) and by_hand.shape[1] != 1280
    assert np.sum(unit * stored, axis=1).min() > 0.99
    pooled = pool_codes(loaded, train, device=torch.device("cpu"))
    assert pooled.paths == tuple(train)
    np.testing.assert_allclose(pooled.codes, by_hand, rtol=1e-3, atol=1e-4)
    np.testing.assert_allclose(pooled.logits, logits.numpy(), rtol=1e-3, atol=1e-4)


def test_training_calibrates_the_threshold_on_val(run_dir: Path) -> None:
    document = rejection_json(run_dir)
    val = demo_val_images()
    scores = code_distances(run_dir, val)
    assert document["score"] == "code-distance" and document["val_images"] == len(val)
    threshold = float(document["threshold"])  # type: ignore[arg-type]
    assert threshold == pytest.approx(np.quantile(scores, 0.95, method="higher"), abs=1e-3)
    assert np.mean(scores > threshold + 1e-3) <= 0.05
    histogram = document["val_histogram"]
    assert sum(histogram["counts"]) == len(val)  # type: ignore[index]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["rejection_threshold"] == document["threshold"]
    assert summary["rejection_score"] == "code-distance"


def test_a_frozen_run_calibrates_on_its_cached_val_codes(run_dir: Path, tmp_path: Path) -> None:
    """The val scores from the codes the head was scored on, not a second pass of the body over
    val (that pass took most of a warm frozen run's seconds), and the same threshold as from
    the images."""
    document = rejection_json(run_dir)
    assert document["val_scores_from"] == "the head's codes"
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    assert main(["calibrate", str(copy)]) == 0
    from_images = rejection_json(copy)
    assert from_images["val_scores_from"] == "images"
    assert from_images["threshold"] == pytest.approx(document["threshold"], abs=1e-4)


def test_predict_rejects_foreign_images_and_keeps_val_ones(
    run_dir: Path, foreign_images: list[Path], capsys: pytest.CaptureFixture[str]
) -> None:
    paths = [*demo_val_images()[::3], *foreign_images]
    arguments = ["predict", str(run_dir), *map(str, paths), "--json", "--runtime", "torch"]
    assert main([*arguments, "--device", "cpu", "--reject", "auto"]) == 0
    rows = json.loads(capsys.readouterr().out)
    threshold = float(rejection_json(run_dir)["threshold"])  # type: ignore[arg-type]
    expected = code_distances(run_dir, paths)
    assert [row["path"] for row in rows] == [str(path) for path in paths]
    for row, score in zip(rows, expected, strict=True):
        assert row["ood_score"] == pytest.approx(score, abs=2e-3)
        assert row["unknown"] is bool(row["ood_score"] > threshold)
        assert (row["class"] is None) is row["unknown"]
        assert row["top"]  # the closest classes, also for an unknown image
    assert all(row["unknown"] for row in rows[-len(foreign_images) :])  # colours, noise, glyph
    assert not any(row["unknown"] for row in rows[: -len(foreign_images)])
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
    assert all(prediction.unknown for prediction in predictions)
    plain = run.predict(foreign_images, device="cpu", runtime="torch")
    assert all(p.unknown is None and p.class_name is not None for p in plain)


def test_torch_and_onnx_runtimes_give_the_same_scores(
    run_dir: Path, foreign_images: list[Path]
) -> None:
    run = api.load(run_dir)
    paths = [*demo_val_images()[:6], *foreign_images]
    by_torch = run.predict(paths, reject="auto", device="cpu", runtime="torch")
    by_onnx = run.predict(paths, reject="auto", device="cpu", runtime="onnx")
    for a, b in zip(by_torch, by_onnx, strict=True):
        assert a.ood_score == pytest.approx(b.ood_score, abs=1e-4)
        assert a.unknown is b.unknown and a.class_name == b.class_name


def test_bad_reject_value_is_a_one_line_error(
    run_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    image = str(demo_val_images()[0])
    assert main(["predict", str(run_dir), image, "--reject", "sometimes"]) == 2
    error = capsys.readouterr().err
    assert "--reject sometimes" in error and "auto" in error and "Traceback" not in error


def test_bad_calibrate_score_is_a_one_line_error(
    run_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["calibrate", str(run_dir), "--score", "sometimes"])
    assert exit_.value.code == 2
    error = capsys.readouterr().err
    assert "--score" in error and "code-distance" in error and "Traceback" not in error
    assert main(["calibrate", str(run_dir), "--val-rejected", "1.5"]) == 2
    assert "--val-rejected 1.5" in capsys.readouterr().err


@pytest.mark.parametrize("damage", ["missing", "damaged"])
def test_missing_or_damaged_train_codes_name_the_fix(
    run_dir: Path, tmp_path: Path, damage: str, capsys: pytest.CaptureFixture[str]
) -> None:
    broken = tmp_path / "broken"
    shutil.copytree(run_dir, broken)
    codes = broken / "ood_codes.safetensors"
    if damage == "missing":
        codes.unlink()
    else:
        codes.write_bytes(b"not a safetensors file")
    image = str(demo_val_images()[0])
    predict = ["predict", str(broken), image, "--device", "cpu", "--runtime", "torch"]
    assert main([*predict, "--reject", "auto"]) == 2
    [line] = capsys.readouterr().err.strip().splitlines()
    assert str(codes) in line and f"tlvision calibrate {broken}" in line
    assert main(["calibrate", str(broken)]) == 0  # the fix
    capsys.readouterr()
    assert main([*predict, "--reject", "auto"]) == 0


def test_an_energy_run_predicts_as_before(
    run_dir: Path, energy_run: Path, foreign_images: list[Path]
) -> None:
    document = rejection_json(energy_run)
    assert document["score"] == "energy" and not (energy_run / "ood_codes.safetensors").exists()
    paths = [*demo_val_images()[::4], *foreign_images]
    threshold = float(document["threshold"])  # type: ignore[arg-type]
    energy = api.load(energy_run).predict(paths, reject="auto", device="cpu", runtime="torch")
    codes = api.load(run_dir).predict(paths, device="cpu", runtime="torch")
    for prediction, score, same in zip(energy, energies(energy_run, paths), codes, strict=True):
        assert prediction.ood_score == pytest.approx(score, abs=1e-4)
        assert prediction.unknown is (prediction.ood_score > threshold)
        assert prediction.top == same.top  # the same network, the same probabilities
    logits = TorchClassifier(load_run_model(energy_run)).outputs(pixels_of(energy_run, paths))
    assert logits[1] is None  # one output: the network of an energy run is as it was


def test_older_run_names_the_fix_and_calibrate_writes_it(
    run_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    older = tmp_path / "older"
    shutil.copytree(run_dir, older)
    (older / "rejection.json").unlink()
    (older / "ood_codes.safetensors").unlink()
    image = str(demo_val_images()[0])
    predict = ["predict", str(older), image, "--device", "cpu", "--runtime", "torch", "--json"]
    assert main([*predict, "--reject", "auto"]) == 2
    error = capsys.readouterr().err
    assert f"tlvision calibrate {older}" in error and "--reject off" in error
    assert main(["serve", str(older), "--port", "0", "--reject", "auto"]) == 2
    assert f"tlvision calibrate {older}" in capsys.readouterr().err
    assert main(["calibrate", str(older), "--json"]) == 0
    written = json.loads(capsys.readouterr().out)
    assert written["score"] == "code-distance"
    assert written["threshold"] == pytest.approx(rejection_json(run_dir)["threshold"], abs=1e-3)
    assert np.array_equal(stored_codes(older), stored_codes(run_dir))
    assert main([*predict, "--reject", "auto"]) == 0
    assert "ood_score" in json.loads(capsys.readouterr().out)[0]


def test_exported_onnx_computes_the_score_itself(
    run_dir: Path, energy_run: Path, foreign_images: list[Path], tmp_path: Path
) -> None:
    import onnxruntime

    out = api.load(run_dir).export(format="onnx", out=tmp_path / "model.onnx")
    sidecar = json.loads(Path(f"{out}.json").read_text())
    rejection = sidecar["rejection"]
    assert rejection["score"] == "code-distance" and rejection["output"] == "ood_score"
    assert "cosine" in rejection["formula"] and "score > threshold" in rejection["rule"]
    assert rejection["threshold"] == rejection_json(run_dir)["threshold"]
    assert sidecar["parity"]["max_abs_ood_score_difference"] < 1e-4
    session = onnxruntime.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    assert [output.name for output in session.get_outputs()] == ["logits", "ood_score"]
    val = demo_val_images()[:3]
    paths = [*val, *foreign_images]
    logits, scores = session.run(None, {"pixels": pixels_of(run_dir, paths)})
    assert logits.shape == (len(paths), 3) and scores.shape == (len(paths),)
    assert np.allclose(scores, code_distances(run_dir, paths), atol=2e-3)
    unknown = scores > rejection["threshold"]
    assert not unknown[: len(val)].any() and unknown[len(val) :].all()
    # an energy run's export is as before: logits only, the formula from them in the sidecar
    energy_out = api.load(energy_run).export(format="onnx", out=tmp_path / "energy.onnx")
    energy_rejection = json.loads(Path(f"{energy_out}.json").read_text())["rejection"]
    assert energy_rejection["score"] == "energy" and "logsumexp" in energy_rejection["formula"]
    session = onnxruntime.InferenceSession(str(energy_out), providers=["CPUExecutionProvider"])
    assert [output.name for output in session.get_outputs()] == ["logits"]


@pytest.fixture(scope="module")
def rejecting_server(run_dir: Path) -> Iterator[tuple[Server, float]]:
    """A server whose threshold is the median val score: about half the val images unknown."""
    threshold = float(np.median(code_distances(run_dir, demo_val_images())))
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
    expected = code_distances(run_dir, paths)
    for prediction, score in zip(predictions, expected, strict=True):
        assert prediction["ood_score"] == pytest.approx(score, abs=2e-3)
        assert prediction["unknown"] is bool(prediction["ood_score"] > threshold)
        if prediction["unknown"]:
            assert prediction["class"] is None and prediction["probability"] is None
        else:
            assert prediction["class"] == prediction["top"][0]["class"]
    assert {p["unknown"] for p in predictions} == {True, False}


def test_serve_auto_gives_a_foreign_image_no_class(
    run_dir: Path, foreign_images: list[Path]
) -> None:
    paths = [demo_val_images()[0], foreign_images[-1]]  # a val image, the glyph
    files = [("files", (path.name, path.read_bytes())) for path in paths]
    with running_server(run_dir, "--runtime", "torch", "--reject", "auto") as server:
        response = httpx.post(f"{server.url}/v1/predict", files=files, timeout=60)
    assert response.status_code == 200, response.text
    val, foreign = response.json()["predictions"]
    assert val["unknown"] is False and val["class"] == "fish"
    assert foreign["unknown"] is True and foreign["class"] is None
    assert foreign["ood_score"] > rejection_json(run_dir)["threshold"]  # type: ignore[operator]


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
