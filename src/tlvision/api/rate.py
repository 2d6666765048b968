"""The learning-rate range test for the API and the command line: the config it measures, the
files it leaves (plot and numbers), the report it returns, and `train(lr="find")`."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tlvision.api.results import _Report
from tlvision.config import AUTO_STRATEGY, TrainConfig, config_from_options
from tlvision.errors import UserError

if TYPE_CHECKING:
    from tlvision.training.lr_find import RangeTest

FIND = "find"  # lr="find" / --lr find
LR_FIND_PLOT = "lr_find.png"
LR_FIND_JSON = "lr_find.json"


@dataclass(frozen=True, repr=False)
class RangeTestReport(_Report):
    """`tlvision lr-find`: the suggested rate, the rates tried and their smoothed losses."""

    plot: Path | None = None

    @property
    def suggested_lr(self) -> float:
        return float(self.details["suggested_lr"])

    @property
    def route(self) -> str:
        return str(self.details["route"])

    def __repr__(self) -> str:
        return f"RangeTestReport(suggested_lr={self.suggested_lr:.3g}, route={self.route!r})"

    def _repr_png_(self) -> bytes | None:
        return self.plot.read_bytes() if self.plot is not None and self.plot.is_file() else None


def range_test_text(result: RangeTest, plot: Path | None) -> str:
    return (
        f"suggested --lr {result.suggested:.3g} ({len(result.rates)} steps on {result.route}"
        f"{', stopped at divergence' if result.diverged else ''})"
        + (f"; plot: {plot}" if plot is not None else "")
    )


def range_test_config(data: Any, options: dict[str, Any]) -> TrainConfig:
    """The TrainConfig the range test measures: the run's, its rate set by each step."""
    options = {**options, "lr": 1.0}
    if options.get("strategy") == AUTO_STRATEGY:
        raise UserError(
            "--lr find needs a --strategy: with --strategy auto the advisor sets the rate "
            "(or run `tlvision advise`, then train its strategy with --lr find)"
        )
    return config_from_options(data, options.pop("out", None) or "runs/lr-find", options)


def save_range_test(result: RangeTest, plot: Path | None, numbers: Path | None = None) -> None:
    """The plot (PNG) and the numbers (JSON) where asked."""
    from tlvision.jsonio import write_json_atomic
    from tlvision.report.plots import lr_find_plot

    if plot is not None:
        plot.parent.mkdir(parents=True, exist_ok=True)
        plot.write_bytes(lr_find_plot(result.rates, result.losses, result.suggested))
    if numbers is not None:
        write_json_atomic(numbers, result.to_json())


def train_at_found_rate(config: TrainConfig, log: Callable[[str], None], *, progress: bool) -> None:
    """train --lr find: the range test of the run's own setup, then the run at the suggested
    rate; the test's plot and numbers are kept in the run directory."""
    import time

    from tlvision.training.fit import fit
    from tlvision.training.lr_find import find_learning_rate

    started = time.perf_counter()
    result = find_learning_rate(config, log=log, progress=progress)
    log(
        f"lr-find: suggested --lr {result.suggested:.3g} "
        f"({len(result.rates)} steps on {result.route}, {time.perf_counter() - started:.0f}s)"
    )
    fit(replace(config, learning_rate=result.suggested), log=log)
    save_range_test(result, config.out_dir / LR_FIND_PLOT, config.out_dir / LR_FIND_JSON)
