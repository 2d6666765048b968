"""The training loop on small synthetic datasets: the run directory and what it promises."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from tlvision.config import TrainConfig
from tlvision.errors import UserError
from tlvision.inference.evaluation import evaluate_run
from tlvision.runs.reader import load_run_model
from tlvision.training.fit import fit


def small_config(data: Path, out: Path, **overrides: object) -> TrainConfig:
    settings: dict[str, object] = {
        "backbone": "resnet18",
        "weights": "none",
        "input_size": 48,
        "epochs": 3,
        "batch_size": 8,
        "learning_rate": 0.05,
        "num_workers": 0,
        "device": "cpu",
    }
    settings.update(overrides)
    return TrainConfig(data_dir=data, out_dir=out, **settings)  # type: ignore[arg-type]


def test_fit_writes_a_complete_run_directory(tiny_dataset: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    summary = fit(small_config(tiny_dataset, out, strategy="finetune"), log=lambda _: None)

    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [record["epoch"] for record in records] == [1, 2, 3]
    for record in records:
        assert {"train_loss", "train_acc", "val_loss", "val_acc", "lr", "seconds"} <= set(record)
    on_disk = json.loads((out / "summary.json").read_text())
    assert on_disk == json.loads(json.dumps(summary))
    best = max(records, key=lambda record: record["val_acc"])
    assert summary["best_val_acc"] == best["val_acc"]
    assert summary["best_epoch"] == records.index(best) + 1
    assert summary["strategy"] == "finetune" and summary["backbone"] == "resnet18"

    metadata = json.loads((out / "model.json").read_text())
    assert metadata["classes"] == ["circles", "squares"]
    assert metadata["backbone"] == "resnet18" and metadata["weights"] == "none"
    assert metadata["preprocessing"]["crop_size"] == 48
    assert metadata["config"]["strategy"] == "finetune"
    assert not any(path.suffix in {".pt", ".pth", ".pkl"} for path in out.iterdir())

    # The saved model is the best epoch's, not the last one's: it scores best_val_acc on val.
    report = evaluate_run(out, tiny_dataset / "val", device=torch.device("cpu"))
    assert report.accuracy == pytest.approx(summary["best_val_acc"])


def test_same_seed_same_results(tiny_dataset: Path, tmp_path: Path) -> None:
    first = fit(small_config(tiny_dataset, tmp_path / "a", epochs=2), log=lambda _: None)
    second = fit(small_config(tiny_dataset, tmp_path / "b", epochs=2), log=lambda _: None)
    lines_a = (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()
    lines_b = (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()
    for a, b in zip(lines_a, lines_b, strict=True):
        record_a, record_b = json.loads(a), json.loads(b)
        for key in ("train_loss", "val_loss", "val_acc"):
            assert record_a[key] == record_b[key]
    assert first["best_val_acc"] == second["best_val_acc"]


def test_step_schedule_lowers_the_rate_every_step_epochs(
    tiny_dataset: Path, tmp_path: Path
) -> None:
    config = small_config(
        tiny_dataset, tmp_path / "run", epochs=3, step_epochs=1, learning_rate=0.01
    )
    fit(config, log=lambda _: None)
    rates = [
        json.loads(line)["lr"]
        for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    ]
    assert rates == pytest.approx([0.01, 0.001, 0.0001])


def test_a_run_is_never_overwritten_without_overwrite(tiny_dataset: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    fit(small_config(tiny_dataset, out, epochs=1), log=lambda _: None)
    before = (out / "model.safetensors").read_bytes()
    with pytest.raises(UserError, match="--overwrite"):
        fit(small_config(tiny_dataset, out, epochs=1, seed=5), log=lambda _: None)
    assert (out / "model.safetensors").read_bytes() == before
    fit(small_config(tiny_dataset, out, epochs=1, seed=5, overwrite=True), log=lambda _: None)
    # --overwrite never deletes a folder that is not a run.
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "thesis.tex").write_text("years of work")
    with pytest.raises(UserError):
        fit(small_config(tiny_dataset, precious, overwrite=True), log=lambda _: None)
    assert (precious / "thesis.tex").read_text() == "years of work"


def test_load_run_model_refuses_a_damaged_file(tiny_dataset: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    fit(small_config(tiny_dataset, out, epochs=1), log=lambda _: None)
    assert load_run_model(out).class_names == ("circles", "squares")
    weights = out / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(UserError, match=str(weights)):
        load_run_model(out)


@pytest.mark.parametrize(
    ("stage", "head"), [("stage2", "logreg"), ("stage3", "linear"), (None, "svm")]
)
def test_linear_probe_models_predict_through_the_usual_commands(
    tiny_dataset: Path, tmp_path: Path, stage: str | None, head: str
) -> None:
    out = tmp_path / "probe"
    config = small_config(
        tiny_dataset, out, backbone="mobilenet_v2", strategy="linear-probe", stage=stage, head=head
    )
    summary = fit(config, log=lambda _: None)
    metadata = json.loads((out / "model.json").read_text())
    assert (metadata["stage"], metadata["head"]) == (stage, head)
    # The saved model (the body cut at the stage plus the head) scores what training measured.
    report = evaluate_run(out, tiny_dataset / "val", device=torch.device("cpu"))
    assert report.accuracy == pytest.approx(summary["best_val_acc"])


def test_feature_extract_reuses_cached_codes(tiny_dataset: Path, tmp_path: Path) -> None:
    messages: list[str] = []
    cache = tmp_path / "codes"
    first = fit(small_config(tiny_dataset, tmp_path / "a", cache_dir=cache), log=messages.append)
    assert not any("reused" in message for message in messages)
    messages.clear()
    second = fit(small_config(tiny_dataset, tmp_path / "b", cache_dir=cache), log=messages.append)
    assert any("reused" in message for message in messages)
    assert first["best_val_acc"] == second["best_val_acc"]
    assert (tmp_path / "a" / "metrics.jsonl").read_text().count("\n") == 3


def test_a_test_split_is_scored_once_at_the_end_and_leads_the_summary(
    dataset_factory: Any, tmp_path: Path
) -> None:
    data = dataset_factory(per_class={"train": 8, "val": 4, "test": 6})
    summary = fit(small_config(data, tmp_path / "run"), log=lambda _: None)
    on_test = evaluate_run(tmp_path / "run", data / "test", device=torch.device("cpu"))
    assert next(iter(summary)) == "test_acc"  # the number the summary leads with
    assert (summary["test_acc"], summary["test_images"]) == (on_test.accuracy, 12)
    assert summary["val_images"] == 8  # test/ is neither trained nor validated on

    (data / "test" / "circles").rename(data / "test" / "triangles")  # a class the model lacks
    summary = fit(small_config(data, tmp_path / "run", overwrite=True), log=lambda _: None)
    assert "test_acc" not in summary and "triangles" in summary["test_error"]
    assert load_run_model(tmp_path / "run").class_names == ("circles", "squares")
