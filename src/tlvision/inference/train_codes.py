"""The train images' codes the code-space ood score compares with, as the saved model sees them.

The codes are the head's input (the top codes, or a linear probe's stage codes), of the train
images at the val view (no augmentation), made by tlvision.codes.extract_codes: for a frozen
body with the run's codes cache, so they are the codes the head was trained on, read back; for
a trained body without it, one pass of the saved model. At most MAX_TRAIN_CODES images, a
seeded sample, are kept (rejection.json says how many): the score compares each input with all
of them, so their number is the score's cost (5,000 x 1,280 is about 6.4 M multiply-adds an
image, 2% of MobileNetV2's 300 M) and the export's size (float16: 12.8 MB).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from tlvision.codes.cache import VAL_VIEW, CodesSpec, FeatureCache, default_cache_dir
from tlvision.codes.extraction import UnreadableImagesError, extract_codes
from tlvision.errors import UserError
from tlvision.models.stages import PooledStage, StageClassifier, StageCodes
from tlvision.runs.reader import LoadedModel

MAX_TRAIN_CODES = 5000  # train images whose codes are stored (a seeded sample above it)


def sampled(count: int, cap: int, seed: int) -> list[int]:
    """All positions of `count` items, or `cap` of them drawn with `seed`, in order."""
    if cap < 1:
        raise UserError(f"--max-train-codes {cap}: must be at least 1")
    if count <= cap:
        return list(range(count))
    return sorted(int(index) for index in np.random.default_rng(seed).choice(count, cap, False))


def codes_cache(config: dict[str, object], frozen_body: bool) -> FeatureCache | None:
    """The run's codes cache for a frozen body (the head's training codes are in it); none for
    a trained body, whose codes no other run would read."""
    if not frozen_body or config.get("no_cache"):
        return None
    root = Path(str(config["cache_dir"])) if config.get("cache_dir") else default_cache_dir()
    return FeatureCache(root, log=lambda _message: None)


@torch.inference_mode()
def train_codes(
    loaded: LoadedModel,
    paths: Sequence[Path],
    *,
    weights_label: str,
    device: torch.device,
    cache: FeatureCache | None,
) -> np.ndarray:
    """(N, C) float32 codes of the readable files of `paths` (unreadable ones left out)."""
    model = loaded.model
    if isinstance(model, StageClassifier):
        extractor: nn.Module = PooledStage(model.body, model.stage)
        stage: str | None = model.stage
    else:
        extractor, stage = StageCodes(model, loaded.backbone, [None]), None
    spec = CodesSpec(loaded.backbone.name, weights_label, loaded.preprocessing, stage, VAL_VIEW)
    kept = list(paths)
    while kept:
        try:
            found = extract_codes(
                extractor, kept, specs=[spec], cache=cache, device=device,
                description="train codes", log=lambda _message: None,
            )  # fmt: skip
            return np.array(found[stage], dtype=np.float32)
        except UnreadableImagesError as error:
            bad = {path for path, _reason in error.images}
            kept = [path for path in kept if path not in bad]
    raise UserError("no readable train images to store the codes of (the ood score needs them)")
