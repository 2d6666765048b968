"""Fine-tuning above a frozen prefix: the prefix runs once per image and view, not every epoch.

With the stages up to `freeze_until` frozen (weights fixed, BatchNorm in eval mode), their output
for a given input image never changes. So instead of decoding, augmenting and running them in
every epoch, `compute_prefix` runs them once for each train image's centre crop (val's resize and
crop) and `views` fixed augmented views of it (a crop and flip seeded by (seed, view, the image's
bytes)), as the frozen routes' cached codes are made, and once for each val image's centre crop.
It keeps the outputs in memory: train views as float16 (half the memory; about 1e-3 relative
rounding, far below what augmentation changes), val as float32, so that the val metrics are the
saved model's on the images. An epoch then draws one view per train image, seeded by (seed,
epoch) alone, so a resumed run draws what the uninterrupted one drew, and `SkipPrefix` runs the
model from the first trainable stage on.

`start_head_from_codes` trains the new head on the pooled top codes of those same views before
the first epoch (seconds), so fine-tuning starts from the feature-extract solution rather than a
random head. Measured gains are in benchmarks/RESULTS.md ("Fine-tuning fast").
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn
from torch.utils.data import Dataset

from tlvision.codes.cache import VAL_VIEW, View, sha256_hex, train_views
from tlvision.codes.onnx_forward import Forward, fastest_forward
from tlvision.config import TrainConfig
from tlvision.data.images import BadImageError, decode_image_rgb
from tlvision.data.loading import UNREADABLE, make_loader
from tlvision.errors import UserError
from tlvision.models.backbone import BackboneSpec, Stage
from tlvision.progress import progress_bar
from tlvision.training.freezing import frozen_stage
from tlvision.training.heads import HeadTraining, train_linear_head
from tlvision.training.strategy import views_of

Transform = Callable[[Image.Image], torch.Tensor]
Log = Callable[[str], None]
TRAIN_DTYPE = torch.float16  # the kept train views; val stays float32 (see the module's doc)


@dataclass(frozen=True)
class PrefixActivations:
    """The frozen prefix's outputs: `train_views[v][i]` for train image i under view v, `val[i]`
    for val image i; images unreadable in any pass are left out and listed in `skipped`."""

    train_views: tuple[torch.Tensor, ...]
    train_labels: torch.Tensor
    val: torch.Tensor
    val_labels: torch.Tensor
    skipped: tuple[Path, ...]

    @property
    def megabytes(self) -> float:
        tensors = (*self.train_views, self.val)
        return sum(tensor.numel() * tensor.element_size() for tensor in tensors) / 1e6


class _ViewedImages(Dataset[tuple[torch.Tensor, int]]):
    """Sample i under every view, stacked (views x C x H x W): the file is read and decoded once
    for all its views, and each view is the same crop and flip in any run, process or worker."""

    def __init__(
        self,
        samples: Sequence[tuple[Path, int]],
        transforms: dict[str, Transform],
        views: Sequence[View],
    ) -> None:
        self.samples, self.transforms, self.views = list(samples), transforms, list(views)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        path, label = self.samples[index]
        try:
            data = Path(path).read_bytes()
            rgb, _notes = decode_image_rgb(data, path)
        except (OSError, BadImageError):
            return torch.empty(0), UNREADABLE - index
        return torch.stack([self._view(rgb, view, data) for view in self.views]), label

    def _view(self, rgb: Image.Image, view: View, data: bytes) -> torch.Tensor:
        transform = self.transforms[view.phase]  # the centre view is val's resize and crop
        if view.augment is None:
            return transform(rgb)
        with torch.random.fork_rng(devices=[]):  # the run's own random stream is not touched
            torch.manual_seed(view.image_seed(sha256_hex(data)))
            return transform(rgb)


@torch.inference_mode()
def _run_prefix(
    prefix: nn.Module,
    output: str,
    dataset: _ViewedImages,
    *,
    batch_size: int,
    num_workers: int,
    device: torch.device,
    description: str,
    dtype: torch.dtype,
) -> tuple[torch.Tensor | None, torch.Tensor]:
    """(outputs of every sample, samples x views x ..., zeros where unreadable; a mask of the
    readable samples). A batch holds about `batch_size` views: batch_size // views images."""
    views = len(dataset.views)
    loader = make_loader(
        dataset, batch_size=max(1, batch_size // views), shuffle=False,
        num_workers=num_workers, seed=0,
    )  # fmt: skip
    readable = torch.ones(len(dataset), dtype=torch.bool)
    outputs: torch.Tensor | None = None
    forward: Forward | None = None  # torch or ONNX Runtime, chosen at the first batch
    start = 0
    total = len(dataset) * views
    with progress_bar(total=total, desc=description, unit="view", leave=False) as bar:
        for images, labels, unreadable in loader:
            readable[list(unreadable)] = False
            size = len(labels) + len(unreadable)
            if len(labels):
                rows = [i for i in range(start, start + size) if readable[i]]
                flat = images.flatten(0, 1).to(device, memory_format=torch.channels_last)
                forward = forward or fastest_forward(prefix, flat, total, device)
                result = forward(flat)[output].to("cpu", dtype)
                result = result.reshape(len(labels), views, *result.shape[1:])
                if outputs is None:
                    outputs = torch.zeros((len(dataset), *result.shape[1:]), dtype=dtype)
                outputs[rows] = result
            start += size
            bar.update(size * views)
    return outputs, readable


def kept_train_views(views: int, seed: int) -> tuple[View, ...]:
    """Each train image's centre crop, as val sees it, then `views` seeded augmented views, as
    the frozen routes' codes are made. Keeping the centre crop too gained final val accuracy on
    7 of 9 set-and-seed pairs measured (benchmarks/RESULTS.md, "Fine-tuning fast")."""
    return (VAL_VIEW, *train_views(views, seed))


# The kept outputs may take this share of the memory available when a run starts; the rest is
# for the model, its optimizer, the batches and whatever else the machine runs.
KEPT_MEMORY_SHARE = 0.5


def values_per_view(stage: Stage, crop_size: int) -> int:
    """Numbers in one image's kept output of `stage` (stride-s convolutions round sizes up)."""
    side = math.ceil(crop_size / stage.stride)
    return stage.channels * side * side


def kept_bytes(train_images: int, val_images: int, kept_views: int, values: int) -> int:
    """Memory the kept outputs take: train views as TRAIN_DTYPE, val as float32."""
    train_bytes = train_images * kept_views * values * TRAIN_DTYPE.itemsize
    return train_bytes + val_images * values * torch.float32.itemsize


def views_that_fit(
    requested: int, train_images: int, val_images: int, values: int, budget_bytes: int
) -> int:
    """The most augmented views, up to `requested`, whose outputs fit in `budget_bytes` beside
    each image's centre crop; 0 when not even one does (the whole model then runs each epoch)."""
    for views in range(requested, 0, -1):
        if kept_bytes(train_images, val_images, 1 + views, values) <= budget_bytes:
            return views
    return 0


def fit_kept_views(
    config: TrainConfig,
    backbone: BackboneSpec,
    image_counts: tuple[int, int],
    crop_size: int,
    available_bytes: int | None,
    log: Log,
) -> TrainConfig:
    """`config` with --views lowered, and said so, where the kept outputs of the views it asks
    for would take more than KEPT_MEMORY_SHARE of `available_bytes` (None: not known, no cap).
    A fresh run records the result, so a resumed one keeps the same views."""
    stage, requested = frozen_stage(config), views_of(config)
    if stage is None or requested == 0 or available_bytes is None:
        return config
    values = values_per_view(backbone.stage(stage), crop_size)
    train_images, val_images = image_counts
    budget = int(available_bytes * KEPT_MEMORY_SHARE)
    views = views_that_fit(requested, train_images, val_images, values, budget)
    if views == requested:
        return config
    needed = kept_bytes(train_images, val_images, 1 + requested, values) / 1e9
    over = (
        f"keeping the frozen prefix's outputs for the centre crop and {requested} views of "
        f"{train_images} train images would take {needed:.1f} GB, over "
        f"{KEPT_MEMORY_SHARE:.0%} of the {available_bytes / 1e9:.1f} GB of memory available"
    )
    if views:
        log(f"note: {over}; keeping {views} views (--views sets the number)")
    else:
        log(f"note: {over}, and 1 view would not fit either; the whole model runs each epoch")
    return replace(config, views=views)


def compute_prefix(
    prefix: nn.Module,
    output: str,
    samples: dict[str, list[tuple[Path, int]]],
    transforms: dict[str, Transform],
    *,
    views: int,
    seed: int,
    batch_size: int,
    num_workers: int,
    device: torch.device,
) -> PrefixActivations:
    """Run `prefix` (`stage_graph` up to the last frozen stage, whose output is named `output`)
    once over the centre crop and `views` augmented views of the train images (`kept_train_views`)
    and once over the val images.

    Forward passes alone, like feature extraction: loader processes decode beside them (on 2
    cores, an epoch of forward passes took 9.6 s with 2 workers and 14.8 s with none)."""
    prefix.eval()
    kept_views = kept_train_views(views, seed)
    train_outputs, readable = _run_prefix(
        prefix, output, _ViewedImages(samples["train"], transforms, kept_views),
        batch_size=batch_size, num_workers=num_workers, device=device,
        description=f"frozen prefix, centre + {views} train views", dtype=TRAIN_DTYPE,
    )  # fmt: skip
    val_outputs, val_readable = _run_prefix(
        prefix, output, _ViewedImages(samples["val"], transforms, [VAL_VIEW]),
        batch_size=batch_size, num_workers=num_workers, device=device,
        description="frozen prefix, val", dtype=torch.float32,
    )  # fmt: skip
    if train_outputs is None or val_outputs is None:
        raise UserError("no readable train or val image to fine-tune on; run `tlvision check DATA`")
    keep, keep_val = readable.nonzero().flatten(), val_readable.nonzero().flatten()
    skipped = [samples["train"][i][0] for i in (~readable).nonzero().flatten().tolist()]
    skipped += [samples["val"][i][0] for i in (~val_readable).nonzero().flatten().tolist()]
    return PrefixActivations(
        train_views=tuple(
            train_outputs[keep, view].contiguous() for view in range(len(kept_views))
        ),
        train_labels=torch.tensor([label for _, label in samples["train"]])[keep],
        val=val_outputs[keep_val, 0].contiguous(),
        val_labels=torch.tensor([label for _, label in samples["val"]])[keep_val],
        skipped=tuple(skipped),
    )


class PrefixViews(Dataset[tuple[torch.Tensor, int]]):
    """Train items from the kept activations: each epoch one view per image (`set_epoch`)."""

    def __init__(self, activations: PrefixActivations, seed: int) -> None:
        self.activations, self.seed = activations, seed
        self.view_of = torch.zeros(len(activations.train_labels), dtype=torch.long)

    def set_epoch(self, epoch: int) -> None:
        """The views of `epoch`, from (seed, epoch) alone: a resumed epoch draws the same."""
        generator = torch.Generator().manual_seed(self.seed * 100_019 + epoch)
        count = len(self.activations.train_views)
        self.view_of = torch.randint(count, (len(self.view_of),), generator=generator)

    def __len__(self) -> int:
        return len(self.activations.train_labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        view = self.activations.train_views[int(self.view_of[index])]
        return view[index].float(), int(self.activations.train_labels[index])


class PrefixVal(Dataset[tuple[torch.Tensor, int]]):
    def __init__(self, activations: PrefixActivations) -> None:
        self.activations = activations

    def __len__(self) -> int:
        return len(self.activations.val_labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.activations.val[index].float(), int(self.activations.val_labels[index])


def prefix_modules(backbone: BackboneSpec, stage: str, prefix: nn.Module) -> list[str]:
    """The module paths that make up the frozen prefix: the stages up to and including `stage`,
    and any other module its traced graph calls (ResNet's stem ReLU and max pool)."""
    paths: list[str] = []
    for each in backbone.stages:
        paths.extend(each.modules)
        if each.name == stage:
            break
    called = prefix.graph.nodes if isinstance(prefix, torch.fx.GraphModule) else ()
    for node in called:
        target = str(node.target)
        inside = any(target == path or target.startswith(path + ".") for path in paths)
        if node.op == "call_module" and not inside:
            paths.append(target)
    return paths


class _PassThrough(nn.Module):
    """Stands in for a frozen module: returns its input (whatever else the caller passes)."""

    def forward(self, inputs: torch.Tensor, *_args: object, **_options: object) -> torch.Tensor:
        return inputs


class SkipPrefix(nn.Module):
    """The model run from the first trainable stage on: fed the prefix's output, it swaps the
    frozen modules for pass-throughs during its forward pass only, so `model` itself (its state
    dict, checkpoints, the saved run) stays whole. `matches` checks that the model really is a
    plain sequence of its stages (every registered backbone is); otherwise do not use this."""

    def __init__(self, model: nn.Module, paths: Sequence[str]) -> None:
        super().__init__()
        self.model, self.paths = model, list(paths)

    @contextmanager
    def _skipped(self) -> Iterator[None]:
        originals = {path: self.model.get_submodule(path) for path in self.paths}
        try:
            for path in self.paths:
                self._put(path, _PassThrough())
            yield
        finally:
            for path, module in originals.items():
                self._put(path, module)

    def _put(self, path: str, module: nn.Module) -> None:
        parent_path, _, name = path.rpartition(".")
        setattr(self.model.get_submodule(parent_path) if parent_path else self.model, name, module)

    def forward(self, activations: torch.Tensor) -> torch.Tensor:
        with self._skipped():
            output: torch.Tensor = self.model(activations)
        return output

    @torch.inference_mode()
    def matches(self, prefix: nn.Module, output: str, input_size: int) -> bool:
        """Whether model(x) equals self(prefix(x)) in eval mode, on two random images."""
        modes = {module: module.training for module in self.model.modules()}
        try:
            self.model.eval()
            device = next(self.model.parameters()).device
            images = torch.randn(2, 3, input_size, input_size, generator=torch.Generator())
            images = images.to(device, memory_format=torch.channels_last)
            whole = self.model(images)
            return bool(torch.allclose(whole, self(prefix(images)[output]), atol=1e-4))
        except (TypeError, RuntimeError):  # a model whose forward is not its stages in turn
            return False
        finally:
            for module, mode in modes.items():
                module.train(mode)


@torch.inference_mode()
def top_codes(network: SkipPrefix, head: nn.Linear, inputs: torch.Tensor) -> np.ndarray:
    """The head's input (the top codes) for each row of `inputs`, in eval mode."""
    captured: list[torch.Tensor] = []
    hook = head.register_forward_hook(lambda _m, args, _out: captured.append(args[0].cpu()))
    device = head.weight.device
    try:
        network.eval()
        for start in range(0, len(inputs), 64):
            batch = inputs[start : start + 64].float()
            network(batch.to(device, memory_format=torch.channels_last))
    finally:
        hook.remove()
    return torch.cat(captured).float().numpy()


def start_head_from_codes(
    network: SkipPrefix,
    head: nn.Linear,
    activations: PrefixActivations,
    *,
    epochs: int,
    learning_rate: float,
    batch_size: int,
    seed: int,
    class_weights: Sequence[float] | None,
    log: Log,
) -> float:
    """Train `head` (in place) on the top codes of every kept view, as feature-extract would;
    returns its val accuracy. The head is its last epoch's: choosing the best epoch on val would
    let val/ steer the training whose final number val/ then reports."""
    started = time.perf_counter()
    train_codes = [top_codes(network, head, view) for view in activations.train_views]
    val_codes = top_codes(network, head, activations.val)
    training = HeadTraining(
        epochs=epochs, learning_rate=learning_rate, batch_size=batch_size, seed=seed,
        keep_best=False,
    )  # fmt: skip
    layer, history = train_linear_head(
        train_codes, activations.train_labels.numpy(), val_codes, activations.val_labels.numpy(),
        num_classes=head.out_features, training=training, init=head, class_weights=class_weights,
    )  # fmt: skip
    with torch.no_grad():
        head.weight.copy_(layer.weight)
        head.bias.copy_(layer.bias)
    accuracy = history[-1]["val_acc"]
    log(
        f"head started on the top codes of the kept views: val acc {accuracy:.4f} "
        f"({time.perf_counter() - started:.1f}s)"
    )
    return float(accuracy)
