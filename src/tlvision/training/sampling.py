"""--sampler balanced: the fine-tuning route draws each class equally often.

Images are drawn with replacement, each with probability 1 / (its class's train size), as many
per epoch as there are train images (torch's WeightedRandomSampler). The sampler draws from the
loader's own generator, which `reseed_loader` sets from (seed, epoch), so a resumed run draws
what the uninterrupted one drew.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import torch
from torch.utils.data import DataLoader, WeightedRandomSampler

from tlvision.errors import UserError


def balanced_sampler(labels: Sequence[int], multi_label: bool) -> WeightedRandomSampler:
    if multi_label:
        raise UserError(
            "--sampler balanced: draws one class per image evenly, so it needs single-label "
            "data; on multi-label data pass --class-weights auto (positive weights) instead"
        )
    counts = Counter(int(label) for label in labels)
    weights = [1.0 / counts[int(label)] for label in labels]
    return WeightedRandomSampler(weights, num_samples=len(labels), replacement=True)


def use_loader_generator(loader: DataLoader[tuple[torch.Tensor, int]]) -> None:
    """Make a balanced sampler draw from the loader's generator (reseeded every epoch)."""
    if isinstance(loader.sampler, WeightedRandomSampler):
        loader.sampler.generator = loader.generator
