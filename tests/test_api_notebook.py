"""The Python API as notebook users meet it (issue 26): lr="find", the report written as the
command writes it, lr_find and compare, readable results, scikit-learn's predict_proba, the
notebook helpers and tqdm without ipywidgets."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import write_dataset

import tlvision

OPTIONS: dict[str, Any] = {
    "input_size": 64, "epochs": 3, "batch_size": 4, "no_cache": True, "workers": 0,
    "device": "cpu",
}  # fmt: skip


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_dataset(tmp_path_factory.mktemp("notebook") / "data")


@pytest.fixture(scope="module")
def found_run(data: Path) -> tlvision.Run:
    """Trained as a notebook would: lr="find", the report written by train itself."""
    return tlvision.train(data, out=data.parent / "found", lr="find", **OPTIONS)


@pytest.fixture(scope="module")
def plain_run(data: Path) -> tlvision.Run:
    return tlvision.train(data, out=data.parent / "plain", no_report=True, **OPTIONS)


def test_train_with_lr_find_trains_at_the_suggestion_and_writes_the_report(
    found_run: tlvision.Run,
) -> None:
    run_dir = found_run.run_dir
    suggested = json.loads((run_dir / "lr_find.json").read_text())["suggested_lr"]
    assert found_run.model_info["config"]["learning_rate"] == pytest.approx(suggested)
    assert (run_dir / "lr_find.png").read_bytes().startswith(b"\x89PNG")
    page = (run_dir / "report.html").read_text()
    assert "tlvision report" in page and "circles" in page


def test_no_report_is_accepted_and_writes_none(plain_run: tlvision.Run) -> None:
    assert (plain_run.run_dir / "summary.json").is_file()
    assert not (plain_run.run_dir / "report.html").exists()


def test_lr_find_and_compare_are_in_the_api(
    data: Path, found_run: tlvision.Run, plain_run: tlvision.Run, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    monkeypatch.chdir(tmp_path)
    test = tlvision.lr_find(data, steps=30, **OPTIONS)
    assert 1e-6 <= test.suggested_lr <= 1.0 and test.route == "codes"
    assert len(test.to_json()["rates"]) == 30 and "suggested --lr" in str(test)
    comparison = tlvision.compare([found_run.run_dir, plain_run.run_dir])
    assert [row["run"] for row in comparison.rows] == [str(found_run.run_dir),
                                                       str(plain_run.run_dir)]  # fmt: skip
    assert str(plain_run.run_dir) in str(comparison)
    assert list(tmp_path.iterdir()) == []  # nothing written unasked (no compare.html, no plot)
    page = tmp_path / "compare.html"
    tlvision.compare([found_run.run_dir], html=page)
    assert page.is_file()


def test_lr_find_asks_for_a_strategy_with_auto(data: Path) -> None:
    with pytest.raises(tlvision.UserError, match="needs a strategy"):
        tlvision.train(data, lr="find", strategy="auto", **OPTIONS)


def test_evaluation_prints_as_the_command_does(plain_run: tlvision.Run, data: Path) -> None:
    evaluation = plain_run.evaluate(data / "val", device="cpu")
    text = str(evaluation)
    assert text == evaluation.to_text() and text.startswith("accuracy ")
    assert "confusion matrix" in text and "array(" not in text
    assert "array(" not in repr(evaluation) and "accuracy=" in repr(evaluation)


def test_prediction_label_probability_and_predict_proba(
    plain_run: tlvision.Run, data: Path, tmp_path: Path
) -> None:
    images = sorted((data / "val" / "squares").iterdir())[:3]
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not an image")
    predictions = plain_run.predict([*images, broken], top_k=2, device="cpu")
    probabilities = plain_run.predict_proba([*images, broken], device="cpu")
    assert probabilities.shape == (4, len(plain_run.classes))
    assert np.isnan(probabilities[3]).all() and predictions[3].label is None
    for prediction, row in zip(predictions[:3], probabilities[:3], strict=True):
        assert prediction.label == prediction.top[0][0]
        assert prediction.probability == prediction.top[0][1]
        assert plain_run.classes[int(row.argmax())] == prediction.label
        assert float(row.max()) == pytest.approx(prediction.probability, abs=1e-6)
        assert float(row.sum()) == pytest.approx(1.0, abs=1e-5)


def test_class_maps_top_has_the_shape_of_prediction_top(
    plain_run: tlvision.Run, data: Path
) -> None:
    image = next(iter(sorted((data / "val" / "circles").iterdir())))
    top = plain_run.class_maps(image).top(2)
    predicted = plain_run.predict(image, top_k=2, device="cpu")[0].top
    assert type(top) is type(predicted) and len(top) == len(predicted) == 2
    for (name, probability), (other_name, other) in zip(top, predicted, strict=True):
        assert isinstance(name, str) and isinstance(probability, float)
        assert isinstance(other_name, str) and isinstance(other, float)
    assert {name for name, _ in top} == set(plain_run.classes)


def test_top_losses_and_confusion_for_notebooks(plain_run: tlvision.Run, data: Path) -> None:
    losses = plain_run.top_losses(3, device="cpu")
    assert len(losses) == 3
    values = [row.loss for row in losses]
    assert values == sorted(values, reverse=True)
    for row in losses:  # the loss is -log p(true class) of the image, as predict reads it
        probabilities = plain_run.predict_proba(row.path, device="cpu")[0]
        true = plain_run.classes.index(row.actual)
        assert row.loss == pytest.approx(-math.log(float(probabilities[true])), rel=1e-3, abs=1e-4)
        assert row.predicted == plain_run.classes[int(probabilities.argmax())]
    html = losses._repr_html_()
    assert html.count("<img") == 3 and losses[0].path.name in html
    assert str(losses[0].path) in str(losses)
    figure = plain_run.plot_confusion(device="cpu")
    assert figure._repr_png_().startswith(b"\x89PNG")


def test_inline_report(found_run: tlvision.Run, plain_run: tlvision.Run) -> None:
    html = found_run._repr_html_()
    assert "<details><summary>report.html</summary><iframe srcdoc=" in html
    assert "&lt;!DOCTYPE html&gt;" in html  # the page itself, escaped into the attribute
    assert "iframe" not in plain_run._repr_html_()  # no report written
    inline = plain_run.inline_report(device="cpu")
    assert inline.path == plain_run.run_dir / "report.html" and inline.path.is_file()
    assert inline._repr_html_().startswith("<iframe srcdoc=")


# A Jupyter kernel as tqdm.autonotebook recognises one, with ipywidgets not installed.
NOTEBOOK_WITHOUT_WIDGETS = """
import sys, types, warnings
ipython = types.ModuleType("IPython")
ipython.get_ipython = lambda: types.SimpleNamespace(config={"IPKernelApp": {}})
sys.modules["IPython"] = ipython
sys.modules["ipywidgets"] = None
warnings.simplefilter("error")
from tlvision.progress import progress_bar, showing_progress
with showing_progress(True):
    bar = progress_bar(range(3), desc="test")
    print(type(bar).__module__, sum(bar))
"""


def test_no_iprogress_warning_without_ipywidgets() -> None:
    source = str(Path(tlvision.__file__).resolve().parents[1])
    environment = {**os.environ, "PYTHONPATH": source}
    done = subprocess.run(
        [sys.executable, "-c", NOTEBOOK_WITHOUT_WIDGETS], capture_output=True, text=True,
        env=environment, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert "IProgress" not in done.stderr
    assert done.stdout.split() == ["tqdm.std", "3"]
