"""Fine-tuning on multi-label data (BCE on the label table's rows), interrupted and resumed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from multilabel_data import write_multilabel_dataset
from test_robustness import FAST, from_the_second_pass, metrics, press_ctrl_c

from tlvision.cli import main
from tlvision.training.checkpoint import load_training_checkpoint

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _arguments(data: Path, out: Path) -> list[str]:
    return [
        "train", str(data), "--out", str(out), "--strategy", "finetune", "--backbone", "resnet18",
        "--epochs", "2", "--lr", "0.02", "--views", "0", "--class-weights", "auto", *FAST,
    ]  # fmt: skip


def test_a_multilabel_finetune_resumes_to_the_uninterrupted_results(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = write_multilabel_dataset(tmp_path / "data", repeats={"train": 1, "val": 1})
    whole, stopped = tmp_path / "whole", tmp_path / "stopped"
    assert main(_arguments(data, whole)) == 0
    from_the_second_pass(monkeypatch, press_ctrl_c)
    assert main(_arguments(data, stopped)) == 130
    monkeypatch.undo()
    assert load_training_checkpoint(stopped).epoch == 1
    assert main(["train", "--resume", str(stopped)]) == 0
    resumed, uninterrupted = metrics(stopped), metrics(whole)
    assert [record["epoch"] for record in resumed] == [1, 2]
    for a, b in zip(resumed, uninterrupted, strict=True):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-6, abs=1e-7)
        assert a["val_map"] == pytest.approx(b["val_map"], rel=1e-6)
    summary = json.loads((stopped / "summary.json").read_text())
    model = json.loads((stopped / "model.json").read_text())
    assert summary["task"] == model["task"] == "multi-label"
    assert summary["resumed_from_epoch"] == 1
    assert summary["thresholds"] == model["thresholds"]
    assert summary["thresholds"] == json.loads((whole / "summary.json").read_text())["thresholds"]
    assert summary["final_val_map"] == resumed[-1]["val_map"]


def test_a_multilabel_finetune_starts_its_head_on_the_codes(tmp_path: Path) -> None:
    """As the single-label route does: a BCE head on the kept views' top codes before the body
    trains (a random head at the body's gentle rate learned next to nothing)."""
    from tlvision.config import TrainConfig
    from tlvision.training.fit import fit

    data = write_multilabel_dataset(tmp_path / "data")
    messages: list[str] = []
    config = TrainConfig(
        data_dir=data, out_dir=tmp_path / "run", strategy="finetune", epochs=1, input_size=64,
        batch_size=8, num_workers=0, device="cpu", no_cache=True,
    )  # fmt: skip
    summary = fit(config, log=messages.append)
    started = [message for message in messages if message.startswith("head started")]
    assert len(started) == 1, messages
    assert "val mAP" in started[0]
    assert summary["final_val_map"] >= 0.9  # two coloured halves: plain for ImageNet codes
