"""Prediction and evaluation from a run directory alone."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from tlvision.checkpoint import load_run_model
from tlvision.cli import main
from tlvision.config import TrainConfig
from tlvision.evaluation import ClassificationReport
from tlvision.predict import predict_images
from tlvision.training import fit


@pytest.fixture
def trained_run(tiny_dataset: Path, tmp_path: Path) -> Path:
    out = tmp_path / "run"
    config = TrainConfig(
        data_dir=tiny_dataset,
        out_dir=out,
        backbone="mobilenet_v2",
        weights="none",
        strategy="finetune",
        input_size=48,
        epochs=2,
        batch_size=8,
        num_workers=0,
        device="cpu",
    )
    fit(config, log=lambda _: None)
    return out


def test_saved_model_predicts_like_the_trained_one(trained_run: Path, tiny_dataset: Path) -> None:
    loaded = load_run_model(trained_run)
    images = sorted((tiny_dataset / "val").rglob("*.jpg"))
    first = predict_images(loaded, images, top_k=2)
    again = predict_images(load_run_model(trained_run), images, top_k=2)
    assert [p.top for p in first] == [p.top for p in again]
    for prediction in first:
        assert len(prediction.top) == 2
        assert {name for name, _ in prediction.top} == {"circles", "squares"}
        assert sum(probability for _, probability in prediction.top) == pytest.approx(1.0, abs=1e-5)


def test_predict_json_names_classes_and_reports_unreadable_files(
    trained_run: Path, tiny_dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    broken = tmp_path / "broken.jpg"
    broken.write_text("not an image")
    good = tiny_dataset / "val" / "circles" / "circles_0.jpg"
    status = main(
        ["predict", str(trained_run), str(good), str(broken), "--json", "--device", "cpu"]
    )
    assert status == 1
    output = json.loads(capsys.readouterr().out)
    assert output[0]["path"] == str(good) and output[0]["class"] in {"circles", "squares"}
    assert "error" in output[1] and output[1]["path"] == str(broken)


def test_evaluate_json(
    trained_run: Path, tiny_dataset: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    status = main(
        ["evaluate", str(trained_run), str(tiny_dataset / "val"), "--json", "--device", "cpu"]
    )
    assert status == 0
    report = json.loads(capsys.readouterr().out)
    assert report["images"] == 8
    assert sum(map(sum, report["confusion_matrix"])) == 8
    assert [row["class"] for row in report["per_class"]] == ["circles", "squares"]


def test_classification_report_arithmetic() -> None:
    # 10 true circles: 8 right, 2 called squares; 5 true squares: 4 right, 1 called circles.
    report = ClassificationReport(("circles", "squares"), np.array([[8, 2], [1, 4]]))
    assert report.accuracy == pytest.approx(12 / 15)
    circles, squares = report.per_class()
    assert circles["precision"] == pytest.approx(8 / 9) and circles["recall"] == pytest.approx(0.8)
    assert squares["precision"] == pytest.approx(4 / 6) and squares["recall"] == pytest.approx(0.8)
    expected_f1 = 2 * (8 / 9) * 0.8 / (8 / 9 + 0.8)
    assert circles["f1"] == pytest.approx(expected_f1)
    assert "confusion matrix" in report.to_text()


@pytest.mark.slow
def test_predict_names_a_bee_on_the_reference_set(reference_data: Path, tmp_path: Path) -> None:
    out = tmp_path / "hymenoptera"
    config = TrainConfig(data_dir=reference_data, out_dir=out, epochs=2, device="cpu")
    summary = fit(config, log=lambda _: None)
    assert summary["best_val_acc"] >= 0.9
    bee = sorted((reference_data / "val" / "bees").iterdir())[0]
    prediction = predict_images(load_run_model(out), [bee], device=torch.device("cpu"))[0]
    assert prediction.top[0][0] == "bees"
