"""What `tlvision COMMAND --help` says beyond the flags: a description and examples for every
command, help for the arguments that the commands declare without one, and each default shown.

Applied once to the finished parser (`complete_help`), so a command adds its flags where it is
defined and gets the same treatment.
"""

from __future__ import annotations

import argparse

# The help of arguments declared without one, by destination (the same meaning everywhere).
ARGUMENT_HELP = {
    "run_dir": "a run directory: the --out of `tlvision train`",
    "run_dirs": "run directories to compare: the --out of each `tlvision train`",
    "split_dir": "a folder of class folders with this model's classes, e.g. DATA/val",
    "paths": "image files, or folders searched recursively for images",
    "top_k": "how many classes to show per image, most likely first",
    "json": "print JSON instead of text",
    "device": "where the model runs: auto, cpu, cuda, cuda:N or mps",
    "batch_size": "images per batch",
    "heads": "the linear heads to fit on each stage's codes",
    "start_lr": "the ramp's first learning rate",
    "end_lr": "the ramp's last learning rate (the test stops earlier if the loss diverges)",
    "data": "dataset folder (default: the run's own)",
    "port": "TCP port to listen on",
    "log_level": "uvicorn's log level: critical, error, warning, info, debug or trace",
    "csv": "label-next's CSV with its class column filled in",
}

# A few lines each: the command as people start with it, then a common variation.
EXAMPLES = {
    "train": [
        "tlvision train DATA --out runs/first",
        "tlvision train DATA --strategy finetune --epochs 10 --out runs/ft",
        "tlvision train DATA --strategy auto --out runs/advised",
        "tlvision train --resume runs/ft --epochs 15   # continue, now to 15 epochs",
    ],
    "lr-find": [
        "tlvision lr-find DATA",
        "tlvision lr-find DATA --strategy finetune --plot lr.png",
    ],
    "evaluate": [
        "tlvision evaluate runs/first DATA/val",
        "tlvision evaluate runs/first DATA/test --tta --json",
        "tlvision evaluate runs/tags DATA/val.csv",
    ],
    "predict": [
        "tlvision predict runs/first photo.jpg",
        "tlvision predict runs/first photos/ --top-k 3 --json",
        "tlvision predict runs/first photos/ --jsonl predictions.jsonl",
    ],
    "export": [
        "tlvision export runs/first",
        "tlvision export runs/first --format torchscript",
        "tlvision export runs/first --quantize int8",
    ],
    "serve": [
        "tlvision serve runs/first --insecure-no-token",
        "TLVISION_TOKEN=secret tlvision serve runs/first --host 0.0.0.0",
    ],
    "report": ["tlvision report runs/first", "tlvision report runs/first --data OTHER_DATA"],
    "compare": [
        "tlvision compare runs/first runs/ft",
        "tlvision compare runs/* --json",
    ],
    "check": ["tlvision check DATA", "tlvision check DATA --json"],
    "probe": [
        "tlvision probe DATA",
        "tlvision probe DATA --backbone resnet18 --heads logreg",
    ],
    "advise": ["tlvision advise DATA", "tlvision advise DATA --time-budget 10 --json"],
    "demo": ["tlvision demo", "tlvision demo --epochs 3 --out runs/demo"],
    "weights": ["tlvision weights list", "tlvision weights fetch resnet18"],
    "fetch": [
        "tlvision weights fetch mobilenet_v2",
        "tlvision weights fetch resnet50:IMAGENET1K_V2",
    ],
    "list": ["tlvision weights list"],
    "backbones": ["tlvision backbones"],
    "audit": [
        "tlvision audit DATA --out audit",
        "tlvision audit DATA --run runs/first --json",
        "tlvision train DATA --exclude audit/audit.json --out runs/cleaned   # then act on it",
    ],
    "calibrate": [
        "tlvision calibrate runs/first",
        "tlvision calibrate runs/first --val-rejected 0.02",
        "tlvision calibrate runs/first --score energy   # from the logits alone, as before",
    ],
    "label-next": [
        "tlvision label-next runs/first unlabelled/ -n 20",
        "tlvision label-next runs/first unlabelled/ -n 50 --out to-label --json",
    ],
    "add-labels": ["tlvision add-labels runs/first/label-next/label-next.csv DATA"],
}


def complete_help(parser: argparse.ArgumentParser) -> None:
    """Every subcommand (and theirs) gets its description, examples, argument help and shown
    defaults."""
    for subcommands in _subcommand_actions(parser):
        for choice in subcommands._choices_actions:
            command = subcommands.choices[choice.dest]
            _describe(command, choice.dest, choice.help or "")
            complete_help(command)


def _subcommand_actions(parser: argparse.ArgumentParser) -> list[argparse._SubParsersAction]:
    return [action for action in parser._actions if isinstance(action, argparse._SubParsersAction)]


def _describe(command: argparse.ArgumentParser, name: str, summary: str) -> None:
    command.formatter_class = argparse.RawDescriptionHelpFormatter
    if not command.description and summary:
        command.description = summary[0].upper() + summary[1:] + "."
    examples = EXAMPLES.get(name)
    if examples and not command.epilog:
        command.epilog = "examples:\n" + "\n".join(f"  {line}" for line in examples)
    for action in command._actions:
        if isinstance(action, argparse._HelpAction | argparse._SubParsersAction):
            continue
        if action.help is None:
            action.help = ARGUMENT_HELP.get(action.dest)
        if action.help is not None and _shows_default(action):
            action.help += " (default: %(default)s)"


def _shows_default(action: argparse.Action) -> bool:
    if action.help is None or "default" in action.help or action.help == argparse.SUPPRESS:
        return False
    if isinstance(action, argparse._StoreTrueAction | argparse._StoreFalseAction):
        return False
    return action.default is not None and action.option_strings != []
