"""The codes and class probabilities of images, through the run's own body and head.

The codes are the ones the head reads (the top codes, or a linear probe's stage codes), made by
tlvision.codes.extract_codes with the run's cache: a pool seen before is read back, not
computed again (the body's exact tensors are part of the cache key, so a fine-tuned body's
codes never mix with the pretrained one's). The head then runs on the codes alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from tlvision.codes.cache import VAL_VIEW, CodesSpec, FeatureCache, default_cache_dir
from tlvision.codes.extraction import UnreadableImagesError, extract_codes
from tlvision.models.network import head_of
from tlvision.models.stages import PooledStage, StageCodes
from tlvision.runs.reader import LoadedModel


@dataclass(frozen=True)
class PoolCodes:
    paths: tuple[Path, ...]  # the readable images, in the order given
    codes: np.ndarray  # (N, C) float32
    probabilities: np.ndarray  # (N, classes)
    logits: np.ndarray  # (N, classes): the head's output on the codes
    unreadable: tuple[tuple[Path, str], ...]  # (file, why), left out


def _extractor(loaded: LoadedModel) -> tuple[nn.Module, nn.Module, str | None]:
    stage = loaded.metadata.get("stage")
    if stage:
        body, head = loaded.model.get_submodule("body"), loaded.model.get_submodule("head")
        return PooledStage(body, stage), head, stage
    return (
        StageCodes(loaded.model, loaded.backbone, [None]),
        head_of(loaded.model, loaded.backbone),
        None,
    )


def cache_root(loaded: LoadedModel) -> Path | None:
    """The codes cache the run trained with (None: it kept its codes in memory)."""
    config = loaded.metadata.get("config", {})
    if config.get("no_cache"):
        return None
    return Path(config["cache_dir"]) if config.get("cache_dir") else default_cache_dir()


def _cache(loaded: LoadedModel) -> FeatureCache | None:
    root = cache_root(loaded)
    return None if root is None else FeatureCache(root, log=lambda _message: None)


@dataclass(frozen=True)
class CodingParts:
    """What turns a run's images into codes and probabilities: built once (the stage extractor
    is an fx trace, 0.15 s) and used for every image list of a command."""

    extractor: nn.Module
    head: nn.Module
    stage: str | None
    spec: CodesSpec
    cache: FeatureCache | None


def coding_parts(loaded: LoadedModel) -> CodingParts:
    extractor, head, stage = _extractor(loaded)
    spec = CodesSpec(
        loaded.backbone.name,
        str(loaded.metadata.get("weights")),
        loaded.preprocessing,
        stage,
        VAL_VIEW,
    )
    return CodingParts(extractor, head, stage, spec, _cache(loaded))


@torch.inference_mode()
def pool_codes(
    loaded: LoadedModel,
    paths: Sequence[Path],
    *,
    device: torch.device,
    progress: str = "codes",
    parts: CodingParts | None = None,
) -> PoolCodes:
    """Codes and probabilities of `paths`; files that cannot be decoded are listed and left
    out (the others' codes are cached on the first pass, so the second is a read). `parts`:
    coding_parts(loaded), when the caller codes more than one list."""
    parts = parts or coding_parts(loaded)
    loaded.model.to(device).eval()
    kept, unreadable = list(paths), []
    while True:
        try:
            found = extract_codes(
                parts.extractor, kept, specs=[parts.spec], cache=parts.cache, device=device,
                description=progress, log=lambda _message: None,
            )  # fmt: skip
            break
        except UnreadableImagesError as error:
            bad = {path for path, _reason in error.images}
            unreadable.extend(error.images)
            kept = [path for path in kept if path not in bad]
            if not kept:
                break
    if not kept:
        empty = np.zeros((0, 0), np.float32)
        return PoolCodes((), empty, empty, empty, tuple(unreadable))
    codes = np.array(found[parts.stage], dtype=np.float32)
    logits = parts.head(torch.from_numpy(codes).to(device)).float()
    probabilities = torch.softmax(logits, dim=1).cpu().numpy()
    return PoolCodes(tuple(kept), codes, probabilities, logits.cpu().numpy(), tuple(unreadable))
