"""What users tripped on in the report and compare page (issue 26), on real runs in a real
browser: the headline and the leak warning at the top, curves that mark the saved epoch, one-step
heads, calibration counts, top losses laid out photo beside map, compare's colours, columns,
links and where it writes; and the report's path staying free of scikit-learn's import.
"""

from __future__ import annotations

import contextlib
import io
import itertools
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import make_image, write_dataset
from matplotlib.colors import to_hex
from test_report import CHROMIUM, CHROMIUM_FLAGS, PageSource

from tlvision.cli import main
from tlvision.inference.evaluation import SamplePredictions, report_of
from tlvision.report.curves import (
    MIN_ACCURACY_SPAN,
    learning_curves_figure,
    overlaid_val_curves_figure,
    reliability_figure,
)
from tlvision.report.interpretation import calibration
from tlvision.report.top_losses import TOP_LOSSES

LONG_NAME = "a_very_long_file_name_without_any_space_that_a_camera_or_a_scraper_wrote" * 2


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A feature-extract run on data with a test split, long file names and one val image that
    is a copy of a train image (a leak), and a logistic-regression run beside it."""
    root = tmp_path_factory.mktemp("layout")
    classes = ("circles", "squares", "stripes")
    data = write_dataset(root / "data", classes=classes, per_class={"train": 6, "val": 6})
    for name in classes:  # a test split of images of its own (write_dataset's would be val's)
        (data / "test" / name).mkdir(parents=True)
        for index in range(3):
            make_image(name, 900 + index).save(data / "test" / name / f"{name}_{index}.jpg")
    for index, path in enumerate(sorted((data / "val").glob("*/*.jpg"))):
        path.rename(path.with_name(f"{LONG_NAME}_{index}.jpg"))
    shutil.copy(data / "train" / "circles" / "circles_0.jpg", data / "val" / "circles" / "leak.jpg")
    runs = {"data": data, "frozen": root / "runs" / "frozen", "logreg": root / "runs" / "logreg"}
    common = ["--input-size", "96", "--workers", "0"]
    assert main(["train", str(data), "--strategy", "feature-extract", "--epochs", "4",
                 "--lr", "0.003", *common, "--out", str(runs["frozen"])]) == 0  # fmt: skip
    assert main(["train", str(data), "--strategy", "linear-probe", "--head", "logreg",
                 *common, "--out", str(runs["logreg"])]) == 0  # fmt: skip
    return runs


def browse(page_path: Path, script: str, width: int = 1280) -> Any:
    """Load a page from disk in headless chromium and evaluate `script` on it."""
    sync_api = pytest.importorskip("playwright.sync_api")
    if not CHROMIUM.exists():
        pytest.skip("Debian's chromium is not installed at /usr/bin/chromium")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=CHROMIUM_FLAGS, headless=True
        )
        page = browser.new_page(viewport={"width": width, "height": 900})
        errors: list[str] = []
        page.on("console", lambda message: message.type == "error" and errors.append(message.text))
        page.goto(page_path.resolve().as_uri(), wait_until="load")
        found = page.evaluate(script)
        browser.close()
    assert errors == []
    return found


LAYOUT = """() => {
    const box = element => element.getBoundingClientRect();
    const firstSection = document.querySelector('h2');
    return {
        headline: document.querySelector('#headline')?.innerText ?? '',
        headlineTop: box(document.querySelector('#headline')).top,
        leakTop: document.querySelector('#leak-warning') ?
            box(document.querySelector('#leak-warning')).top : null,
        leakText: document.querySelector('#leak-warning')?.innerText ?? '',
        firstSectionTop: box(firstSection).top,
        figures: Array.from(document.querySelectorAll('figure.top-loss')).map(figure => {
            const [photo, map] = figure.querySelectorAll('img');
            const caption = figure.querySelector('figcaption');
            return {
                photo: [box(photo).left, box(photo).right, box(photo).top, photo.naturalWidth],
                map: [box(map).left, box(map).right, box(map).top, map.naturalWidth],
                figure: [box(figure).left, box(figure).right, box(figure).top,
                         box(figure).bottom],
                captionOverflows: caption.scrollWidth > caption.clientWidth + 1,
                caption: [box(caption).left, box(caption).right],
            };
        }),
        bins: Array.from(document.querySelectorAll('#calibration-bins tbody tr')).map(
            row => Number(row.cells[1].innerText)),
    };
}"""


def test_headline_and_leak_warning_lead_the_report(runs: dict[str, Path]) -> None:
    run = runs["frozen"]
    summary = json.loads((run / "summary.json").read_text())
    found = browse(run / "report.html", LAYOUT)
    assert found["headlineTop"] < found["firstSectionTop"]
    headline = found["headline"]
    assert f"{summary['test_acc']:.4f} on 9 images" in headline
    assert f"val accuracy, final epoch (4): {summary['final_val_acc']:.4f}" in headline
    assert (
        f"val accuracy, saved weights (epoch {summary['best_epoch']}, chosen on val): "
        f"{summary['best_val_acc']:.4f}" in headline
    )
    assert found["leakTop"] is not None and found["leakTop"] < found["firstSectionTop"]
    assert "Data leak: 1 held-out image" in found["leakText"] and "leak.jpg" in found["leakText"]


def test_top_losses_sit_photo_beside_map_and_captions_wrap(runs: dict[str, Path]) -> None:
    found = browse(runs["frozen"] / "report.html", LAYOUT)
    figures = found["figures"]
    assert len(figures) == TOP_LOSSES
    for figure in figures:
        photo, overlay = figure["photo"], figure["map"]
        assert photo[3] == overlay[3] == 48  # both at the image's own size
        assert photo[1] <= overlay[0] and photo[2] == overlay[2]  # side by side, same row
        assert not figure["captionOverflows"]
        left, right = figure["figure"][:2]
        assert left <= figure["caption"][0] and figure["caption"][1] <= right
    for first, second in itertools.pairwise(figures):  # no two figures overlap
        a, b = first["figure"], second["figure"]
        assert a[1] <= b[0] or b[1] <= a[0] or a[3] <= b[2] or b[3] <= a[2]
    # every val image is counted in a calibration bin
    assert sum(found["bins"]) == len(list((runs["data"] / "val").glob("*/*.jpg")))


def test_one_step_head_gets_its_panel_and_numbers(runs: dict[str, Path]) -> None:
    run = runs["logreg"]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["epochs"] == 1
    source = (run / "report.html").read_text()
    page = PageSource(source)
    facts = dict(tuple(row) for row in page.tables[""] if len(row) == 2)
    assert facts["epochs"] == "none: the head is fitted in one step"
    assert 'id="one-step"' in source and "final epoch" not in source
    assert f"fitted in one step, saved): <b>{summary['best_val_acc']:.4f}" in source


def test_learning_curves_mark_the_saved_epoch_on_whole_epochs() -> None:
    # 2 images of 153 moving (0.013) must stay a small step, not fill the panel
    metrics = [
        {"epoch": epoch, "train_loss": 0.3 - 0.01 * epoch, "val_loss": 0.2 + 0.001 * epoch,
         "train_acc": 0.9, "val_acc": acc, "lr": 0.01}
        for epoch, acc in enumerate([0.9608, 0.9673, 0.9542, 0.9608, 0.9542], start=1)
    ]  # fmt: skip
    figure = learning_curves_figure(metrics, saved_epoch=2)
    loss_panel, accuracy_panel, _rate_panel = figure.axes
    bottom, top = accuracy_panel.get_ylim()
    assert top - bottom >= MIN_ACCURACY_SPAN - 1e-9 and bottom <= 0.9542 and top >= 0.9673
    assert loss_panel.get_ylim()[0] == 0.0
    for panel in (loss_panel, accuracy_panel):
        saved = [line for line in panel.get_lines() if "saved weights" in line.get_label()]
        assert [list(line.get_xdata()) for line in saved] == [[2, 2]]
    figure.canvas.draw()  # the ticks as drawn: whole epochs only
    for panel in figure.axes:
        ticks = [t for t in panel.get_xticks() if panel.get_xlim()[0] <= t <= panel.get_xlim()[1]]
        assert ticks and all(float(tick).is_integer() for tick in ticks)


def test_reliability_dots_are_mean_confidence_and_bins_are_counted() -> None:
    rng = np.random.default_rng(0)
    probabilities = rng.dirichlet([1.0, 1.0, 1.0], size=60)
    labels = rng.integers(0, 3, size=60)
    result = calibration(probabilities, labels)
    figure = reliability_figure(result)
    [panel] = figure.axes
    [dots] = [line for line in panel.get_lines() if line.get_label() == "mean confidence"]
    filled = result.counts > 0
    centres = ((result.edges[:-1] + result.edges[1:]) / 2)[filled]
    np.testing.assert_allclose(dots.get_xdata(), centres)
    np.testing.assert_allclose(dots.get_ydata(), result.confidence[filled])  # not accuracy
    counts = sorted(int(text.get_text()) for text in panel.texts)
    assert counts == sorted(int(count) for count in result.counts[filled])


def test_compare_keeps_one_colour_per_run_when_one_has_no_val_loss() -> None:
    curve = [{"epoch": 1, "val_acc": 0.8, "val_loss": 0.5}, {"epoch": 2, "val_acc": 0.9,
                                                            "val_loss": 0.4}]  # fmt: skip
    runs = [("a", curve), ("logreg", [{"epoch": 1, "val_acc": 0.85}]), ("c", curve)]
    figure = overlaid_val_curves_figure(runs)
    accuracy_panel, loss_panel = figure.axes
    colour = {line.get_label(): to_hex(line.get_color()) for line in accuracy_panel.get_lines()}
    assert len(set(colour.values())) == 3
    for line in loss_panel.get_lines():
        assert to_hex(line.get_color()) == colour[line.get_label()]


def test_per_class_scores_and_confusion_match_scikit_learn() -> None:
    from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

    rng = np.random.default_rng(1)
    labels = rng.integers(0, 4, size=50)  # class 4 has no image; class 3 is never predicted
    predicted = np.where(rng.random(50) < 0.6, labels, rng.integers(0, 3, size=50))
    predicted[labels == 3] = 0
    probabilities = np.eye(5, dtype=np.float32)[predicted]
    samples = tuple((Path(f"{index}.png"), int(label)) for index, label in enumerate(labels))
    report = report_of(tuple("abcde"), SamplePredictions(samples, probabilities, ()))
    expected = confusion_matrix(labels, predicted, labels=range(5))
    np.testing.assert_array_equal(report.confusion, expected)
    precision, recall, f1, support = precision_recall_fscore_support(
        labels, predicted, labels=range(5), zero_division=0
    )
    rows = report.per_class()
    np.testing.assert_allclose([row["precision"] for row in rows], precision)
    np.testing.assert_allclose([row["recall"] for row in rows], recall)
    np.testing.assert_allclose([row["f1"] for row in rows], f1)
    assert [row["support"] for row in rows] == list(support)


def test_the_report_path_does_not_import_scikit_learn() -> None:
    """scikit-learn's import costs a warm run about a second; the report does not need it."""
    code = (
        "import sys, tlvision.report.page, tlvision.report.compare, tlvision.report.curves; "
        "sys.exit(int('sklearn' in sys.modules))"
    )
    environment = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1] / "src")}
    assert subprocess.run([sys.executable, "-c", code], env=environment).returncode == 0


def compare(*arguments: str) -> str:
    output = io.StringIO()
    with contextlib.redirect_stdout(output):
        assert main(["compare", *arguments]) == 0
    return output.getvalue()


def test_compare_writes_next_to_the_runs_never_over_a_file(
    runs: dict[str, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.chdir(tmp_path)
    frozen, logreg = str(runs["frozen"]), str(runs["logreg"])
    compare(frozen, logreg)
    page = runs["frozen"].parent / "compare.html"
    assert page.is_file() and not (tmp_path / "compare.html").exists()
    written = page.read_text()
    capsys.readouterr()
    assert main(["compare", frozen, logreg]) == 2  # one line, no traceback
    assert f"{page} already exists: pass --overwrite" in capsys.readouterr().err
    assert page.read_text() == written  # untouched
    (tmp_path / "mine.html").write_text("mine")
    assert main(["compare", frozen, "--out", str(tmp_path / "mine.html")]) == 2
    assert "mine.html already exists" in capsys.readouterr().err
    assert (tmp_path / "mine.html").read_text() == "mine"
    compare(frozen, logreg, "--overwrite")
    source = PageSource(page.read_text())
    header, *rows = source.tables["runs"]
    dataset = header.index("dataset")
    assert [row[dataset] for row in rows] == [os.path.normpath(runs["data"])] * 2
    options = source.tables["differing-options"]
    assert {"strategy", "head", "epochs"} <= set(options[0])
    found = browse(
        page,
        """() => Array.from(document.querySelectorAll('a.report-link')).map(
            link => link.href)""",
    )
    assert [Path(link.removeprefix("file://")) for link in found] == [
        runs["frozen"] / "report.html",
        runs["logreg"] / "report.html",
    ]
