"""The Python API: the commands as functions that return objects instead of printing.

`tlvision.train`, `resume`, `lr_find`, `advise`, `check`, `probe`, `compare` and `load` take the
command line's options under the same names (`--batch-size` is `batch_size=`), with the same
defaults: both are made from TrainConfig's fields (tlvision.config), and the CLI's handlers call
these functions. A bad input raises `tlvision.UserError` with the very message the command
prints.

Imports every layer below it (lazily, inside the functions) and nothing above it: the command
line (tlvision.cli) is built on it, not the other way round.

Nothing is printed unless asked: `verbose=True` prints progress messages and shows progress bars
(a widget in Jupyter; text without ipywidgets), `log=callable` receives the messages instead.
Torch is imported on the first call, not on `import tlvision`.
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

from tlvision.api.audit_report import audit
from tlvision.api.rate import RangeTestReport
from tlvision.api.results import Advice, CheckReport, Comparison, ProbeTable, Run
from tlvision.api.train_options import TrainOptions
from tlvision.compute.cores import prefer_passive_waiting
from tlvision.config import AUTO_STRATEGY, HEADS, TrainConfig, config_from_options, option_fields
from tlvision.errors import UserError
from tlvision.progress import showing_progress

__all__ = [
    "add_labels", "advise", "audit", "check", "compare", "demo_data_dir", "load", "lr_find",
    "probe", "resume", "train",
]  # fmt: skip

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
    no_report: bool = False,
    **options: Unpack[TrainOptions],
) -> Run:
    """Train a classifier on DATA/train, validate on DATA/val, as `tlvision train` does.

    The options are the command's, spelled as keywords (`--batch-size 16` is `batch_size=16`,
    `--lr` is `lr`; `tlvision train --help` lists them, with their defaults; so do the
    TrainOptions fields). `out` is the run directory (default runs/<strategy>-<time>);
    `strategy="auto"` measures the data first and runs what `advise` recommends (the advice
    is saved as advice.json); `lr="find"` runs the learning-rate range test first and trains
    at its suggestion (lr_find.png and lr_find.json kept in the run). RUN/report.html is
    written at the end, as the command does, unless `no_report=True`. `verbose=True` prints
    the per-epoch lines and shows progress bars; `log` receives the lines instead of print.
    Returns the finished Run; a bad input raises UserError before anything is trained.
    """
    from tlvision.api.rate import FIND, train_at_found_rate

    values: dict[str, Any] = dict(options)
    strategy = str(values.get("strategy", TrainConfig.strategy))
    out = values.pop("out", None) or default_out_dir(strategy)
    find_rate = values.get("lr") == FIND
    config = config_from_options(data, out, {**values, "lr": 1.0} if find_rate else values)
    with _reporting(verbose, log) as report:
        if config.strategy == AUTO_STRATEGY:
            if find_rate:
                raise UserError(
                    "lr='find' (--lr find) needs a strategy: with strategy auto the advisor "
                    "sets the rate (or run advise, then train its strategy with lr='find')"
                )
            _train_as_advised(config, report)
        elif find_rate:
            train_at_found_rate(config, report, progress=verbose or log is not None)
        else:
            from tlvision.training.fit import fit

            fit(config, log=report)
        if not no_report:
            _write_report(config.out_dir, report)
    return load(config.out_dir)


def _write_report(run_dir: Path, log: Log) -> None:
    """RUN/report.html after training, as the command writes it; under torchrun rank 0 alone
    writes it (the others have no run to read)."""
    from tlvision.compute.devices import resolve_device
    from tlvision.report.page import write_report
    from tlvision.runs.reader import read_model_json

    if os.environ.get("RANK", "0") != "0":
        return
    device = str(read_model_json(run_dir).get("config", {}).get("device", "auto"))
    result = write_report(run_dir, None, device=resolve_device(device))
    log(f"report: {result.path} ({result.seconds:.1f}s)")


def _signature_of_train() -> inspect.Signature:
    """`train`'s signature with every option spelled out, for help() and notebooks (the type
    checkers read TrainOptions)."""
    keyword = inspect.Parameter.KEYWORD_ONLY
    parameters = [
        inspect.Parameter("data", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation="PathLike"),
        inspect.Parameter("verbose", keyword, default=False, annotation="bool"),
        inspect.Parameter("log", keyword, default=None, annotation="Log | None"),
        inspect.Parameter("no_report", keyword, default=False, annotation="bool"),
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


def resume(
    run_dir: PathLike,
    *,
    verbose: bool = False,
    log: Log | None = None,
    no_report: bool = False,
    **changes: Any,
) -> Run:
    """Continue a stopped run from its last checkpoint (`tlvision train --resume RUN_DIR`).

    `changes`: the options a resumed run may change (`epochs`, to train longer or stop
    sooner); any other option raises UserError. Writes RUN/report.html unless `no_report`."""
    from tlvision.training.fit import resume as resume_run

    with _reporting(verbose, log) as report:
        resume_run(Path(run_dir), log=report, changes=changes)
        if not no_report:
            _write_report(Path(run_dir), report)
    return load(run_dir)


def lr_find(
    data: PathLike,
    *,
    start_lr: float = 1e-6,
    end_lr: float = 1.0,
    steps: int | None = None,
    plot: PathLike | None = None,
    verbose: bool = False,
    log: Log | None = None,
    **options: Unpack[TrainOptions],
) -> RangeTestReport:
    """The learning-rate range test of the run these options describe (`tlvision lr-find`):
    the same setup the run would train, each step at a rate growing from `start_lr` to
    `end_lr`. `steps`: default 300 on codes (frozen routes), 100 for finetune. `plot`: where to
    save the loss-against-rate PNG (default: none). `.suggested_lr` is the rate to train at."""
    from tlvision.api.rate import range_test_config, range_test_text, save_range_test
    from tlvision.training.lr_find import find_learning_rate

    config = range_test_config(data, dict(options))
    with _reporting(verbose, log) as report:
        result = find_learning_rate(
            config, start=start_lr, end=end_lr, steps=steps, log=report, progress=verbose
        )
    plot_path = None if plot is None else Path(plot)
    save_range_test(result, plot_path)
    return RangeTestReport(result.to_json(), range_test_text(result, plot_path), plot_path)


def compare(
    runs: Sequence[PathLike], *, html: PathLike | None = None, overwrite: bool = False
) -> Comparison:
    """Finished runs side by side (`tlvision compare`): one row per run; `html`: also write
    the page with their val curves overlaid there (default: no page; a file already there is
    replaced only with `overwrite`)."""
    from tlvision.report.compare import compare_rows, compare_text, write_compare_page

    run_dirs = [Path(run) for run in runs]
    rows = compare_rows(run_dirs)
    if html is not None:
        write_compare_page(run_dirs, rows, Path(html), overwrite=overwrite)
    return Comparison({"runs": rows}, compare_text(rows))


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


def add_labels(csv_file: PathLike, data: PathLike) -> list[Path]:
    """Copy the rows of label-next's CSV whose class is filled in into DATA/train/<class>/
    (`tlvision add-labels`): copies, never moves; an unknown class or a name already there
    refuses the whole CSV before anything is copied. Returns the files written."""
    from tlvision.labelling.adding import add_labels as copy_labelled

    return [copy.target for copy in copy_labelled(Path(csv_file), Path(data))]


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
