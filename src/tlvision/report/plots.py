"""The report's figures, drawn by matplotlib's Agg renderer into PNG bytes.

Figures are made with matplotlib.figure.Figure, not pyplot: no global figure state, no GUI
backend, safe to call from a server or a test. Every function takes plain numbers and returns
PNG bytes; report.py embeds them.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from tlvision.tables import printable

DPI = 80


def png_bytes(figure: Figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=DPI)  # every figure lays itself out (constrained)
    return buffer.getvalue()


def _heat_map(panel: Any, values: np.ndarray, names: Sequence[str], title: str, fmt: str) -> None:
    image = panel.imshow(values, cmap="Blues", vmin=0)
    panel.set_title(title)
    ticks = np.arange(len(names))
    panel.set_xticks(ticks, labels=list(names), rotation=45, ha="right")
    panel.set_yticks(ticks, labels=list(names))
    panel.set_xlabel("predicted class")
    panel.set_ylabel("true class")
    if len(names) <= 20:
        high = float(values.max()) if values.size else 0.0
        for (row, column), value in np.ndenumerate(values):
            colour = "white" if high and value > high / 2 else "black"
            panel.text(column, row, format(value, fmt), ha="center", va="center", color=colour)
    panel.figure.colorbar(image, ax=panel, fraction=0.046)


def confusion_heat_maps(confusion: np.ndarray, names: Sequence[str]) -> bytes:
    """Counts, and each row divided by its class's images (recall on the diagonal)."""
    side = max(4.0, 0.45 * len(names) + 2.5)
    figure = Figure(figsize=(2 * side + 1, side), layout="constrained")
    counts_panel, rates_panel = figure.subplots(1, 2)
    totals = confusion.sum(axis=1, keepdims=True)
    normalised = np.divide(confusion, totals, out=np.zeros(confusion.shape), where=totals > 0)
    names = [printable(name) for name in names]
    _heat_map(counts_panel, confusion, names, "counts", "d")
    _heat_map(rates_panel, normalised, names, "share of each true class", ".2f")
    return png_bytes(figure)


def _bars(panel: Any, labels: list[str], values: list[float], title: str) -> None:
    panel.bar(range(len(values)), values, color="tab:blue")
    panel.set_xticks(range(len(values)), labels=labels, rotation=30, ha="right")
    panel.set_title(title)
    panel.grid(axis="y", alpha=0.3)


def advice_evidence(evidence: dict[str, Any]) -> bytes:
    """Probe accuracy by stage, the learning curve, and the similarity signals against the
    thresholds the advisor compares them with (each signal divided by its threshold)."""
    figure = Figure(figsize=(13, 3.6), layout="constrained")
    probe_panel, curve_panel, signal_panel = figure.subplots(1, 3)
    probe = evidence.get("probe", {})
    _bars(
        probe_panel,
        list(probe),
        [float(v) for v in probe.values()],
        "probe accuracy (CV on train)",
    )
    probe_panel.set_ylim(0, 1)
    curve = evidence.get("learning_curve", {})
    shares = sorted(curve, key=float)
    curve_panel.plot([float(s) for s in shares], [curve[s] for s in shares], marker="o")
    curve_panel.set_title("learning curve (probe)")
    curve_panel.set_xlabel("share of the race's pool")
    curve_panel.set_ylabel("CV accuracy on train")
    curve_panel.grid(alpha=0.3)
    signals = advisor_signals(evidence)
    ratios = [max(value / threshold, RATIO_FLOOR) for _label, value, threshold, _met in signals]
    colours = ["tab:green" if met else "tab:orange" for *_rest, met in signals]
    signal_panel.bar(range(len(ratios)), ratios, color=colours)
    signal_panel.axhline(1.0, color="black", linestyle="--", linewidth=1)
    signal_panel.set_yscale("log")  # ratios of 0.02 and 20 both readable
    labels = [label for label, *_rest in signals]
    signal_panel.set_xticks(range(len(ratios)), labels=labels, rotation=30, ha="right")
    signal_panel.set_title("signal / threshold (green: the rule holds)")
    return png_bytes(figure)


RATIO_FLOOR = 0.01  # a signal of 0 (no gap) drawn at this height on the log axis


def advisor_signals(evidence: dict[str, Any]) -> list[tuple[str, float, float, bool]]:
    """(label with its rule, value, threshold, rule holds) for each signal the advisor votes
    with, read from advice.json's evidence as tlvision.advisor.decision.axes reads them."""
    thresholds = evidence.get("thresholds", {})
    size = evidence.get("size", {})
    fit = evidence.get("pretrained_fit", {})
    probe = evidence.get("probe", {})
    curve = evidence.get("learning_curve", {})
    shifts = fit.get("batchnorm_shift", {})
    early_stages = evidence.get("early_stages", ("stem", "stage1"))  # older advice: the names
    rows: list[tuple[str, Any, Any, str]] = [
        ("train images (small if <)", size.get("train_images"), thresholds.get("small_total"), "<"),
        ("median per class (small if <)", size.get("per_class_median"),
         thresholds.get("small_per_class"), "<"),
        ("ImageNet confidence (similar if >=)", fit.get("imagenet_confidence"),
         thresholds.get("similar_confidence"), ">="),
        ("early BN shift (similar if <=)",
         float(np.mean([shifts.get(name, 0.0) for name in early_stages])),
         thresholds.get("similar_batchnorm_shift"), "<="),
        ("top codes below best stage (similar if <=)",
         max(probe.values()) - probe["top"] if "top" in probe else None,
         thresholds.get("top_stage_margin"), "<="),
        ("curve gain, half to all (learning if >=)",
         curve["1"] - curve["0.5"] if {"1", "0.5"} <= set(curve) else None,
         thresholds.get("curve_gain"), ">="),
    ]  # fmt: skip
    signals = []
    for label, value, threshold, rule in rows:
        if value is None or not threshold or not math.isfinite(float(value)):
            continue
        value, threshold = float(value), float(threshold)
        met = {"<": value < threshold, "<=": value <= threshold, ">=": value >= threshold}[rule]
        signals.append((label, value, threshold, met))
    return signals


def lr_find_plot(rates: Sequence[float], losses: Sequence[float], suggested: float) -> bytes:
    figure = Figure(figsize=(6, 4), layout="constrained")
    panel = figure.subplots()
    panel.semilogx(rates, losses)
    panel.axvline(suggested, color="tab:red", linestyle="--", label=f"suggested {suggested:.2g}")
    panel.set_xlabel("learning rate")
    panel.set_ylabel("smoothed training loss")
    panel.set_title("learning-rate range test")
    panel.legend()
    panel.grid(alpha=0.3)
    return png_bytes(figure)
