"""`tlvision check`, `probe`, `advise` and `demo`: what to know about a dataset before (and
instead of) choosing how to train on it. The shared options come from TrainConfig's fields."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from tlvision import api
from tlvision.cli.common import announce_layout, print_json, quiet, show_progress
from tlvision.cli.options import add_training_options
from tlvision.config import HEADS

if TYPE_CHECKING:
    Commands = argparse._SubParsersAction[argparse.ArgumentParser]

# The options probe and advise share with train (one definition each: tlvision.config).
MEASURING_OPTIONS = (
    "data_dir", "backbone", "weights", "val_split", "cache_dir", "no_cache", "seed", "device",
)  # fmt: skip


def add_commands(commands: Commands) -> None:
    check = commands.add_parser(
        "check", help="find broken, odd, duplicated and leaking files in a dataset"
    )
    add_training_options(check, ["data_dir"])
    check.add_argument("--json", action="store_true", help="print the findings as JSON")
    check.set_defaults(handler=command_check)

    probe = commands.add_parser(
        "probe", help="val accuracy of linear heads on each stage's frozen codes"
    )
    add_training_options(probe, [*MEASURING_OPTIONS, "input_size"])
    probe.add_argument(
        "--stages", nargs="+", metavar="STAGE", help="default: every stage and the top"
    )
    probe.add_argument("--heads", nargs="+", default=list(HEADS), choices=HEADS)
    probe.add_argument("--json", action="store_true", help="print the table as JSON")
    probe.set_defaults(handler=command_probe)

    advise = commands.add_parser(
        "advise", help="measure the data and recommend a strategy, with the evidence"
    )
    add_training_options(advise, MEASURING_OPTIONS)
    advise.add_argument(
        "--time-budget", type=float, default=api.ADVISE_TIME_BUDGET_MINUTES, metavar="MINUTES",
        help="for the training run (default %(default)s)",
    )  # fmt: skip
    advise.add_argument("--json", action="store_true", help="print the advice as JSON")
    advise.set_defaults(handler=command_advise)

    demo = commands.add_parser("demo", help="train and evaluate on the embedded demo set")
    add_training_options(demo, ["out_dir", "overwrite", "device"])
    demo.add_argument("--epochs", type=int, default=10, help="(default %(default)s)")
    demo.set_defaults(handler=command_demo)


def command_check(arguments: argparse.Namespace) -> int:
    announce_layout(arguments.data, None)
    report = api.check(arguments.data, verbose=show_progress())
    print_json(report.to_json()) if arguments.json else print(report)
    return report.exit_status


def command_probe(arguments: argparse.Namespace) -> int:
    announce_layout(arguments.data, arguments.val_split)
    table = api.probe(
        arguments.data, val_split=arguments.val_split, backbone=arguments.backbone,
        weights=arguments.weights, stages=arguments.stages, heads=arguments.heads,
        input_size=arguments.input_size, cache_dir=arguments.cache_dir,
        no_cache=arguments.no_cache, seed=arguments.seed, device=arguments.device,
        log=quiet if arguments.json else print, verbose=show_progress(),
    )  # fmt: skip
    print_json(table.to_json()) if arguments.json else print(table)
    return 0


def command_advise(arguments: argparse.Namespace) -> int:
    announce_layout(arguments.data, arguments.val_split)
    advice = api.advise(
        arguments.data, backbone=arguments.backbone, weights=arguments.weights,
        seed=arguments.seed, time_budget=arguments.time_budget, cache_dir=arguments.cache_dir,
        no_cache=arguments.no_cache, val_split=arguments.val_split, device=arguments.device,
        log=quiet if arguments.json else print, verbose=show_progress(),
    )  # fmt: skip
    print_json(advice.to_json()) if arguments.json else print(advice)
    return 0


def command_demo(arguments: argparse.Namespace) -> int:
    from tlvision.cli.train import report_after_training

    data_dir = api.demo_data_dir()
    out_dir = arguments.out or api.default_out_dir("demo")
    print(f"demo: a 3-class set of {data_dir} (fish, monument, tool; see ATTRIBUTION.md)")
    print(
        f"step 1: tlvision train {data_dir} --strategy feature-extract "
        f"--epochs {arguments.epochs} --out {out_dir}"
    )
    run = api.train(
        data_dir, out=out_dir, epochs=arguments.epochs, overwrite=arguments.overwrite,
        device=arguments.device, log=print, verbose=show_progress(), no_report=True,
    )  # fmt: skip
    print(f"\nstep 2: tlvision evaluate {out_dir} {data_dir / 'val'}")
    print(run.evaluate(data_dir / "val", device=arguments.device).to_text())
    examples = [next(iter(sorted((data_dir / "val" / name).iterdir()))) for name in run.classes]
    print(f"\nstep 3: tlvision predict {out_dir} IMAGE")
    predictions = run.predict(examples, device=arguments.device)
    for example, prediction in zip(examples, predictions, strict=True):
        name, probability = prediction.top[0]
        print(f"  {example.parent.name}/{example.name} -> {name} ({probability:.3f})")
    print(f"\nstep 4: tlvision report {out_dir}")
    report_after_training(out_dir, data_dir)
    print(
        f"\ndone: training took {run.summary['seconds']:.1f}s; final val accuracy "
        f"{run.summary['final_val_acc']:.3f} (best {run.summary['best_val_acc']:.3f} at epoch "
        f"{run.summary['best_epoch']}); the run is in {out_dir} (model.safetensors, model.json, "
        "metrics.jsonl, summary.json, report.html)"
    )
    return 0
