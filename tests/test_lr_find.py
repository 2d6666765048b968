"""The learning-rate range test: the ramp and stopping rule, and lr-find on cached codes."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tlvision.cli import main
from tlvision.training.lr_find import DIVERGENCE, ramp, run_range_test


def test_range_test_stops_at_divergence_and_suggests_below_the_minimum() -> None:
    """A loss that falls until 1e-2 and then explodes: the test stops, the suggestion is the
    lowest smoothed loss's rate / 10, inside the ramp."""
    rates = ramp(1e-6, 10.0, 200)

    def step(rate: float) -> float:
        return 1.0 + (math.log10(rate) + 2) ** 2 if rate < 1e-2 else math.exp(400 * rate)

    result = run_range_test(step, rates, "codes")
    assert result.diverged and len(result.rates) < len(rates)
    assert result.rates == [float(rate) for rate in rates[: len(result.rates)]]
    lowest = result.rates[int(np.argmin(result.losses))]
    assert result.suggested == pytest.approx(lowest / 10)
    assert rates[0] <= result.suggested <= 1e-2
    assert max(result.losses) > DIVERGENCE * min(result.losses) or not math.isfinite(
        result.raw_losses[-1]
    )


def test_lr_find_on_codes_json_and_plot(
    tiny_dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    plot = tmp_path / "lr.png"
    status = main(
        ["lr-find", str(tiny_dataset), "--strategy", "feature-extract", "--input-size", "96",
         "--workers", "0", "--plot", str(plot), "--json"]
    )  # fmt: skip
    assert status == 0
    result = json.loads(capsys.readouterr().out)  # stdout holds the JSON and nothing else
    assert result["route"] == "codes" and result["steps"] >= 10
    assert 1e-6 <= result["suggested_lr"] <= 1.0
    assert min(result["rates"]) <= result["suggested_lr"] <= max(result["rates"])
    with Image.open(plot) as image:
        assert image.format == "PNG" and image.width > 100


def test_train_lr_find_trains_at_the_suggested_rate(tiny_dataset: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    status = main(
        ["train", str(tiny_dataset), "--lr", "find", "--epochs", "2", "--input-size", "96",
         "--workers", "0", "--no-report", "--out", str(run)]
    )  # fmt: skip
    assert status == 0
    found = json.loads((run / "lr_find.json").read_text())
    config = json.loads((run / "model.json").read_text())["config"]
    assert config["learning_rate"] == found["suggested_lr"]
    assert (run / "lr_find.png").stat().st_size > 1000
