"""The code-space out-of-distribution score, inside the network: the head's input (the codes)
compared with the train images' codes the run stores.

`with_codes(model, head_path)` gives a network that returns (logits, codes) from one pass: a
copy of the modules on the path to the head (the weights shared, the given model untouched)
with the head wrapped so that it also returns its input. `CodeDistance` holds the train codes,
L2-normalised, as a buffer and turns codes into

    score = 1 - mean of the k largest cosine similarities to the train codes

(k = 1: one minus the similarity to the nearest train image). Both are plain tensor operations
(MatMul, TopK or ReduceMax), so the exported ONNX and TorchScript files compute the score
themselves: a client reads it beside the logits (tlvision.models.pixels.PixelClassifier).
"""

from __future__ import annotations

import copy

import numpy as np
import torch
from torch import nn

DEFAULT_VAL_REJECTED = 0.05  # the share of val images a calibrated threshold may reject
NORM_FLOOR = 1e-12  # codes shorter than this are treated as this long (an all-zero code)


def val_threshold(val_scores: np.ndarray, val_rejected: float) -> float:
    """The rejection threshold: the score above which at most `val_rejected` of the val images'
    scores lie. One rule for every calibration (training, `tlvision calibrate`, an int8 export
    scored through its own file)."""
    values = np.asarray(val_scores, dtype=np.float64)
    return float(np.quantile(values, 1.0 - val_rejected, method="higher"))


def l2_normalised(codes: torch.Tensor) -> torch.Tensor:
    """(N, C) -> (N, C) float32 rows of length 1 (an all-zero row stays zero)."""
    values = codes.float()
    return values / values.norm(dim=1, keepdim=True).clamp_min(NORM_FLOOR)


class CodesTap(nn.Module):
    """A head that also returns its input: codes -> (logits, codes)."""

    def __init__(self, head: nn.Module) -> None:
        super().__init__()
        self.head = head

    def forward(self, codes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.head(codes), codes


def with_codes(model: nn.Module, head_path: str) -> nn.Module:
    """A network equal to `model` whose forward returns (logits, codes): each module on the path
    to `head_path` is copied shallowly (its parameters shared), so `model` stays as it was."""
    root = copy.copy(model)
    root._modules = dict(model._modules)
    parent = root
    *path, attribute = head_path.split(".")
    for name in path:
        child = copy.copy(parent._modules[name])
        assert child is not None, f"{head_path}: no module {name!r} on the path"
        child._modules = dict(child._modules)
        parent._modules[name] = child
        parent = child
    head = parent._modules[attribute]
    assert head is not None, f"{head_path}: no head module there"
    parent._modules[attribute] = CodesTap(head)
    return root


class CodeDistance(nn.Module):
    """(N, C) codes -> (N,) scores: 1 - the mean of the `k` largest cosine similarities to the
    stored train codes (higher: more unlike the training images)."""

    def __init__(self, train_codes: torch.Tensor, k: int = 1) -> None:
        super().__init__()
        if train_codes.ndim != 2 or len(train_codes) == 0:
            raise ValueError(
                f"train codes must be (M, C) with M >= 1; got {tuple(train_codes.shape)}"
            )
        if not 1 <= k <= len(train_codes):
            raise ValueError(f"k {k}: must be between 1 and the {len(train_codes)} train codes")
        self.k = k
        # float16 halves the file (and an export's size); the score is computed in float32
        self.register_buffer("train_codes", l2_normalised(train_codes).half())

    def forward(self, codes: torch.Tensor) -> torch.Tensor:
        train: torch.Tensor = self.train_codes  # type: ignore[assignment]
        similarity = l2_normalised(codes) @ train.float().T
        if self.k == 1:
            nearest = similarity.max(dim=1).values
        else:
            nearest = similarity.topk(self.k, dim=1).values.mean(dim=1)
        score: torch.Tensor = 1.0 - nearest
        return score
