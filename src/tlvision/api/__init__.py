"""The Python API: the commands as functions that return objects instead of printing.

`tlvision.train`, `advise`, `check`, `probe` and `load` take the command line's options under the
same names (`--batch-size` is `batch_size=`), with the same defaults: both read them from
config.TrainConfig, and the CLI's handlers call these functions. A bad input raises
`tlvision.UserError` with the very message the command prints.

Nothing is printed unless asked: `verbose=True` prints progress messages and shows progress bars
(a widget in Jupyter), `log=callable` receives the messages instead. Torch is imported on the
first call, not on `import tlvision`.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import replace
from importlib import resources
from pathlib import Path
from typing import Any

from tlvision.api.results import Advice, CheckReport, ProbeTable, Run
from tlvision.config import ADVISE_TIME_BUDGET_MINUTES, DEFAULT_BACKBONE, HEADS, TrainConfig
from tlvision.errors import UserError
from tlvision.progress import showing_progress

__all__ = ["advise", "check", "demo_data_dir", "load", "probe", "resume", "train"]

Log = Callable[[str], None]
PathLike = str | os.PathLike[str]


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
    """Messages go to `log`, else to print when verbose, else nowhere; bars only when verbose."""
    with showing_progress(verbose):
        yield log if log is not None else (print if verbose else _silent)


def train(
    data: PathLike,
    *,
    strategy: str = TrainConfig.strategy,
    backbone: str = TrainConfig.backbone,
    epochs: int | None = TrainConfig.epochs,
    out: PathLike | None = None,
    overwrite: bool = TrainConfig.overwrite,
    weights: str | None = TrainConfig.weights,
    freeze_until: str | None = TrainConfig.freeze_until,
    stage: str | None = TrainConfig.stage,
    head: str = TrainConfig.head,
    views: int | None = TrainConfig.views,
    cache_dir: PathLike | None = TrainConfig.cache_dir,
    no_cache: bool = TrainConfig.no_cache,
    input_size: int | None = TrainConfig.input_size,
    batch_size: int = TrainConfig.batch_size,
    lr: float = TrainConfig.learning_rate,
    backbone_lr_mult: float | None = TrainConfig.backbone_lr_mult,
    batchnorm: str | None = TrainConfig.batchnorm,
    momentum: float = TrainConfig.momentum,
    weight_decay: float = TrainConfig.weight_decay,
    schedule: str = TrainConfig.schedule,
    seed: int = TrainConfig.seed,
    device: str = TrainConfig.device,
    workers: int | None = TrainConfig.num_workers,
    val_split: float | None = TrainConfig.val_split,
    class_weights: str | None = TrainConfig.class_weights,
    precision: str = TrainConfig.precision,
    tensorboard: bool = TrainConfig.tensorboard,
    step_epochs: int = TrainConfig.step_epochs,
    step_gamma: float = TrainConfig.step_gamma,
    verbose: bool = False,
    log: Log | None = None,
) -> Run:
    """Train a classifier on DATA/train, validate on DATA/val, as `tlvision train` does.

    The options are the command's (`tlvision train --help`), spelled as keywords. `out` is the
    run directory (default runs/<strategy>-<time>); `strategy="auto"` measures the data first
    and runs what `advise` recommends (the advice is saved as advice.json). `verbose=True`
    prints the per-epoch lines and shows progress bars; `log` receives the lines instead of
    print. Returns the finished Run; a bad input raises UserError before anything is trained.
    """
    config = TrainConfig(
        data_dir=Path(data),
        out_dir=default_out_dir(strategy) if out is None else Path(out),
        backbone=backbone, weights=weights, strategy=strategy, freeze_until=freeze_until,
        input_size=input_size, stage=stage, head=head, views=views,
        cache_dir=None if cache_dir is None else Path(cache_dir), no_cache=no_cache,
        epochs=epochs, batch_size=batch_size, learning_rate=lr,
        backbone_lr_mult=backbone_lr_mult, batchnorm=batchnorm, momentum=momentum,
        weight_decay=weight_decay,
        schedule=schedule, seed=seed, device=device, num_workers=workers,
        val_split=val_split, class_weights=class_weights, overwrite=overwrite,
        precision=precision, tensorboard=tensorboard, step_epochs=step_epochs,
        step_gamma=step_gamma,
    )  # fmt: skip
    with _reporting(verbose, log) as report:
        if config.strategy == "auto":
            _train_as_advised(config, report)
        else:
            from tlvision.training.fit import fit

            fit(config, log=report)
    return load(config.out_dir)


def _train_as_advised(config: TrainConfig, log: Log) -> None:
    from tlvision.advisor.measure import advise as measure_and_advise
    from tlvision.jsonio import write_json_atomic
    from tlvision.training.fit import fit
    from tlvision.training.run_dir import refuse_to_overwrite

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
        log=log,
    )
    log(advice.to_text())
    probing = advice.strategy == "linear-probe"
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
    write_json_atomic(config.out_dir / "advice.json", advice.to_json())


def resume(run_dir: PathLike, *, verbose: bool = False, log: Log | None = None) -> Run:
    """Continue a stopped run from its last checkpoint (`tlvision train --resume RUN_DIR`)."""
    from tlvision.training.fit import resume as resume_run

    with _reporting(verbose, log) as report:
        resume_run(Path(run_dir), log=report)
    return load(run_dir)


def load(run_dir: PathLike) -> Run:
    """The finished run in `run_dir` (the `out` of a train): summary, metrics, model."""
    from tlvision.runs.checkpoint import read_model_json
    from tlvision.training.run_dir import SUMMARY_FILE, read_metrics

    run_dir = Path(run_dir)
    model_info = read_model_json(run_dir)
    summary_path = run_dir / SUMMARY_FILE
    summary = read_json_object(summary_path) if summary_path.is_file() else {}
    return Run(run_dir, summary, read_metrics(run_dir), model_info)


def read_json_object(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise UserError(f"{path}: not valid JSON ({error}); retrain or restore the file") from error
    return dict(data)


def advise(
    data: PathLike,
    *,
    backbone: str = DEFAULT_BACKBONE,
    weights: str | None = None,
    seed: int = TrainConfig.seed,
    time_budget: float = ADVISE_TIME_BUDGET_MINUTES,
    cache_dir: PathLike | None = None,
    no_cache: bool = False,
    val_split: float | None = None,
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
    backbone: str = DEFAULT_BACKBONE,
    weights: str | None = None,
    stages: Sequence[str] | None = None,
    heads: Sequence[str] = HEADS,
    input_size: int | None = None,
    cache_dir: PathLike | None = None,
    no_cache: bool = False,
    val_split: float | None = None,
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
