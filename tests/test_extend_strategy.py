"""A new strategy is one registration, from outside tlvision: nearest-centroid, declared here,
trains a head from the class means of the frozen body's cached codes, and goes through the
command line, the API, predict, export and the report, with no tlvision file touched."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

import tlvision
from tlvision.cli import main
from tlvision.codes.cache import FeatureCache
from tlvision.codes.split_codes import extract_split_codes
from tlvision.models.network import install_head
from tlvision.runs.writer import start_metrics
from tlvision.training.finish import finish_run, record_epoch
from tlvision.training.run_setup import Log, RunSetup
from tlvision.training.strategy import STRATEGIES, Strategy

NAME = "nearest-centroid"


def centroid_head(codes: np.ndarray, labels: np.ndarray, classes: int) -> nn.Linear:
    """Logits x.c - |c|^2/2 per class mean c: the largest is the nearest mean (Euclidean)."""
    means = np.stack([codes[labels == label].mean(axis=0) for label in range(classes)])
    layer = nn.Linear(codes.shape[1], classes)
    with torch.no_grad():
        layer.weight.copy_(torch.from_numpy(means))
        layer.bias.copy_(torch.from_numpy(-0.5 * (means**2).sum(axis=1)))
    return layer


def train(setup: RunSetup, model: nn.Module, log: Log, checkpoint: Any) -> dict[str, Any]:
    config = setup.config
    cache = None if config.no_cache else FeatureCache(config.cache_dir, log=log)
    codes = extract_split_codes(
        model, setup.backbone, setup.splits, weights=setup.weights.label,
        preprocessing=setup.preprocessing, cache=cache, device=setup.device, log=log,
    )[None]  # fmt: skip
    classes = len(setup.splits.class_names)
    layer = centroid_head(np.asarray(codes.train_views[0]), codes.train_labels, classes)
    install_head(model, setup.backbone, layer)
    with torch.no_grad():
        predicted = layer(torch.from_numpy(np.array(codes.val))).argmax(dim=1).numpy()
    start_metrics(config.out_dir)
    record_epoch(setup, {"epoch": 1, "val_acc": float(np.mean(predicted == codes.val_labels))})
    return finish_run(setup, model, log, seconds=0.0, skipped=set(), extra={})


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two classes, 12 train and 8 val images each: enough for the export's parity check."""
    from conftest import write_dataset

    return write_dataset(tmp_path_factory.mktemp("data"), per_class={"train": 12, "val": 8})


@pytest.fixture(scope="module")
def registered() -> Iterator[None]:
    STRATEGIES.register(
        NAME,
        Strategy(
            name=NAME, help="a head at the class means of the frozen body's codes",
            frozen_body=True, default_epochs=1, default_views=0, options=(), train=train,
        ),
    )  # fmt: skip
    yield
    STRATEGIES.unregister(NAME)


def test_trains_from_the_command_line_and_the_api(
    registered: None, dataset: Path, tmp_path: Path
) -> None:
    out = tmp_path / "cli-run"
    arguments = ["train", str(dataset), "--strategy", NAME, "--out", str(out)]
    assert main([*arguments, "--cache-dir", str(tmp_path / "cache"), "--workers", "0"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["strategy"] == NAME and summary["final_val_acc"] == 1.0  # colours: separable
    assert json.loads((out / "model.json").read_text())["body"] == "frozen"
    report = (out / "report.html").read_text()  # written at the end, as for every strategy
    assert f"--strategy {NAME}" in report and "cached codes" in report

    run = tlvision.train(
        dataset, strategy=NAME, out=tmp_path / "api-run", cache_dir=tmp_path / "cache",
        workers=0,
    )  # fmt: skip
    images = sorted((dataset / "val" / "squares").iterdir())
    assert [p.top[0][0] for p in run.predict(images)] == ["squares"] * len(images)
    assert run.evaluate(dataset / "val", device="cpu").accuracy == 1.0
    exported = run.export("onnx")
    assert exported.is_file() and run.predict(images, runtime="onnx")[0].top[0][0] == "squares"


def test_options_it_does_not_take_and_lr_find_are_refused(
    registered: None, dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    capsys.readouterr()
    out = ["--out", str(tmp_path / "run")]
    assert main(["train", str(dataset), "--strategy", NAME, "--stage", "stage3", *out]) == 2
    assert f"--stage applies to --strategy linear-probe, not {NAME}" in capsys.readouterr().err
    assert main(["lr-find", str(dataset), "--strategy", NAME]) == 2
    assert f"--strategy {NAME} has no learning rate to find" in capsys.readouterr().err


def test_help_describes_it(registered: None, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    # argparse wraps the lines, at spaces and hyphens: compare without the whitespace
    text = "".join(capsys.readouterr().out.split())
    for line in (f"{NAME}: a head at the class means of the frozen body's codes",
                 "finetune: the stages after --freeze-until and the head train"):  # fmt: skip
        assert "".join(line.split()) in text
