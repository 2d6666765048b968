"""The report's curves: learning curves (the saved epoch marked, whole epochs on the axis,
accuracy axes that keep a one-image change small), the one-step panel of a head fitted once,
the reliability diagram, and the compare page's overlaid val curves (one colour per run).

Each figure has a `..._figure` function that returns the matplotlib Figure (what the tests
read: limits, ticks, lines) and a bytes function that draws it to PNG for the page.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from tlvision.report.interpretation import Calibration
from tlvision.report.plots import png_bytes
from tlvision.tables import printable

# An accuracy axis spans at least this much, so that 2 images of 150 (0.013) moving is a small
# step, not a fall across the whole panel.
MIN_ACCURACY_SPAN = 0.2
SAVED_COLOUR = "tab:red"


def series(metrics: Sequence[dict[str, Any]], key: str) -> tuple[list[int], list[float]]:
    pairs = [(int(m["epoch"]), float(m[key])) for m in metrics if m.get(key) is not None]
    return [epoch for epoch, _ in pairs], [value for _, value in pairs]


def accuracy_limits(values: Sequence[float]) -> tuple[float, float]:
    """(bottom, top) of an accuracy axis: the values with a margin, at least MIN_ACCURACY_SPAN
    tall, within [0, 1] (plus room for markers at 1)."""
    if not values:
        return 0.0, 1.02
    top = min(1.02, max(values) + 0.02)
    bottom = max(0.0, min(min(values) - 0.02, top - MIN_ACCURACY_SPAN))
    return bottom, max(top, bottom + MIN_ACCURACY_SPAN)


def _epoch_axis(panel: Any) -> None:
    panel.set_xlabel("epoch")
    panel.xaxis.set_major_locator(MaxNLocator(integer=True))
    panel.grid(alpha=0.3)


def _mark_saved(panel: Any, saved_epoch: int | None) -> None:
    if saved_epoch is not None:
        panel.axvline(saved_epoch, color=SAVED_COLOUR, linestyle=":", linewidth=1.5,
                      label=f"saved weights (epoch {saved_epoch})")  # fmt: skip


def learning_curves_figure(
    metrics: Sequence[dict[str, Any]], saved_epoch: int | None = None
) -> Figure:
    """Loss and accuracy (train and val) and the learning rate per epoch; the saved epoch is a
    dotted line on the loss and accuracy panels."""
    figure = Figure(figsize=(12, 3.4), layout="constrained")
    loss_panel, accuracy_panel, rate_panel = figure.subplots(1, 3)
    plotted: list[float] = []
    for panel, title, keys in (
        (loss_panel, "loss", ("train_loss", "val_loss")),
        (accuracy_panel, "accuracy", ("train_acc", "val_acc")),
    ):
        for key in keys:
            epochs, values = series(metrics, key)
            if epochs:
                panel.plot(epochs, values, marker="o", markersize=3, label=key.replace("_", " "))
                if panel is accuracy_panel:
                    plotted += values
        _mark_saved(panel, saved_epoch)
        panel.set_title(title)
        _epoch_axis(panel)
        panel.legend(fontsize=8)
    accuracy_panel.set_ylim(*accuracy_limits(plotted))
    losses = [value for key in ("train_loss", "val_loss") for value in series(metrics, key)[1]]
    if losses:
        loss_panel.set_ylim(0.0, max(losses) * 1.08 or 1.0)  # from zero: no gap looks like a fall
    epochs, rates = series(metrics, "lr")
    rate_panel.set_title("learning rate (at the epoch's start)")
    _epoch_axis(rate_panel)
    if epochs and min(rates) > 0:
        rate_panel.semilogy(epochs, rates, marker="o", markersize=3)
    else:
        rate_panel.text(0.5, 0.5, "not recorded", ha="center", va="center")
    return figure


def learning_curves(metrics: Sequence[dict[str, Any]], saved_epoch: int | None = None) -> bytes:
    return png_bytes(learning_curves_figure(metrics, saved_epoch))


def one_step_figure(metrics: Sequence[dict[str, Any]], head: str) -> Figure:
    """A head fitted in one step has no curve: its accuracies as bars on a 0-1 axis."""
    figure = Figure(figsize=(4.6, 3.4), layout="constrained")
    panel = figure.subplots()
    record = metrics[-1] if metrics else {}
    named = (("train_acc", "train accuracy"), ("val_acc", "val accuracy"))
    bars = [(label, float(record[key])) for key, label in named if key in record]
    panel.bar([label for label, _ in bars], [value for _, value in bars], color="tab:blue")
    for index, (_label, value) in enumerate(bars):
        panel.text(index, value + 0.02, f"{value:.4f}", ha="center")
    panel.set_ylim(0, 1.1)
    seconds = record.get("seconds")
    fitted = f" in {seconds:.1f}s" if seconds is not None else ""
    panel.set_title(f"{head} head fitted in one step{fitted}: no epochs", fontsize=10)
    panel.grid(axis="y", alpha=0.3)
    return figure


def one_step_panel(metrics: Sequence[dict[str, Any]], head: str) -> bytes:
    return png_bytes(one_step_figure(metrics, head))


def reliability_figure(result: Calibration) -> Figure:
    """Accuracy per confidence bin (bars, each with its image count above), the bin's mean
    confidence as a dash over its bar (where a calibrated bar would reach), the diagonal."""
    figure = Figure(figsize=(4.6, 4.2), layout="constrained")
    panel = figure.subplots()
    centres = (result.edges[:-1] + result.edges[1:]) / 2
    width = result.edges[1] - result.edges[0]
    filled = result.counts > 0
    panel.bar(centres[filled], result.accuracy[filled], width=width * 0.9, label="accuracy")
    panel.plot([0, 1], [0, 1], "k--", linewidth=1, label="perfect calibration")
    panel.plot(centres[filled], result.confidence[filled], "_", color="tab:red", markersize=14,
               markeredgewidth=2.5, label="mean confidence")  # fmt: skip
    for centre, accuracy, count in zip(
        centres[filled], result.accuracy[filled], result.counts[filled], strict=True
    ):
        panel.text(centre, accuracy + 0.015, f"{int(count)}", ha="center", fontsize=7)
    panel.set_xlim(0, 1)
    panel.set_ylim(0, 1.1)
    panel.set_xlabel("confidence (top-1 probability)")
    panel.set_ylabel("accuracy (number: images in the bin)")
    panel.set_title(f"expected calibration error {result.expected_calibration_error:.3f}")
    panel.legend(loc="upper left", fontsize=8)
    return figure


def reliability_diagram(result: Calibration) -> bytes:
    return png_bytes(reliability_figure(result))


def run_colours(count: int) -> list[str]:
    """One colour per run, by its place in the list (tab10, tab20 beyond ten runs)."""
    if count <= 10:
        return [f"C{index}" for index in range(count)]
    from matplotlib import colormaps
    from matplotlib.colors import to_hex

    palette = colormaps["tab20"]
    return [to_hex(palette(index % 20)) for index in range(count)]


def overlaid_val_curves_figure(runs: Sequence[tuple[str, Sequence[dict[str, Any]]]]) -> Figure:
    """Val accuracy and val loss per epoch of several runs on shared axes, each run in its own
    colour on both panels (a run with no val loss keeps its colour, and so does every other)."""
    figure = Figure(figsize=(12, 4), layout="constrained")
    accuracy_panel, loss_panel = figure.subplots(1, 2)
    colours = run_colours(len(runs))
    accuracies: list[float] = []
    for (name, metrics), colour in zip(runs, colours, strict=True):
        for panel, key in ((accuracy_panel, "val_acc"), (loss_panel, "val_loss")):
            epochs, values = series(metrics, key)
            if epochs:
                marker = "o" if len(epochs) > 1 else "*"
                panel.plot(epochs, values, marker=marker, markersize=3 if len(epochs) > 1 else 10,
                           color=colour, label=printable(name))  # fmt: skip
                if key == "val_acc":
                    accuracies += values
    accuracy_panel.set_ylim(*accuracy_limits(accuracies))
    for panel, title in ((accuracy_panel, "val accuracy"), (loss_panel, "val loss")):
        panel.set_title(title)
        _epoch_axis(panel)
        if panel.get_legend_handles_labels()[0]:
            panel.legend(fontsize=8)
    return figure


def overlaid_val_curves(runs: Sequence[tuple[str, Sequence[dict[str, Any]]]]) -> bytes:
    return png_bytes(overlaid_val_curves_figure(runs))
