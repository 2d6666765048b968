"""The run report in a real browser, its numbers against evaluate's, compare and TTA.

One small real run (feature-extract, real mobilenet_v2 weights, three classes, one with HTML
characters in its name) trained through the CLI, which writes report.html at the end.
"""

from __future__ import annotations

import base64
import html
import io
import json
import re
import shlex
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from conftest import predict_with_torch, write_dataset
from PIL import Image

import tlvision
from tlvision.cli import build_parser, main
from tlvision.data.images import load_rgb_image
from tlvision.data.transforms import build_transforms, prepare_pixels
from tlvision.inference.tta import TTA_VIEWS, tta_pixels
from tlvision.models.pixels import PixelClassifier
from tlvision.report.page import TOP_LOSSES, reproduce_command
from tlvision.runs.reader import load_run_model
from tlvision.tables import escape

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]  # fmt: skip
ODD_CLASS = "stripes <b>&amp;"  # must show as typed, never as markup


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(run directory, dataset): a 3-class feature-extract run, 18 val images."""
    root = tmp_path_factory.mktemp("report")
    data = write_dataset(
        root / "data", classes=("circles", "squares", "stripes"),
        per_class={"train": 6, "val": 6},
    )  # fmt: skip
    for split in ("train", "val"):
        (data / split / "stripes").rename(data / split / ODD_CLASS)
    (data / "train" / "circles" / "empty.jpg").write_bytes(b"")  # a problem `check` reports
    run = root / "run"
    status = main(
        ["train", str(data), "--strategy", "feature-extract", "--epochs", "2", "--lr", "0.003",
         "--input-size", "96", "--workers", "0", "--out", str(run)]
    )  # fmt: skip
    assert status == 0
    return run, data


def open_in_browser(page_path: Path, screenshot: Path) -> dict[str, Any]:
    """Load a page from disk in headless chromium: console errors, image widths, tables."""
    sync_api = pytest.importorskip("playwright.sync_api")
    if not CHROMIUM.exists():
        pytest.skip("Debian's chromium is not installed at /usr/bin/chromium")
    with sync_api.sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(screenshot.parent / "chromium-profile"), executable_path=str(CHROMIUM),
            args=CHROMIUM_FLAGS, headless=True, viewport={"width": 1280, "height": 900},
        )  # fmt: skip
        page = context.new_page()
        errors: list[str] = []
        page.on("console", lambda message: message.type == "error" and errors.append(message.text))
        page.on("pageerror", lambda error: errors.append(str(error)))
        page.goto(page_path.resolve().as_uri(), wait_until="load")
        found = page.evaluate(
            """() => ({
                widths: Array.from(document.images).map(image => image.naturalWidth),
                text: document.body.innerText,
                confusion: Array.from(document.querySelectorAll('#confusion tbody tr')).map(
                    row => Array.from(row.cells).slice(1).map(cell => Number(cell.innerText))),
                losses: Array.from(document.querySelectorAll('figure.top-loss')).map(
                    figure => [figure.dataset.path, Number(figure.dataset.loss)]),
                command: document.querySelector('#command')?.innerText ?? '',
            })"""
        )
        page.screenshot(path=str(screenshot), full_page=True)
        context.close()
    found["errors"] = errors
    return dict(found)


def independent_losses(run: Path, data: Path) -> dict[str, float]:
    """Cross-entropy of every val image, by the saved model on the val transform, image by image."""
    loaded = load_run_model(run)
    transform = build_transforms(loaded.preprocessing)["val"]
    model = loaded.model.eval()
    losses = {}
    with torch.inference_mode():
        for class_dir in sorted((data / "val").iterdir()):
            label = loaded.class_names.index(class_dir.name)
            for path in sorted(class_dir.iterdir()):
                logits = model(transform(load_rgb_image(path)).unsqueeze(0))
                loss = torch.nn.functional.cross_entropy(logits, torch.tensor([label]))
                losses[str(path)] = float(loss)
    return losses


def test_report_opens_in_a_browser_and_matches_evaluate(
    trained: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run, data = trained
    report = run / "report.html"
    assert report.is_file()  # written by train
    found = open_in_browser(report, tmp_path / "report.png")
    assert found["errors"] == []
    assert len(found["widths"]) >= 3 + TOP_LOSSES and all(width > 0 for width in found["widths"])
    assert (tmp_path / "report.png").stat().st_size > 10_000
    for name in ("circles", "squares", ODD_CLASS):
        assert name in found["text"]
    assert "Dataset problems" in found["text"] and "empty.jpg" in found["text"]
    assert ODD_CLASS not in report.read_text()  # escaped in the HTML source

    capsys.readouterr()
    assert main(["evaluate", str(run), str(data / "val"), "--json"]) == 0
    evaluated = json.loads(capsys.readouterr().out)
    assert found["confusion"] == evaluated["confusion_matrix"]

    losses = independent_losses(run, data)
    expected = sorted(losses, key=lambda path: -losses[path])[:TOP_LOSSES]
    shown = [path for path, _loss in found["losses"]]
    assert set(shown) == set(expected)
    assert shown == sorted(shown, key=lambda path: -losses[path])
    for path, loss in found["losses"]:
        assert loss == pytest.approx(losses[path], abs=1e-3)


def test_report_command_reproduces_the_run_config(trained: tuple[Path, Path]) -> None:
    """The command shown in the report parses to the config the run was trained with."""
    from tlvision.cli.options import training_options
    from tlvision.config import config_from_options

    run, _data = trained
    saved = load_run_model(run).metadata["config"]
    html = (run / "report.html").read_text() if (run / "report.html").is_file() else ""
    words = shlex.split(reproduce_command(saved, run))
    assert words[:2] == ["tlvision", "train"]
    arguments = build_parser().parse_args(words[1:])
    options = training_options(arguments)
    rebuilt = config_from_options(arguments.data, options.pop("out"), options).to_json()
    assert {**rebuilt, "overwrite": saved["overwrite"]} == saved  # every option it ran with
    assert not html or escape(shlex.join(words)) in html


def advice_for(data: Path) -> dict[str, Any]:
    """The advisor's decision (the pure part of `advise`) on evidence shaped like its
    measurements of a small photo set, as saved in advice.json."""
    from dataclasses import replace

    from tlvision.advisor.decision import Entry, Evidence, PretrainedFit, SizeEvidence, decide

    probe = {"stage2": 0.8, "stage3": 0.9, "top": 0.95}
    evidence = Evidence(
        size=SizeEvidence(18, 18, 0, 3, 6, 6.0, 6, 1.0, 48),
        pretrained_fit=PretrainedFit(0.4, {"stem": 0.1, "stage1": 0.2, "stage2": 0.3}, 18),
        probe_accuracy=probe,
        race=tuple(
            Entry(
                f"frozen {stage} @96",
                "linear-probe",
                None if stage == "top" else stage,
                96,
                accuracy,
                "hand-made",
                0.0,
            )
            for stage, accuracy in probe.items()
        ),
        race_sample={"fit": 12, "holdout": 6},
        learning_curve={"0.25": 0.7, "0.5": 0.85, "1": 0.95},
        trial_skipped="small and similar",
        device_kind="cpu",
        seconds_per_pass=0.01,
        native_input_size=96,
    )
    advice = decide(evidence, time_budget_minutes=30.0)
    return replace(advice, command=f"tlvision train {data}", evidence=evidence.to_json()).to_json()


def test_report_command_with_data_and_no_report(
    trained: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run, data = trained
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    (copy / "report.html").unlink()
    advice = advice_for(data)
    (copy / "advice.json").write_text(json.dumps(advice))
    assert main(["report", str(copy), "--data", str(data)]) == 0
    assert "wrote" in capsys.readouterr().out
    page = (copy / "report.html").read_text()
    assert "Why this strategy" in page and advice["quadrant"] in page
    for reason in advice["reasons"]:
        assert html.escape(reason) in page
    for encoded in re.findall(r'src="data:image/png;base64,([^"]+)"', page):
        with Image.open(io.BytesIO(base64.b64decode(encoded))) as image:
            assert image.format == "PNG" and image.width > 0
    quiet = tmp_path / "quiet"
    main(["train", str(data), "--epochs", "1", "--input-size", "96", "--workers", "0",
          "--no-report", "--out", str(quiet)])  # fmt: skip
    assert (quiet / "summary.json").is_file() and not (quiet / "report.html").exists()


def test_compare_table_and_page(
    trained: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run, data = trained
    probe = tmp_path / "probe"
    main(["train", str(data), "--strategy", "linear-probe", "--head", "logreg", "--input-size",
          "96", "--workers", "0", "--no-report", "--out", str(probe)])  # fmt: skip
    capsys.readouterr()
    page = tmp_path / "compare.html"
    assert main(["compare", str(run), str(probe), "--html", str(page), "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [row["strategy"] for row in rows] == ["feature-extract", "linear-probe"]
    for row, run_dir in zip(rows, (run, probe), strict=True):
        summary = json.loads((run_dir / "summary.json").read_text())
        assert row["final_val_acc"] == summary["final_val_acc"]
        assert row["best_val_acc"] == summary["best_val_acc"]
        assert row["input_size"] == 96 and row["backbone"] == "mobilenet_v2"
    found = open_in_browser(page, tmp_path / "compare.png")
    assert found["errors"] == [] and found["widths"] and all(found["widths"])
    assert str(probe) in found["text"]
    written = tlvision.load(probe).report()  # the API, on the logistic-regression run
    assert written == probe / "report.html" and "linear-probe" in written.read_text()


def symmetric_image() -> Image.Image:
    rng = np.random.default_rng(0)
    half = rng.integers(0, 255, size=(120, 80, 3), dtype=np.uint8)
    return Image.fromarray(np.concatenate([half, half[:, ::-1]], axis=1))


def test_tta_views_flip_and_crops(trained: tuple[Path, Path]) -> None:
    preprocessing = load_run_model(trained[0]).preprocessing
    views = tta_pixels(symmetric_image(), preprocessing)
    assert views.shape[0] == len(TTA_VIEWS) and views.dtype == np.uint8
    assert np.array_equal(views[1], views[0])  # the mirror of a symmetric image is itself
    assert np.array_equal(views[2], views[3][:, ::-1])  # so are its left and right corners
    rng = np.random.default_rng(1)
    image = Image.fromarray(rng.integers(0, 255, size=(120, 160, 3), dtype=np.uint8))
    views = tta_pixels(image, preprocessing)
    assert np.array_equal(views[1], views[0][:, ::-1]) and not np.array_equal(views[1], views[0])
    assert np.array_equal(views[0], prepare_pixels(image, preprocessing))  # val's centre crop


def test_tta_averages_the_views_probabilities(
    trained: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    run, data = trained
    loaded = load_run_model(run)
    paths = sorted((data / "val" / "circles").iterdir())[:3]
    predictions = predict_with_torch(loaded, paths, top_k=3, tta=True)
    network = PixelClassifier(loaded.model, loaded.preprocessing).eval()
    with torch.inference_mode():
        for path, prediction in zip(paths, predictions, strict=True):
            views = torch.from_numpy(tta_pixels(load_rgb_image(path), loaded.preprocessing))
            mean = torch.softmax(network(views), dim=1).mean(dim=0)
            for name, probability in prediction.top:
                assert probability == pytest.approx(
                    float(mean[loaded.class_names.index(name)]), abs=1e-5
                )
    capsys.readouterr()
    assert main(["evaluate", str(run), str(data / "val"), "--tta", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["images"] == 18
