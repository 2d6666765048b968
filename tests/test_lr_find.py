"""The learning-rate range test: the ramp and stopping rule, and lr-find on cached codes."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tlvision.cli import main
from tlvision.report.plots import lr_find_plot
from tlvision.training.lr_find import DIVERGENCE, ramp, run_range_test


def test_range_test_stops_at_divergence_and_suggests_below_the_minimum() -> None:
    """A loss that falls until 1e-2 and then explodes: the smoothed loss is lowest at the last
    rate below 1e-2, the suggestion is that rate / 10, and the test stops at the first step whose
    smoothed loss passes DIVERGENCE times the lowest."""
    rates = ramp(1e-6, 10.0, 200)

    def step(rate: float) -> float:
        return 1.0 + (math.log10(rate) + 2) ** 2 if rate < 1e-2 else math.exp(400 * rate)

    result = run_range_test(step, rates, "codes")
    assert result.diverged and len(result.rates) < len(rates)
    assert result.rates == [float(rate) for rate in rates[: len(result.rates)]]
    assert result.raw_losses == [step(rate) for rate in result.rates]
    last_below = int(np.flatnonzero(rates < 1e-2)[-1])
    assert int(np.argmin(result.losses)) == last_below
    assert result.suggested == pytest.approx(rates[last_below] / 10)
    # stopped at the first crossing of the rule, not before and not after
    assert result.losses[-1] > DIVERGENCE * min(result.losses)
    assert max(result.losses[last_below:-1]) <= DIVERGENCE * min(result.losses)
    assert result.rates[-1] > 1e-2


def check_plot(png: Path) -> None:
    """A PNG (decoded with PIL) of the plot's size, with the loss curve across the whole width
    (matplotlib's blue) and the suggested rate's vertical dashed line (its red)."""
    with Image.open(png) as image:
        assert image.format == "PNG"
        # 6 x 4 inches at 80 dpi, trimmed to what is drawn (bbox_inches="tight"): 489 x 329 here
        assert 440 <= image.width <= 540 and 290 <= image.height <= 370, image.size
        pixels = np.asarray(image.convert("RGB")).astype(int)
    red, green, blue = pixels[..., 0], pixels[..., 1], pixels[..., 2]
    curve = (blue > 140) & (red < 110) & (green < 160)
    line = (red > 180) & (green < 110) & (blue < 110)
    assert curve.any(axis=0).sum() > 0.6 * image.width  # columns the curve passes through
    assert np.bincount(np.nonzero(line)[1]).max() > 0.3 * image.height


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
    assert result["route"] == "codes" and result["plot"] == str(plot)
    # the default ramp (1e-6 to 1, 300 steps on codes), as far as it went
    steps = result["steps"]
    assert result["rates"] == pytest.approx(list(ramp(1e-6, 1.0, 300)[:steps]), rel=1e-12)
    assert len(result["smoothed_losses"]) == len(result["raw_losses"]) == steps
    assert result["diverged"] == (steps < 300) and steps > 10
    assert result["smoothed_losses"][0] == pytest.approx(result["raw_losses"][0])
    lowest = int(np.argmin(result["smoothed_losses"]))
    assert result["suggested_lr"] == max(1e-6, result["rates"][lowest] / 10)
    check_plot(plot)


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
    lowest = int(np.argmin(found["smoothed_losses"]))
    assert found["suggested_lr"] == max(found["rates"][0], found["rates"][lowest] / 10)
    # the plot kept beside it draws these numbers: the same PNG as plotting them now
    plot = run / "lr_find.png"
    assert plot.read_bytes() == lr_find_plot(
        found["rates"], found["smoothed_losses"], found["suggested_lr"]
    )
    check_plot(plot)
