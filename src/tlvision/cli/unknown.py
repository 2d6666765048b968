"""The commands about what the model does not know: `tlvision calibrate` (the rejection threshold
of unknown inputs: for runs trained before training wrote it, or with another score),
`label-next` (which unlabelled images to label next) and `add-labels` (the labelled ones
copied into a dataset)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from tlvision.jsonio import json_text
from tlvision.runs.layout import CODE_DISTANCE, OOD_SCORES

if TYPE_CHECKING:
    Commands = argparse._SubParsersAction[argparse.ArgumentParser]


def add_commands(commands: Commands) -> None:
    calibrate = commands.add_parser(
        "calibrate",
        help="the threshold above which an input is unknown (predict --reject), from val",
    )
    calibrate.add_argument("run_dir", type=Path, metavar="RUN_DIR")
    calibrate.add_argument(
        "--data", type=Path, metavar="DATA",
        help="a dataset with the model's classes (default: the run's own data and val split)",
    )  # fmt: skip
    calibrate.add_argument(
        "--val-rejected", type=float, default=0.05,
        help="the share of val images the threshold may reject (default %(default)s)",
    )  # fmt: skip
    calibrate.add_argument(
        "--score", default=CODE_DISTANCE, choices=OOD_SCORES,
        help="code-distance (default: to the nearest train codes, stored in the run beside "
        "rejection.json), or energy / max-softmax (from the logits alone)",
    )  # fmt: skip
    calibrate.add_argument("--json", action="store_true", help="print rejection.json")
    calibrate.set_defaults(handler=command_calibrate)
    add_labelling_commands(commands)


def command_calibrate(arguments: argparse.Namespace) -> int:
    from tlvision import api

    document = api.load(arguments.run_dir).calibrate(
        data=arguments.data, val_rejected=arguments.val_rejected, score=arguments.score
    )
    if arguments.json:
        print(json_text(document))
    else:
        print(
            f"{arguments.run_dir}/rejection.json: {document['score']} above "
            f"{document['threshold']:.4f} is unknown; rejects {document['val_rejected']:.1%} of "
            f"{document['val_images']} val images"
        )
    return 0


def add_labelling_commands(commands: Commands) -> None:
    label_next = commands.add_parser(
        "label-next", help="which unlabelled images to label next: uncertain and spread out"
    )
    label_next.add_argument("run_dir", type=Path, metavar="RUN_DIR")
    label_next.add_argument("pool", type=Path, nargs="+", metavar="POOL", help="images or folders")
    label_next.add_argument("-n", type=int, default=20, help="how many (default %(default)s)")
    label_next.add_argument(
        "--out", type=Path, metavar="DIR",
        help="where the CSV to fill in and the contact sheet go (default RUN_DIR/label-next)",
    )  # fmt: skip
    label_next.add_argument(
        "--data", type=Path, metavar="DATA", help="the labelled data (default: the run's own)"
    )
    label_next.add_argument("--device", default="auto")
    label_next.add_argument("--json", action="store_true", help="print the picks as JSON")
    label_next.set_defaults(handler=command_label_next)
    add = commands.add_parser(
        "add-labels", help="copy the rows of label-next's CSV with a class into DATA/train/<class>"
    )
    add.add_argument("csv", type=Path, metavar="CSV")
    add.add_argument(
        "data",
        type=Path,
        metavar="DATA",
        help="the dataset whose train/<class>/ folders get copies",
    )
    add.set_defaults(handler=command_add_labels)


def command_label_next(arguments: argparse.Namespace) -> int:
    import sys

    from tlvision import api

    result = api.load(arguments.run_dir).label_next(
        arguments.pool, arguments.n, out=arguments.out, data=arguments.data,
        device=arguments.device,
    )  # fmt: skip
    for path, reason in result.unreadable:
        print(f"skipped {path}: {reason}", file=sys.stderr)
    if arguments.json:
        print(json_text(result.to_json()))
    else:
        for item in result.suggestions:
            print(f"{item.file}: {item.top[0][0]} {item.top[0][1]:.3f} (score {item.score:.3f})")
    if len(result.suggestions) < arguments.n:
        print(
            f"only {len(result.suggestions)} picks: the other pool images are near-duplicates "
            "of train images or of the picks",
            file=sys.stderr,
        )
    print(
        f"{len(result.suggestions)} of {result.pool_images} pool images; fill in the class "
        f"column of {result.csv}, then `tlvision add-labels {result.csv} DATA`; contact sheet: "
        f"{result.sheet}",
        file=sys.stderr,
    )
    return 0


def command_add_labels(arguments: argparse.Namespace) -> int:
    from tlvision import api

    written = api.add_labels(arguments.csv, arguments.data)
    print(f"copied {len(written)} labelled images into {arguments.data / 'train'}")
    return 0
