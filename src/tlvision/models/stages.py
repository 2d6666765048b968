"""Stage extraction: a backbone cut at named stages, as plain modules.

Built on torchvision's `create_feature_extractor`, which traces the network and keeps only the
graph up to the deepest requested output, so later stages are never computed, and the result is
an ordinary module (state-dict keys as in the full model) that exports to ONNX and TorchScript.

- `StageCodes(model, backbone, stages)`: images -> {stage: (N, C) pooled codes} in one pass;
  stage None ("top") is exactly the input of the final classifier layer (`backbone.head`), so
  `head(codes)` equals the full model's logits.
- `stage_graph(model, backbone, stages)`: images -> {stage label: raw output}, feature maps
  (N, C, H, W) for stages; the body of an earlier-stage linear probe, and of class maps.
- `PooledStage(body, stage)`: such a body's pooled codes (a linear probe's codes pass).
- `StageClassifier(backbone, stage, num_classes)`: that body, pooled, then a linear head.

Both share the given model's modules (no copy).
"""

from __future__ import annotations

import copy
import hashlib
import warnings
from collections.abc import Sequence

import torch
from torch import nn
from torchvision.models.feature_extraction import create_feature_extractor

from tlvision.models.backbone import TOP_LABEL, BackboneSpec


def stage_label(stage: str | None) -> str:
    return TOP_LABEL if stage is None else stage


def global_pool(feature_map: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) -> (N, C) float32 by averaging over the spatial dimensions."""
    if feature_map.ndim > 2:
        feature_map = feature_map.flatten(2).mean(dim=2)
    return feature_map.float()


class PooledStage(nn.Module):
    """A cut body's pooled codes: images -> (N, C) of `stage`, the body a `stage_graph`."""

    def __init__(self, body: nn.Module, stage: str | None) -> None:
        super().__init__()
        self.body, self.label = body, stage_label(stage)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return global_pool(self.body(images)[self.label])


def stage_channels(backbone: BackboneSpec, stage: str | None) -> int:
    """The size C of a stage's codes (None: the top codes), from the registry."""
    return backbone.feature_size if stage is None else backbone.stage(stage).channels


def stage_graph(
    model: nn.Module, backbone: BackboneSpec, stages: Sequence[str | None]
) -> nn.Module:
    """A traced module returning {stage label: raw output}; the top is the head's input.

    It shares `model`'s modules (no copy) and holds only those the outputs depend on.
    """
    return_nodes = {}
    for stage in stages:
        path = backbone.head if stage is None else backbone.stage(stage).output
        model.get_submodule(path)  # fails early, naming the path, if the model does not fit
        return_nodes[path] = stage_label(stage)
    # Tracing switches the whole model to train and eval mode and back to its top-level mode;
    # a model whose modules are in mixed modes (frozen BatchNorm) gets each one's mode back.
    modes = {module: module.training for module in model.modules()}
    try:
        with warnings.catch_warnings():
            # Stochastic depth (EfficientNet-Lite) makes the train graph longer than the eval
            # one; torchvision warns about that, but the outputs asked for are in both.
            warnings.filterwarnings("ignore", message="NOTE: The nodes obtained by tracing")
            graph = create_feature_extractor(model, return_nodes=return_nodes)
    finally:
        for module, mode in modes.items():
            module.train(mode)
    if None in stages:
        # The head's own output is the logits; with the head an Identity (in this traced copy
        # only) the node returns the head's input, which is what the top codes are.
        parent_path, _, attribute = backbone.head.rpartition(".")
        parent = graph.get_submodule(parent_path) if parent_path else graph
        setattr(parent, attribute, nn.Identity())
    return graph


class StageCodes(nn.Module):
    """images -> {stage: (N, C) pooled codes} for several stages in one forward pass."""

    def __init__(
        self, model: nn.Module, backbone: BackboneSpec, stages: Sequence[str | None]
    ) -> None:
        super().__init__()
        self.stages: tuple[str | None, ...] = tuple(dict.fromkeys(stages))
        if not self.stages:
            raise ValueError("ask for at least one stage (None for the top codes)")
        self.graph = stage_graph(model, backbone, self.stages)

    def forward(self, images: torch.Tensor) -> dict[str | None, torch.Tensor]:
        outputs = self.graph(images)
        return {stage: global_pool(outputs[stage_label(stage)]) for stage in self.stages}

    def fingerprint(self) -> str:
        """The fingerprint of every tensor the codes depend on (the head never is one)."""
        return model_fingerprint(self.graph)


def model_fingerprint(module: nn.Module) -> str:
    """sha256 over every tensor of the state dict (names, dtypes, shapes, bytes): the same
    weights give the same fingerprint in any process or memory format."""
    digest = hashlib.sha256()
    for key, tensor in sorted(module.state_dict().items()):
        flat = tensor.detach().to("cpu").contiguous().reshape(-1)
        digest.update(f"{key}|{flat.dtype}|{tuple(tensor.shape)}\n".encode())
        if flat.numel():
            digest.update(flat.view(torch.uint8).numpy().data)
    return digest.hexdigest()


class StageClassifier(nn.Module):
    """The body cut at `stage`, global average pooled, then a linear head on those codes.

    Only the modules up to the stage are kept (and saved): the state dict is `body.*` up to the
    stage, under the full model's names, plus `head.weight` / `head.bias`. Rebuild one from JSON
    metadata with `StageClassifier(get_backbone(name), stage, num_classes)` and load the saved
    tensors strictly. forward(images) equals head(stage codes of images).
    """

    def __init__(
        self,
        backbone: BackboneSpec,
        stage: str,
        num_classes: int,
        *,
        body: nn.Module | None = None,
    ) -> None:
        super().__init__()
        self.stage = stage
        self.body = stage_graph(backbone.build() if body is None else body, backbone, [stage])
        self.head = nn.Linear(stage_channels(backbone, stage), num_classes)

    @classmethod
    def from_trained(
        cls, backbone: BackboneSpec, stage: str, model: nn.Module, head: nn.Linear
    ) -> StageClassifier:
        """A classifier from a (pretrained) model and a head trained on its `stage` codes; the
        model itself is left as it was."""
        classifier = cls(backbone, stage, head.out_features, body=copy.deepcopy(model))
        with torch.no_grad():
            classifier.head.weight.copy_(head.weight)
            classifier.head.bias.copy_(head.bias)
        return classifier.to(next(model.parameters()).device)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        output: torch.Tensor = self.head(global_pool(self.body(images)[self.stage]))
        return output
