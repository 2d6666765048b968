"""Images into batches: decoded on demand, unreadable files dropped from the batch and named,
epochs reseeded so that a resumed run draws what the uninterrupted one drew."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, Sampler

from tlvision.compute.cores import usable_cores
from tlvision.data.images import BadImageError, load_rgb_image

UNREADABLE = -1  # the label ImageDataset gives a file it cannot decode (see collate_readable)


class ImageDataset(Dataset[tuple[torch.Tensor, int]]):
    """A list of (image path, class index) with a transform; images are decoded on demand.

    A file that cannot be decoded (truncated, not an image, a decompression bomb) yields an
    empty tensor and the label UNREADABLE - index - ... so that `collate_readable` can drop it
    from the batch and report which sample it was: one broken JPEG must not end a run.
    """

    def __init__(
        self,
        samples: Sequence[tuple[Path, int]],
        class_names: Sequence[str],
        transform: Callable[[Image.Image], torch.Tensor],
    ) -> None:
        self.samples = list(samples)
        self.class_names = list(class_names)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        path, label = self.samples[index]
        try:
            image = load_rgb_image(path)
        except BadImageError:
            return torch.empty(0), UNREADABLE - index
        return self.transform(image), label


def collate_readable(
    batch: Sequence[tuple[torch.Tensor, int]],
) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    """Stack the decodable samples; return (images, labels, dataset indices of unreadable ones)."""
    good = [(image, label) for image, label in batch if label > UNREADABLE]
    unreadable = [UNREADABLE - label for _, label in batch if label <= UNREADABLE]
    if not good:
        return torch.empty(0, 3, 1, 1), torch.empty(0, dtype=torch.long), unreadable
    images = torch.stack([image for image, _ in good])
    labels = torch.tensor([label for _, label in good], dtype=torch.long)
    return images, labels, unreadable


def default_num_workers() -> int:
    """Loader processes (and predict's decoding threads): one per core, up to 8.

    For predict, 2 decoding threads beside ONNX Runtime's 2 measured 98 img/s against 64 with
    one (benchmarks/RESULTS.md, streaming predict): the forward's threads leave gaps to fill.

    Decoding JPEGs in the main process stalls the model. With OpenMP's passive wait policy
    (tlvision.compute.devices.prefer_passive_waiting) the model's idle threads yield to the
    loaders, so one worker per core measured fastest on 2 cores: 9.6 s an epoch against 14.5 s
    with one worker.
    """
    return min(8, usable_cores())


def make_loader(
    dataset: Dataset[tuple[torch.Tensor, int]],
    *,
    batch_size: int,
    shuffle: bool,
    num_workers: int,
    seed: int,
    pin_memory: bool = False,
    sampler: Sampler[int] | None = None,
) -> DataLoader[tuple[torch.Tensor, int]]:
    """A loader that drops unreadable files from its batches (`collate_readable`); `sampler` (a
    rank's share, see tlvision.compute.distributed) replaces the shuffle when given."""
    generator = torch.Generator()
    generator.manual_seed(seed)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle and sampler is None,
        sampler=sampler,
        num_workers=num_workers,
        generator=generator,
        pin_memory=pin_memory,
        collate_fn=collate_readable,
    )


def reseed_loader(loader: DataLoader[tuple[torch.Tensor, int]], seed: int, epoch: int) -> None:
    """Make an epoch's shuffle order and augmentations depend only on (seed, epoch).

    Workers are started afresh each epoch and seeded from the loader's generator, so a run
    resumed at epoch N draws exactly what the uninterrupted run drew at epoch N.
    """
    if loader.generator is not None:
        loader.generator.manual_seed(seed * 100_003 + epoch)


def inverse_frequency_weights(counts: list[int]) -> list[float]:
    """n_total / (n_classes * n_class), scikit-learn's "balanced" class weights: each class
    contributes equally to the loss (a train split never has an empty class: scan_split and
    the held-out split refuse one)."""
    from sklearn.utils.class_weight import compute_class_weight

    labels = np.arange(len(counts))
    weights = compute_class_weight("balanced", classes=labels, y=np.repeat(labels, counts))
    return [float(weight) for weight in weights]
