"""Fine-tuning variants after the head start, on one set of kept frozen-prefix activations.

    OMP_WAIT_POLICY=PASSIVE python benchmarks/finetune_variants.py \\
        ../shared/data/hymenoptera_data \\
        --variants '[{"rate": 0.001}, {"rate": 0.0003, "batchnorm": "eval"}]'

What `--strategy finetune` does by default, with one thing changed per variant: the prefix
(stem..stage2) runs once for the centre crop and 8 augmented views of each train image (shared
by every variant, so the variants differ in their training alone), the head starts on the top
codes (its last epoch), then 10 epochs train stage3 onwards.

A variant (JSON object) may set: "rate" (every trainable layer's, default 0.001:
the default's pretrained-layer rate, which the started head shares), "schedule" (step, cosine:
schedules.make_scheduler), "weight_decay", "label_smoothing", "batchnorm" ("train": the default,
running statistics follow the batches; "eval": every BatchNorm keeps ImageNet's statistics while
its weights train), "freeze_until" (a later stage than stage2), "average" (a weight in 0..1:
also score the weights averaged with the head start's, WiSE-FT style, after each epoch), "ema"
(a decay per step: also score the weights' exponential moving average after each epoch), "swa"
(k: also score the mean of the last k epochs' weights), "l2sp" (alpha: pull the pretrained layers
towards their starting weights, not zero, Li et al. 2018), "centre_view" ("drop": the 8
augmented views alone, without the train images' centre crop; "instead": the centre crop in
place of the eighth augmented view),
"test_crops" (a list of [crop, resize]: the final model's val accuracy on images decoded at those
sizes, the whole network run), "flip" (with test_crops: also average with the mirror image), "seed".
Prints one JSON line per variant: val accuracy after each epoch, the last is the final, and the
positions in val of the images the final model gets wrong.
"""

from __future__ import annotations

import argparse
import copy
import json
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from tlvision.config import TrainConfig
from tlvision.data.images import load_rgb_image
from tlvision.data.loading import reseed_loader
from tlvision.data.transforms import build_transforms
from tlvision.models.network import create_model, head_of
from tlvision.models.stages import stage_graph
from tlvision.training.finetune import HEAD_START_EPOCHS, keep_frozen_prefix, prefix_loaders
from tlvision.training.freezing import apply_finetuning, parameter_groups
from tlvision.training.frozen_prefix import (
    PrefixActivations,
    SkipPrefix,
    prefix_modules,
    start_head_from_codes,
)
from tlvision.training.loop import evaluate, train_one_epoch
from tlvision.training.schedules import make_scheduler
from tlvision.training.setup import seed_everything, set_up

CPU = torch.device("cpu")


def wrong_indices(network: nn.Module, loader: Any) -> list[int]:
    """Positions in the val split of the images the network gets wrong (eval mode)."""
    network.eval()
    wrong, position = [], 0
    with torch.no_grad():
        for inputs, labels, _unreadable in loader:
            predicted = network(inputs.to(memory_format=torch.channels_last)).argmax(1)
            wrong += [position + i for i in torch.nonzero(predicted != labels).flatten().tolist()]
            position += len(labels)
    return wrong


def test_accuracies(network: SkipPrefix, setup: Any, variant: dict[str, Any]) -> dict[str, float]:
    """The final model's val accuracy with val decoded at other sizes (the whole network runs)."""
    images = [load_rgb_image(path) for path, _ in setup.splits.samples["val"]]
    labels = torch.tensor([label for _, label in setup.splits.samples["val"]])
    network.eval()
    scores = {}
    for crop, resize in variant.get("test_crops", []):
        sizes = replace(setup.preprocessing, crop_size=crop, resize_size=resize)
        transform = build_transforms(sizes)["val"]
        for flip in [False, True] if variant.get("flip") else [False]:
            correct = 0
            with torch.no_grad():
                for start in range(0, len(images), 32):
                    batch = torch.stack([transform(image) for image in images[start : start + 32]])
                    batch = batch.to(memory_format=torch.channels_last)
                    probabilities = network.model(batch).softmax(1)
                    if flip:
                        probabilities += network.model(batch.flip(3)).softmax(1)
                    correct += int((probabilities.argmax(1) == labels[start : start + 32]).sum())
            scores[f"{crop}/{resize}{' flip' if flip else ''}"] = round(correct / len(images), 4)
    return scores


def averaged(start: dict[str, torch.Tensor], end: dict[str, torch.Tensor], weight: float) -> dict:
    return {
        key: (start[key].float() * (1 - weight) + value.float() * weight).to(value.dtype)
        if value.is_floating_point() else value
        for key, value in end.items()
    }  # fmt: skip


def run_variant(
    setup: Any, activations: PrefixActivations, variant: dict[str, Any]
) -> dict[str, Any]:
    seed = variant.get("seed", 0)
    config = replace(setup.config, seed=seed, schedule=variant.get("schedule", "step"))
    seed_everything(seed)
    model = create_model(setup.backbone, len(setup.splits.class_names), setup.weights)
    freeze_until = variant.get("freeze_until", "stage2")
    apply_finetuning(model, setup.backbone, freeze_until=freeze_until, backbone_lr_mult=0.1)
    model.to(memory_format=torch.channels_last)
    prefix = stage_graph(model, setup.backbone, ["stage2"])
    network = SkipPrefix(model, prefix_modules(setup.backbone, "stage2", prefix))
    head = start_head_from_codes(
        network, head_of(model, setup.backbone), activations, epochs=HEAD_START_EPOCHS,
        learning_rate=config.learning_rate, batch_size=config.batch_size, seed=seed,
        class_weights=None, log=lambda _line: None,
    )  # fmt: skip
    rate = variant.get("rate", 0.001)
    groups = parameter_groups(
        model, setup.backbone, learning_rate=rate, backbone_lr_mult=1.0
    )  # the started head trains at the body's rate, as the default does
    optimizer = torch.optim.SGD(
        groups, lr=rate, momentum=0.9, weight_decay=variant.get("weight_decay", 0.0)
    )
    loaders = prefix_loaders(activations, replace(setup, config=config))
    epochs = 10
    scheduler = make_scheduler(
        optimizer, config.schedule, epochs=epochs, steps_per_epoch=len(loaders["train"])
    )
    criterion = nn.CrossEntropyLoss(label_smoothing=variant.get("label_smoothing", 0.0))
    start_state = copy.deepcopy(model.state_dict())
    accuracies, averaged_accuracies, ema_accuracies = [], [], []
    ema_state = copy.deepcopy(model.state_dict()) if "ema" in variant else None

    def update_ema() -> None:  # the exponential moving average of the weights, each step
        if ema_state is None:
            return
        with torch.no_grad():
            for key, value in model.state_dict().items():
                if value.is_floating_point():
                    ema_state[key].mul_(variant["ema"]).add_(value, alpha=1 - variant["ema"])
                else:
                    ema_state[key].copy_(value)

    # L2-SP (Li et al. 2018): pull the pretrained layers towards their starting point, not zero
    head_names = {id(parameter) for parameter in head_of(model, setup.backbone).parameters()}
    anchors = [
        (parameter, parameter.detach().clone())
        for parameter in model.parameters()
        if parameter.requires_grad and id(parameter) not in head_names
    ]

    if "l2sp" in variant:  # its gradient, alpha (w - w0), added to each anchored weight's
        for parameter, start in anchors:
            parameter.register_hook(
                lambda grad, p=parameter, s=start: grad + variant["l2sp"] * (p.detach() - s)
            )

    epoch_states: list[dict[str, torch.Tensor]] = []
    swa_accuracies: list[float] = []
    started = time.perf_counter()
    for epoch in range(1, epochs + 1):
        loaders["train"].dataset.set_epoch(epoch)
        reseed_loader(loaders["train"], seed, epoch)
        train_one_epoch(
            network, loaders["train"], criterion, optimizer, scheduler, CPU,
            keep_batchnorm_statistics=variant.get("batchnorm", "train") == "eval",
            on_step=update_ema,
        )  # fmt: skip
        accuracies.append(round(evaluate(network, loaders["val"], criterion, CPU)[1], 4))
        if "average" in variant:
            end_state = copy.deepcopy(model.state_dict())
            model.load_state_dict(averaged(start_state, end_state, variant["average"]))
            score = evaluate(network, loaders["val"], criterion, CPU)[1]
            averaged_accuracies.append(round(score, 4))
            model.load_state_dict(end_state)
        if "swa" in variant:  # the mean of the last `swa` epochs' weights
            epoch_states.append(copy.deepcopy(model.state_dict()))
            recent = epoch_states[-variant["swa"] :]
            end_state = epoch_states[-1]
            mean = {
                key: torch.stack([state[key].float() for state in recent]).mean(0).to(value.dtype)
                if value.is_floating_point() else value
                for key, value in end_state.items()
            }  # fmt: skip
            model.load_state_dict(mean)
            swa_accuracies.append(round(evaluate(network, loaders["val"], criterion, CPU)[1], 4))
            model.load_state_dict(end_state)
        if ema_state is not None:
            end_state = copy.deepcopy(model.state_dict())
            model.load_state_dict(ema_state)
            ema_accuracies.append(round(evaluate(network, loaders["val"], criterion, CPU)[1], 4))
            model.load_state_dict(end_state)
    return {
        "variant": variant, "head_start": round(head, 4), "by_epoch": accuracies,
        "wrong": wrong_indices(network, loaders["val"]),
        "test_crops": test_accuracies(network, setup, variant),
        "final": accuracies[-1], "averaged_by_epoch": averaged_accuracies,
        "ema_by_epoch": ema_accuracies, "swa_by_epoch": swa_accuracies,
        "seconds": round(time.perf_counter() - started, 1),
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("data", type=Path)
    parser.add_argument("--variants", default='[{"rate": 0.001}]')
    arguments = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        config = TrainConfig(
            data_dir=arguments.data, out_dir=Path(scratch) / "run", strategy="finetune"
        )
        setup = set_up(config, print, fresh=True)
        model = create_model(setup.backbone, len(setup.splits.class_names), setup.weights)
        apply_finetuning(model, setup.backbone, freeze_until="stage2", backbone_lr_mult=0.1)
        kept = keep_frozen_prefix(setup, model.to(memory_format=torch.channels_last), print)
        assert kept is not None, "mobilenet_v2 runs from after stage2"
        variants = json.loads(arguments.variants)
        for variant in variants:
            print(json.dumps(run_variant(setup, kept_views(kept[0], variant), variant)), flush=True)


def kept_views(activations: PrefixActivations, variant: dict[str, Any]) -> PrefixActivations:
    """The run's kept views (view 0: the centre crop, then 8 augmented ones), or those the
    variant's "centre_view" asks for: "drop" (the 8 augmented alone, the default before
    624ad7f) or "instead" (the centre crop in place of the last augmented view)."""
    views = activations.train_views
    choice = variant.get("centre_view")
    if choice == "drop":
        return replace(activations, train_views=views[1:])
    if choice == "instead":
        return replace(activations, train_views=(*views[1:-1], views[0]))
    return activations


if __name__ == "__main__":
    main()
