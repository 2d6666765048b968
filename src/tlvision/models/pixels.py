"""uint8 RGB pixels in, logits out: a network with its preprocessing inside.

A deployed model should not make every client re-implement the backbone's normalisation, so the
exported graphs and every runtime take the pixels a decoder gives: uint8, RGB, (N, H, W, 3)
NHWC, already resized and centre-cropped (tlvision.data.transforms.prepare_pixels, or the
caller's own). Scaling by 1/255 and the mean/std normalisation happen inside, in the same order
as the val transform, so the logits match `predict` to float rounding.
"""

from __future__ import annotations

import torch
from torch import nn

from tlvision.data.preprocessing import Preprocessing
from tlvision.models.ood import CodeDistance

INPUT_LAYOUT = "NHWC"  # (batch, height, width, RGB channel)
INPUT_DTYPE = "uint8"


class PixelNormalize(nn.Module):
    """(N, H, W, 3) uint8 -> (N, 3, H, W) float32 normalised as the backbone's weights expect."""

    def __init__(self, preprocessing: Preprocessing) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(preprocessing.mean).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(preprocessing.std).view(1, 3, 1, 1))

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        # The same operations, in the same order, as ToDtype(scale=True) then Normalize. Made
        # contiguous (NCHW in memory) at once: a channels-last tensor would carry its strides
        # into the network, and the exported graph's flatten would become a Range/Mul/Gather
        # tail that OpenCV's DNN module 4.x refuses ("Mixed input data types").
        images = pixels.permute(0, 3, 1, 2).contiguous().to(torch.float32) / 255.0
        normalized: torch.Tensor = (images - self.mean) / self.std  # type: ignore[operator]
        return normalized


class PixelClassifier(nn.Module):
    """A trained model behind PixelNormalize: uint8 NHWC pixels -> (N, num_classes) logits.

    With `ood` (the run's code-space rejection, tlvision.models.ood) the model must return
    (logits, codes) (`ood.with_codes`), and the forward returns (logits, (N,) ood scores): one
    pass gives both, in torch and in every exported file."""

    def __init__(
        self, model: nn.Module, preprocessing: Preprocessing, ood: CodeDistance | None = None
    ) -> None:
        super().__init__()
        self.normalize = PixelNormalize(preprocessing)
        self.model = model
        self.ood = ood

    def forward(self, pixels: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        output = self.model(self.normalize(pixels))
        if self.ood is None:
            logits: torch.Tensor = output
            return logits
        logits, codes = output
        return logits, self.ood(codes)
