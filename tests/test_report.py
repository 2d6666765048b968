"""The run report in a real browser, its numbers against evaluate's, compare and TTA.

One small real run (feature-extract, real mobilenet_v2 weights, three classes, one with HTML
characters in its name) trained through the CLI, which writes report.html at the end.
"""

from __future__ import annotations

import base64
import contextlib
import html
import io
import json
import re
import shlex
import shutil
from html.parser import HTMLParser
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
BROWSER_WIDTH = 1280
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
            args=CHROMIUM_FLAGS, headless=True, viewport={"width": BROWSER_WIDTH, "height": 900},
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


class PageSource(HTMLParser):
    """What a page's HTML source holds: its tables by id (the cells' text, unescaped), the
    top-loss figures' data attributes and every embedded PNG."""

    def __init__(self, source: str) -> None:
        super().__init__()
        self.tables: dict[str, list[list[str]]] = {}
        self.losses: list[tuple[str, float]] = []
        self.pngs: list[bytes] = []
        self.jpegs: list[bytes] = []
        self._table: str | None = None
        self._cell: list[str] | None = None
        self.feed(source)
        self.close()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        if tag == "table":
            self._table = values.get("id") or ""
            self.tables[self._table] = []
        elif tag == "tr" and self._table is not None:
            self.tables[self._table].append([])
        elif tag in ("td", "th") and self._table is not None:
            self._cell = []
        elif tag == "figure" and "top-loss" in (values.get("class") or "").split():
            self.losses.append((values["data-path"] or "", float(values["data-loss"] or "nan")))
        elif tag == "img":
            source = values.get("src") or ""
            if source.startswith(JPEG_URI):  # the top losses' photos
                self.jpegs.append(base64.b64decode(source.removeprefix(JPEG_URI)))
                return
            assert source.startswith(PNG_URI), source[:40]  # self-contained: nothing to fetch
            self.pngs.append(base64.b64decode(source.removeprefix(PNG_URI)))

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th") and self._table is not None and self._cell is not None:
            self.tables[self._table][-1].append("".join(self._cell))
            self._cell = None
        elif tag == "table":
            self._table = None

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)


PNG_URI = "data:image/png;base64,"
JPEG_URI = "data:image/jpeg;base64,"


def decoded_sizes(pngs: list[bytes]) -> list[tuple[int, int]]:
    sizes = []
    for png in pngs:
        with Image.open(io.BytesIO(png)) as image:
            assert image.format == "PNG"
            image.load()  # the whole image decodes, not just its header
            sizes.append(image.size)
    return sizes


def test_report_holds_the_runs_numbers_evaluates_matrix_and_the_top_losses(
    trained: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    """report.html as train wrote it, read from its source: no browser needed."""
    run, data = trained
    source = (run / "report.html").read_text()
    page = PageSource(source)
    assert ODD_CLASS not in source and html.escape(ODD_CLASS) in source  # escaped

    summary = json.loads((run / "summary.json").read_text())
    facts = dict(tuple(row) for row in page.tables[""] if len(row) == 2)
    assert facts["best val accuracy (chosen on val)"] == f"{summary['best_val_acc']:.4f}"
    assert facts["final epoch val accuracy"] == f"{summary['final_val_acc']:.4f}"
    assert facts["best epoch (its weights are saved)"] == str(summary["best_epoch"])
    assert facts["epochs"] == "2" and facts["strategy"] == "feature-extract"
    # (train counts the files found, the unreadable empty.jpg too: not checked here)
    val_sizes = [(row[0], row[2]) for row in page.tables["dataset-sizes"][1:]]
    assert val_sizes == [("circles", "6"), ("squares", "6"), (ODD_CLASS, "6"), ("all", "18")]
    assert summary["val_images"] == 18

    capsys.readouterr()
    assert main(["evaluate", str(run), str(data / "val"), "--json"]) == 0
    evaluated = json.loads(capsys.readouterr().out)
    confusion = page.tables["confusion"]
    assert confusion[0] == ["true \\ predicted", *evaluated["classes"]]
    assert [[int(count) for count in row[1:]] for row in confusion[1:]] == evaluated[
        "confusion_matrix"
    ]
    assert f"Val accuracy {evaluated['accuracy']:.4f} on 18 images" in source
    assert any(row[1].endswith("empty.jpg") for row in page.tables["check-problems"][1:])

    losses = independent_losses(run, data)
    expected = sorted(losses, key=lambda path: -losses[path])[:TOP_LOSSES]
    shown = [path for path, _loss in page.losses]
    assert set(shown) == set(expected)
    assert shown == sorted(shown, key=lambda path: -losses[path])
    for path, loss in page.losses:
        assert loss == pytest.approx(losses[path], abs=1e-3)

    # curves, confusion heat map, one overlay per top loss (at its image's size), reliability,
    # the val images' out-of-distribution scores
    curves, heat_map, *overlays, reliability, val_scores = decoded_sizes(page.pngs)
    figures = (curves, heat_map, reliability, val_scores)
    assert all(width > 200 and height > 100 for width, height in figures)
    assert len(overlays) == len(page.losses) == TOP_LOSSES
    for (path, _loss), size in zip(page.losses, overlays, strict=True):
        with Image.open(path) as image:
            assert size == image.size


def test_report_opens_in_a_browser_and_matches_evaluate(
    trained: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """What only a browser shows: no script or console errors, every image drawn, the class
    names as typed, the confusion matrix as rendered, and a screenshot of it all."""
    run, data = trained
    found = open_in_browser(run / "report.html", tmp_path / "report.png")
    assert found["errors"] == []
    # the figures (the val scores' histogram among them), and each top loss's photo and map
    assert len(found["widths"]) == 4 + 2 * TOP_LOSSES and all(found["widths"])
    for name in ("circles", "squares", ODD_CLASS):
        assert name in found["text"]
    assert "Dataset problems" in found["text"] and "empty.jpg" in found["text"]

    capsys.readouterr()
    assert main(["evaluate", str(run), str(data / "val"), "--json"]) == 0
    evaluated = json.loads(capsys.readouterr().out)
    assert found["confusion"] == evaluated["confusion_matrix"]
    assert [path for path, _loss in found["losses"]] == [
        path for path, _loss in PageSource((run / "report.html").read_text()).losses
    ]
    check_screenshot(tmp_path / "report.png")


def check_screenshot(path: Path) -> None:
    """A full-page screenshot: the browser's width, taller than one screen of figures and
    tables, and not blank (text, plots and photos: many colours, dark and light)."""
    with Image.open(path) as image:
        assert image.format == "PNG" and image.width == BROWSER_WIDTH and image.height > 900
        pixels = np.asarray(image.convert("L"))
    assert pixels.min() < 64 and pixels.max() > 192
    assert len(np.unique(pixels)) > 100


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


@pytest.fixture(scope="module")
def compared(
    trained: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, Path, list[dict[str, Any]]]:
    """(a linear-probe run beside `trained`'s, the compare page of both, compare's JSON rows)."""
    run, data = trained
    root = tmp_path_factory.mktemp("compare")
    probe, page = root / "probe", root / "compare.html"
    main(["train", str(data), "--strategy", "linear-probe", "--head", "logreg", "--input-size",
          "96", "--workers", "0", "--no-report", "--out", str(probe)])  # fmt: skip
    output = io.StringIO()
    with contextlib.redirect_stdout(output):
        assert main(["compare", str(run), str(probe), "--html", str(page), "--json"]) == 0
    return probe, page, json.loads(output.getvalue())


def test_compare_table_and_page(
    trained: tuple[Path, Path], compared: tuple[Path, Path, list[dict[str, Any]]]
) -> None:
    run, _data = trained
    probe, page, rows = compared
    assert [row["strategy"] for row in rows] == ["feature-extract", "linear-probe"]
    source = PageSource(page.read_text())
    table = source.tables["runs"]
    for row, shown, run_dir in zip(rows, table[1:], (run, probe), strict=True):
        summary = json.loads((run_dir / "summary.json").read_text())
        assert row["final_val_acc"] == summary["final_val_acc"]
        assert row["best_val_acc"] == summary["best_val_acc"]
        assert row["input_size"] == 96 and row["backbone"] == "mobilenet_v2"
        assert str(run_dir) in shown
        assert f"{summary['best_val_acc']:.4f}" in shown
        assert f"{summary['final_val_acc']:.4f}" in shown
    [(width, height)] = decoded_sizes(source.pngs)  # the overlaid val curves
    assert width > 300 and height > 150
    written = tlvision.load(probe).report()  # the API, on the logistic-regression run
    assert written == probe / "report.html"
    probe_page = PageSource(written.read_text())
    facts = dict(tuple(row) for row in probe_page.tables[""] if len(row) == 2)
    assert facts["strategy"] == "linear-probe" and facts["stage / head"] == "top / logreg"
    assert len(decoded_sizes(probe_page.pngs)) == 4 + TOP_LOSSES  # with the val scores


def test_compare_page_in_a_browser(
    compared: tuple[Path, Path, list[dict[str, Any]]], tmp_path: Path
) -> None:
    probe, page, _rows = compared
    found = open_in_browser(page, tmp_path / "compare.png")
    assert found["errors"] == [] and len(found["widths"]) == 1 and all(found["widths"])
    assert str(probe) in found["text"]


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
