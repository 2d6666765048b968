"""The top of report.html: the numbers a reader comes for, and a warning when the data leaks.

The headline gives every accuracy the run has, each labelled with what it is: the test split's
(scored once, at the end) where there is one, the final epoch's on val, and the saved weights'
on val with their epoch (chosen on val, so it flatters). A run whose head is fitted in one step
(logistic regression, SVM) has no epochs: it says so instead of the configured epoch count.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from tlvision.data.doctor_report import Problem
from tlvision.tables import escape

ONE_STEP_HEADS = ("logreg", "svm")  # scikit-learn heads: one fit, one metrics line


def fitted_in_one_step(summary: dict[str, Any], metrics: Sequence[dict[str, Any]]) -> bool:
    """A head fitted once (no epochs, no loss): a scikit-learn head, or a run whose only
    metrics line has no training loss."""
    if summary.get("head") in ONE_STEP_HEADS:
        return True
    return len(metrics) == 1 and metrics[0].get("train_loss") is None


def epochs_text(summary: dict[str, Any], metrics: Sequence[dict[str, Any]]) -> str:
    """The epochs the run trained: the metrics' count, or "one fit" for a one-step head."""
    if fitted_in_one_step(summary, metrics):
        return "none: the head is fitted in one step"
    trained = len(metrics) or summary.get("epochs")
    configured = summary.get("epochs")
    return f"{trained}" if trained == configured else f"{trained} of {configured}"


def _accuracy(value: Any) -> str:
    return "-" if value is None else f"{float(value):.4f}"


def headline_section(
    summary: dict[str, Any], metrics: Sequence[dict[str, Any]], saved_val_accuracy: float
) -> str:
    """One line per accuracy the run has, the test split's first (never used to choose)."""
    rows: list[tuple[str, str, str]] = []
    if summary.get("test_acc") is not None:
        rows.append((
            "test-accuracy", "test accuracy (the saved weights, scored once at the end)",
            f"{_accuracy(summary['test_acc'])} on {summary.get('test_images', '?')} images",
        ))  # fmt: skip
    if fitted_in_one_step(summary, metrics):
        rows.append(("saved-accuracy", "val accuracy (the head fitted in one step, saved)",
                     _accuracy(saved_val_accuracy)))  # fmt: skip
    else:
        final_epoch = metrics[-1]["epoch"] if metrics else summary.get("epochs")
        rows.append((
            "final-accuracy", f"val accuracy, final epoch ({final_epoch})",
            _accuracy(summary.get("final_val_acc")),
        ))  # fmt: skip
        rows.append((
            "saved-accuracy",
            f"val accuracy, saved weights (epoch {summary.get('best_epoch')}, chosen on val)",
            _accuracy(saved_val_accuracy),
        ))  # fmt: skip
    items = "".join(
        f'<li id="{key}">{escape(label)}: <b>{escape(value)}</b></li>' for key, label, value in rows
    )
    return f'<div id="headline" class="headline"><ul>{items}</ul></div>'


def leak_problems(problems: Sequence[Problem]) -> list[Problem]:
    """The dataset check's findings that a held-out image is also (or nearly) in train."""
    return [problem for problem in problems if problem.kind.endswith("across-splits")]


def leak_banner(problems: Sequence[Problem]) -> str:
    """A warning at the top of the page when held-out images leak from train, else nothing."""
    leaks = leak_problems(problems)
    if not leaks:
        return ""
    examples = "".join(f"<li><code>{escape(problem.path)}</code></li>" for problem in leaks[:3])
    more = f"<li>... and {len(leaks) - 3} more</li>" if len(leaks) > 3 else ""
    return (
        f'<div id="leak-warning" class="warning" role="alert"><b>Data leak: {len(leaks)} '
        "held-out image(s) are copies or near copies of training images.</b> The val (and test) "
        "accuracy below is optimistic: the model has seen these images. Remove the copies "
        f"(listed under Dataset problems, or run <code>tlvision check</code>).<ul>{examples}"
        f"{more}</ul></div>"
    )
