"""The Python API: the commands as functions that return objects instead of printing.

`tlvision.train`, `advise`, `check`, `probe` and `load` take the command line's options under
the same names (`--batch-size` is `batch_size=`), with the same defaults: both are made from
TrainConfig's fields (tlvision.config), and the CLI's handlers call these functions. A bad input
raises `tlvision.UserError` with the very message the command prints.

Imports every layer below it (lazily, inside the functions) and nothing above it: the command
line (tlvision.cli) is built on it, not the other way round.

Nothing is printed unless asked: `verbose=True` prints progress messages and shows progress bars
(a widget in Jupyter), `log=callable` receives the messages instead. Torch is imported on the
first call, not on `import tlvision`.
"""

from __future__ import annotations

import inspect
import os
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import replace
from importlib import resources
from pathlib import Path
from typing import Any, Unpack

from tlvision.api.results import Advice, CheckReport, ProbeTable, Run
from tlvision.api.train_options import TrainOptions
from tlvision.compute.cores import prefer_passive_waiting
from tlvision.config import AUTO_STRATEGY, HEADS, TrainConfig, config_from_options, option_fields
from tlvision.progress import showing_progress

__all__ = ["advise", "check", "demo_data_dir", "load", "probe", "resume", "train"]

Log = Callable[[str], None]
PathLike = str | os.PathLike[str]
ADVISE_TIME_BUDGET_MINUTES = 30.0  # `tlvision advise`: the time the training run may take


def demo_data_dir() -> Path:
    """The embedded 3-class demo set (fish, monument, tool; 78 images): train/ and val/."""
    return Path(str(resources.files("tlvision") / "demo_data"))


def default_out_dir(prefix: str) -> Path:
    """runs/<prefix>-<date>-<time>, relative to the working directory."""
    return Path("runs") / f"{prefix}-{time.strftime('%Y%m%d-%H%M%S')}"


def _silent(message: str) -> None:
    """Drops the message: the API prints nothing unless asked."""


@contextmanager
def _reporting(verbose: bool, log: Log | None) -> Iterator[Log]:
    """Messages go to `log`, else to print when verbose, else nowhere; bars only when verbose.
    Entering it also prepares the process for torch (tlvision.compute.cores)."""
    prefer_passive_waiting()
    with showing_progress(verbose):
        yield log if log is not None else (print if verbose else _silent)


def train(
    data: PathLike,
    *,
    verbose: bool = False,
    log: Log | None = None,
    **options: Unpack[TrainOptions],
) -> Run:
    """Train a classifier on DATA/train, validate on DATA/val, as `tlvision train` does.

    The options are the command's, spelled as keywords (`--batch-size 16` is `batch_size=16`,
    `--lr` is `lr`; `tlvision train --help` lists them, with their defaults; so do the
    TrainOptions fields). `out` is the run directory (default runs/<strategy>-<time>);
    `strategy="auto"` measures the data first and runs what `advise` recommends (the advice
    is saved as advice.json). `verbose=True` prints the per-epoch lines and shows progress
    bars; `log` receives the lines instead of print. Returns the finished Run; a bad input
    raises UserError before anything is trained.
    """
    values: dict[str, Any] = dict(options)
    strategy = str(values.get("strategy", TrainConfig.strategy))
    out = values.pop("out", None) or default_out_dir(strategy)
    config = config_from_options(data, out, values)
    with _reporting(verbose, log) as report:
        if config.strategy == AUTO_STRATEGY:
            _train_as_advised(config, report)
        else:
            from tlvision.training.fit import fit

            fit(config, log=report)
    return load(config.out_dir)


def _signature_of_train() -> inspect.Signature:
    """`train`'s signature with every option spelled out, for help() and notebooks (the type
    checkers read TrainOptions)."""
    keyword = inspect.Parameter.KEYWORD_ONLY
    parameters = [
        inspect.Parameter("data", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation="PathLike"),
        inspect.Parameter("verbose", keyword, default=False, annotation="bool"),
        inspect.Parameter("log", keyword, default=None, annotation="Log | None"),
    ]
    for each in option_fields():
        if each.field != "data_dir":
            default = None if each.field == "out_dir" else each.default
            parameters.append(inspect.Parameter(each.name, keyword, default=default))
    return inspect.Signature(parameters, return_annotation="Run")


train.__signature__ = _signature_of_train()  # type: ignore[attr-defined]


def _train_as_advised(config: TrainConfig, log: Log) -> None:
    from tlvision.advisor.measure import advise as measure_and_advise
    from tlvision.jsonio import write_json_atomic
    from tlvision.runs.layout import ADVICE_FILE, refuse_to_overwrite
    from tlvision.training.fit import fit
    from tlvision.training.strategies import linear_probe

    # Refuse an occupied out directory before spending the advisor's minutes, not after.
    refuse_to_overwrite(config.out_dir, overwrite=config.overwrite)
    advice = measure_and_advise(
        config.data_dir,
        backbone_name=config.backbone,
        weights_argument=config.weights,
        seed=config.seed,
        cache_dir=config.cache_dir,
        use_cache=not config.no_cache,
        val_split=config.val_split,
        device_name=config.device,
        time_budget_minutes=ADVISE_TIME_BUDGET_MINUTES,
        log=log,
    )
    log(advice.to_text())
    probing = advice.strategy == linear_probe.NAME
    config = replace(
        config,
        strategy=advice.strategy,
        stage=advice.stage if probing else None,
        freeze_until=None if probing else advice.stage,
        head=advice.head if probing else "linear",
        input_size=advice.input_size,
        epochs=advice.epochs,
        learning_rate=advice.learning_rate,
        backbone_lr_mult=advice.backbone_lr_mult,
    )
    fit(config, log=log)
    write_json_atomic(config.out_dir / ADVICE_FILE, advice.to_json())


def resume(run_dir: PathLike, *, verbose: bool = False, log: Log | None = None) -> Run:
    """Continue a stopped run from its last checkpoint (`tlvision train --resume RUN_DIR`)."""
    from tlvision.training.fit import resume as resume_run

    with _reporting(verbose, log) as report:
        resume_run(Path(run_dir), log=report)
    return load(run_dir)


def load(run_dir: PathLike) -> Run:
    """The finished run in `run_dir` (the `out` of a train): summary, metrics, model."""
    from tlvision.runs.reader import read_run

    record = read_run(Path(run_dir))
    return Run(record.run_dir, record.summary, record.metrics, record.model_info)


def advise(
    data: PathLike,
    *,
    backbone: str = TrainConfig.backbone,
    weights: str | None = TrainConfig.weights,
    seed: int = TrainConfig.seed,
    time_budget: float = ADVISE_TIME_BUDGET_MINUTES,
    cache_dir: PathLike | None = TrainConfig.cache_dir,
    no_cache: bool = TrainConfig.no_cache,
    val_split: float | None = TrainConfig.val_split,
    device: str = TrainConfig.device,
    verbose: bool = False,
    log: Log | None = None,
) -> Advice:
    """Measure the data and recommend a strategy, with the evidence (`tlvision advise`).

    `time_budget` is in minutes, for the training run the advice is about.
    """
    from tlvision.advisor.measure import advise as measure_and_advise

    with _reporting(verbose, log) as report:
        advice = measure_and_advise(
            Path(data),
            backbone_name=backbone,
            weights_argument=weights,
            seed=seed,
            time_budget_minutes=time_budget,
            cache_dir=None if cache_dir is None else Path(cache_dir),
            use_cache=not no_cache,
            val_split=val_split,
            device_name=device,
            log=report,
        )
    return Advice(details=advice.to_json(), text=advice.to_text())


def check(data: PathLike, *, verbose: bool = False) -> CheckReport:
    """Find broken, odd, duplicated and leaking files in a dataset (`tlvision check`)."""
    from tlvision.data.doctor import check_dataset

    with showing_progress(verbose):
        report = check_dataset(Path(data), progress=verbose)
    return CheckReport(details=report.to_json(), text=report.to_text())


def probe(
    data: PathLike,
    *,
    backbone: str = TrainConfig.backbone,
    weights: str | None = TrainConfig.weights,
    stages: Sequence[str] | None = None,
    heads: Sequence[str] = HEADS,
    input_size: int | None = TrainConfig.input_size,
    cache_dir: PathLike | None = TrainConfig.cache_dir,
    no_cache: bool = TrainConfig.no_cache,
    val_split: float | None = TrainConfig.val_split,
    seed: int = TrainConfig.seed,
    device: str = TrainConfig.device,
    verbose: bool = False,
    log: Log | None = None,
) -> ProbeTable:
    """Val accuracy of linear heads on each stage's frozen codes, from one pass (`tlvision
    probe`). `stages`: stage names or "top" (default: every stage and the top)."""
    from tlvision.advisor.probe import run_probe

    with _reporting(verbose, log) as report:
        table = run_probe(
            Path(data),
            backbone_name=backbone,
            weights_argument=weights,
            stages=stages,
            heads=heads,
            input_size=input_size,
            cache_dir=None if no_cache or cache_dir is None else Path(cache_dir),
            use_cache=not no_cache,
            val_split=val_split,
            seed=seed,
            device_name=device,
            log=report,
        )
    return ProbeTable(details=table, text=str(table["table"]))
