"""Prediction and evaluation from a run directory alone, checked against the trained model."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from conftest import predict_with_torch
from torch import nn

from tlvision.cli import main
from tlvision.config import TrainConfig
from tlvision.data.images import load_rgb_image
from tlvision.data.transforms import build_transforms
from tlvision.inference.evaluation import ClassificationReport
from tlvision.runs.reader import load_run_model
from tlvision.training import finish as runs
from tlvision.training.fit import fit

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@dataclass(frozen=True)
class TrainedRun:
    run_dir: Path
    model: nn.Module  # the model in memory when training ended, as fit handed it to be saved
    classes: tuple[str, ...]

    def probabilities(self, paths: Sequence[Path]) -> torch.Tensor:
        """The in-memory model's class probabilities, through the preprocessing fit recorded."""
        preprocessing = load_run_model(self.run_dir).preprocessing
        transform = build_transforms(preprocessing)["val"]
        images = torch.stack([transform(load_rgb_image(path)) for path in paths])
        with torch.no_grad():
            return torch.softmax(self.model.eval()(images), dim=1)

    def expected_confusion(self, split_dir: Path) -> np.ndarray:
        """Rows: the true class (the folder's name), columns: the in-memory model's prediction."""
        matrix = np.zeros((len(self.classes), len(self.classes)), dtype=int)
        for folder in sorted(split_dir.iterdir()):
            predicted = self.probabilities(sorted(folder.iterdir())).argmax(dim=1)
            for column in predicted.tolist():
                matrix[self.classes.index(folder.name), column] += 1
        return matrix


def train(data: Path, out: Path, monkeypatch: pytest.MonkeyPatch) -> TrainedRun:
    """A short real run; the model fit saves is kept (the real save still runs).

    Pretrained mobilenet_v2 codes separate these colours perfectly (the test asserts it), so
    every image is predicted right and a wrong or shifted label would show in the counts.
    """
    kept: list[tuple[nn.Module, dict[str, Any]]] = []
    save = runs.save_run_model

    def keep_and_save(run_dir: Path, model: nn.Module, metadata: dict[str, Any]) -> None:
        kept.append((model, metadata))
        save(run_dir, model, metadata)

    monkeypatch.setattr(runs, "save_run_model", keep_and_save)
    config = TrainConfig(
        data_dir=data, out_dir=out, no_cache=True,
        input_size=48, epochs=5, batch_size=8, num_workers=0, device="cpu",
    )  # fmt: skip
    fit(config, log=lambda _: None)
    monkeypatch.undo()
    [(model, metadata)] = kept
    return TrainedRun(out, model, tuple(metadata["classes"]))


@pytest.fixture
def trained_run(tiny_dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> TrainedRun:
    return train(tiny_dataset, tmp_path / "run", monkeypatch)


def test_saved_model_predicts_like_the_trained_one(
    trained_run: TrainedRun, tiny_dataset: Path
) -> None:
    images = sorted((tiny_dataset / "val").rglob("*.jpg"))
    expected = trained_run.probabilities(images)
    predictions = predict_with_torch(load_run_model(trained_run.run_dir), images, top_k=2)
    for prediction, row in zip(predictions, expected, strict=True):
        order = row.argsort(descending=True).tolist()
        assert [name for name, _ in prediction.top] == [trained_run.classes[i] for i in order]
        assert [probability for _, probability in prediction.top] == pytest.approx(
            row[order].tolist(), abs=1e-5
        )


def test_predict_json_names_classes_and_reports_unreadable_files(
    trained_run: TrainedRun, tiny_dataset: Path, tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    broken = tmp_path / "broken.jpg"
    broken.write_text("not an image")
    good = tiny_dataset / "val" / "circles" / "circles_0.jpg"
    status = main(
        ["predict", str(trained_run.run_dir), str(good), str(broken), "--json", "--device", "cpu"]
    )
    assert status == 1
    output = json.loads(capsys.readouterr().out)
    [expected] = trained_run.probabilities([good])
    assert output[0]["path"] == str(good)
    assert output[0]["class"] == trained_run.classes[int(expected.argmax())]
    assert output[0]["probability"] == pytest.approx(float(expected.max()), abs=1e-5)
    assert "error" in output[1] and output[1]["path"] == str(broken)


def evaluate_json(run_dir: Path, split_dir: Path, capsys: pytest.CaptureFixture[str]) -> Any:
    status = main(["evaluate", str(run_dir), str(split_dir), "--json", "--device", "cpu"])
    assert status == 0
    return json.loads(capsys.readouterr().out)


def test_evaluate_json_counts_what_the_model_predicts(
    trained_run: TrainedRun, tiny_dataset: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    report = evaluate_json(trained_run.run_dir, tiny_dataset / "val", capsys)
    expected = trained_run.expected_confusion(tiny_dataset / "val")
    print("EXPECTED2", expected.tolist())
    assert report["confusion_matrix"] == expected.tolist()
    assert report["images"] == 8
    assert report["accuracy"] == pytest.approx(np.trace(expected) / 8)
    assert [(row["class"], row["support"]) for row in report["per_class"]] == [
        ("circles", 4),
        ("squares", 4),
    ]
    assert [row["recall"] for row in report["per_class"]] == pytest.approx(np.diag(expected) / 4)


def test_evaluate_maps_a_subset_of_classes_by_name(
    dataset_factory: Callable[..., Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    data = dataset_factory(classes=("circles", "squares", "stripes"))
    trained = train(data, tmp_path / "run", monkeypatch)
    # squares and stripes are folders 0 and 1 here but classes 1 and 2 of the model.
    subset = tmp_path / "subset"
    for name in ("stripes", "squares"):
        shutil.copytree(data / "val" / name, subset / name)
    report = evaluate_json(trained.run_dir, subset, capsys)
    expected = trained.expected_confusion(subset)
    print("EXPECTED3", expected.tolist())
    assert expected[0].sum() == 0 and expected[1:].sum() == 8
    assert report["classes"] == ["circles", "squares", "stripes"]
    assert report["confusion_matrix"] == expected.tolist()
    assert report["accuracy"] == pytest.approx(np.trace(expected) / 8)


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
    prediction = predict_with_torch(load_run_model(out), [bee], device=torch.device("cpu"))[0]
    assert prediction.top[0][0] == "bees"
