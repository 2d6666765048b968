"""`tlvision backbones` and `tlvision weights`: the registered networks, their stages and where
their pretrained weights come from."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from tlvision.config import DEFAULT_BACKBONE

if TYPE_CHECKING:
    Commands = argparse._SubParsersAction[argparse.ArgumentParser]


def add_commands(commands: Commands) -> None:
    weights = commands.add_parser("weights", help="fetch or list pretrained weights")
    actions = weights.add_subparsers(dest="weights_command", required=True, metavar="ACTION")
    fetch = actions.add_parser("fetch", help="put weights into the torch hub cache")
    fetch.add_argument("name", metavar="BACKBONE[:WEIGHTS]", help="e.g. mobilenet_v2")
    fetch.set_defaults(handler=command_weights_fetch)
    listing = actions.add_parser("list", help="known weights and whether cached")
    listing.set_defaults(handler=command_weights_list)

    backbones = commands.add_parser("backbones", help="list backbones and their stages")
    backbones.set_defaults(handler=command_backbones)


def command_weights_fetch(arguments: argparse.Namespace) -> int:
    from tlvision.models.backbone import get_backbone
    from tlvision.models.weights import ensure_weights_file

    backbone_name, _, weights_name = arguments.name.partition(":")
    backbone = get_backbone(backbone_name)
    spec = backbone.weights_named(weights_name) if weights_name else backbone.default_weights
    print(f"{backbone.name} {spec.name}: {ensure_weights_file(spec)}")
    return 0


def command_weights_list(arguments: argparse.Namespace) -> int:
    from tlvision.models.backbone import BACKBONES, get_backbone
    from tlvision.models.weights import hub_checkpoints_dir

    cache = hub_checkpoints_dir()
    rows = [
        (
            f"{name}:{spec.name}",
            "cached" if (cache / spec.filename).is_file() else "-",
            ", ".join(spec.sources),
        )
        for name in BACKBONES
        for spec in get_backbone(name).weights
    ]
    width = max(len(row[0]) for row in rows)
    print(f"hub cache: {cache}")
    for label, state, where in rows:
        print(f"{label:<{width}}  {state:<6}  {where}")
    return 0


def command_backbones(arguments: argparse.Namespace) -> int:
    from tlvision.models.backbone import BACKBONES, get_backbone

    for name in BACKBONES:
        spec = get_backbone(name)
        default = " (default)" if name == DEFAULT_BACKBONE else ""
        size = spec.default_weights.preprocessing.crop_size
        stages = ", ".join(
            f"{stage.name} ({stage.channels} ch, stride {stage.stride})" for stage in spec.stages
        )
        print(
            f"{name}{default}: {spec.feature_size} features, head {spec.head}, input {size} px, "
            f"weights {', '.join(w.name for w in spec.weights)}, stages {stages}"
        )
    return 0
