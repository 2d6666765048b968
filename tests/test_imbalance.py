"""Classes of very different sizes: balanced accuracy and macro F1 in the summary, --sampler
balanced on the fine-tuning route, and check's class-weight advice only where it matters."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
from conftest import write_dataset
from test_robustness import from_the_second_pass, metrics, press_ctrl_c

from tlvision.cli import main
from tlvision.config import TrainConfig
from tlvision.data.doctor import check_dataset
from tlvision.errors import UserError
from tlvision.inference.evaluation import classify_samples
from tlvision.inference.runtime import TorchClassifier
from tlvision.runs.reader import load_run_model, run_splits
from tlvision.training.fit import fit
from tlvision.training.sampling import balanced_sampler

pytestmark = pytest.mark.usefixtures("one_torch_thread")
FAST = ["--input-size", "48", "--batch-size", "8", "--workers", "0", "--device", "cpu"]


def imbalanced(root: Path, small: int = 3) -> Path:
    """circles 12 train images, squares `small` (4x at 3)."""
    data = write_dataset(root, per_class={"train": 12, "val": 4})
    for path in sorted((data / "train" / "squares").iterdir())[small:]:
        path.unlink()
    return data


def test_summary_leads_with_balanced_accuracy_on_imbalanced_data(tmp_path: Path) -> None:
    data = imbalanced(tmp_path / "data")
    config = TrainConfig(
        data_dir=data, out_dir=tmp_path / "run", no_cache=True, input_size=48, epochs=2,
        batch_size=8, num_workers=0, device="cpu",
    )  # fmt: skip
    summary = fit(config, log=lambda _: None)
    assert list(summary)[:3] == ["final_val_balanced_acc", "val_macro_f1", "class_size_ratio"]
    assert summary["class_size_ratio"] == 4.0
    assert 0.0 <= summary["final_val_balanced_acc"] <= 1.0


@pytest.mark.parametrize("stage", [None, "stage2"])
def test_a_frozen_run_scores_balance_on_its_head_codes_as_predict_would(
    tmp_path: Path, stage: str | None
) -> None:
    """The frozen routes take balanced accuracy from the head's val codes (no second pass of
    the body); the numbers are those of the saved model run on the val images."""
    from sklearn.metrics import balanced_accuracy_score, f1_score

    data = imbalanced(tmp_path / "data")
    lines: list[str] = []
    config = TrainConfig(
        data_dir=data, out_dir=tmp_path / "run", cache_dir=tmp_path / "cache", input_size=48,
        epochs=2, batch_size=8, num_workers=0, device="cpu",
        strategy="linear-probe" if stage else "feature-extract", stage=stage,
    )  # fmt: skip
    summary = fit(config, log=lines.append)
    assert any("on the head's val codes" in line for line in lines)
    loaded = load_run_model(tmp_path / "run")
    predictions = classify_samples(
        TorchClassifier(loaded), run_splits(loaded.metadata).samples["val"]
    )
    truth, predicted = predictions.labels, predictions.probabilities.argmax(axis=1)
    assert summary["final_val_balanced_acc"] == pytest.approx(
        balanced_accuracy_score(truth, predicted)
    )
    assert summary["val_macro_f1"] == pytest.approx(f1_score(truth, predicted, average="macro"))


def test_balanced_data_gets_no_balanced_fields(tmp_path: Path) -> None:
    data = write_dataset(tmp_path / "data", per_class={"train": 6, "val": 2})
    config = TrainConfig(
        data_dir=data, out_dir=tmp_path / "run", no_cache=True, input_size=48, epochs=1,
        batch_size=8, num_workers=0, device="cpu",
    )  # fmt: skip
    assert "final_val_balanced_acc" not in fit(config, log=lambda _: None)


def test_balanced_sampler_draws_classes_evenly_and_repeats_with_its_seed() -> None:
    import torch

    labels = [0] * 90 + [1] * 10
    sampler = balanced_sampler(labels, multi_label=False)
    sampler.generator = torch.Generator().manual_seed(5)
    first = list(sampler)
    drawn = Counter(labels[index] for index in first)
    assert len(first) == 100 and 35 <= drawn[1] <= 65  # about half, not a tenth
    sampler.generator = torch.Generator().manual_seed(5)
    assert list(sampler) == first
    with pytest.raises(UserError, match="single-label"):
        balanced_sampler(labels, multi_label=True)


def test_finetune_with_balanced_sampler_resumes_exactly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = imbalanced(tmp_path / "data")
    whole, stopped = tmp_path / "whole", tmp_path / "stopped"

    def arguments(out: Path) -> list[str]:
        return [
            "train", str(data), "--out", str(out), "--strategy", "finetune", "--backbone",
            "resnet18", "--weights", "none", "--epochs", "2", "--lr", "0.01", "--views", "0",
            "--sampler", "balanced", *FAST,
        ]  # fmt: skip

    assert main(arguments(whole)) == 0
    from_the_second_pass(monkeypatch, press_ctrl_c)
    assert main(arguments(stopped)) == 130
    monkeypatch.undo()
    assert main(["train", "--resume", str(stopped)]) == 0
    assert json.loads((whole / "model.json").read_text())["config"]["sampler"] == "balanced"
    for a, b in zip(metrics(stopped), metrics(whole), strict=True):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-6, abs=1e-7)
        assert a["train_acc"] == b["train_acc"]


def test_sampler_is_refused_where_nothing_reads_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = imbalanced(tmp_path / "data")
    status = main(["train", str(data), "--out", str(tmp_path / "r"), "--sampler", "balanced"])
    assert status == 2 and "--sampler applies to --strategy finetune" in capsys.readouterr().err


def test_check_suggests_class_weights_only_where_the_imbalance_matters(tmp_path: Path) -> None:
    nearly = write_dataset(tmp_path / "nearly", per_class={"train": 8, "val": 2})
    (nearly / "train" / "squares" / "squares_0.jpg").unlink()  # 8 against 7
    report = check_dataset(nearly, progress=False)
    assert report.suggested_class_weights is not None  # the numbers are still given in JSON
    assert "Suggested class weights" not in report.to_text()
    skewed = check_dataset(imbalanced(tmp_path / "skewed"), progress=False)
    assert "Suggested class weights (--class-weights auto)" in skewed.to_text()
    assert any(problem.kind == "class-imbalance" for problem in skewed.problems)
