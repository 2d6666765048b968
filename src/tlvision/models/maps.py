"""A trained classifier read as a fully convolutional network, on any image size.

Global average pooling then a linear layer equals a linear layer applied at every location (a
1x1 convolution) then averaging, so running the conv body on a whole image and the head as a
1x1 conv gives per-class score maps whose spatial mean is the model's logits. For an
earlier-stage linear probe the map comes from that stage. A backbone with layers between its
pool and its head declares how they run per location (BackboneSpec.location_head); its maps are
then a per-location reading, not an exact decomposition.
"""

from __future__ import annotations

import torch
from torch import nn
from torchvision.models.feature_extraction import create_feature_extractor

from tlvision.data.preprocessing import Preprocessing
from tlvision.models.backbone import BackboneSpec
from tlvision.models.network import conv_from_linear, location_head
from tlvision.models.pixels import PixelNormalize


def _stage_body(classifier: nn.Module, backbone: BackboneSpec) -> nn.Module:
    """A full backbone holding the run's body weights (keys `body.*`), for tracing to `stage`.

    Built fresh from the registry so the feature extraction does not depend on how the saved
    classifier cuts its body; the layers after the stage are never traced, so never run.
    """
    body_state = {
        key.removeprefix("body."): value
        for key, value in classifier.state_dict().items()
        if key.startswith("body.")
    }
    full = backbone.build()
    result = full.load_state_dict(body_state, strict=False)
    if result.unexpected_keys:
        raise RuntimeError(f"body keys not in {backbone.name}: {result.unexpected_keys}")
    return full.eval()


class ClassMapNetwork(nn.Module):
    """(N, H, W, 3) uint8 RGB of any H, W -> (N, num_classes, h, w) per-location logits."""

    def __init__(
        self,
        model: nn.Module,
        backbone: BackboneSpec,
        preprocessing: Preprocessing,
        stage: str | None = None,
    ) -> None:
        """`model`: a trained classifier of `backbone`; with `stage`, a StageClassifier (the
        body cut at that stage, and its head)."""
        super().__init__()
        if stage:
            body = _stage_body(model, backbone)
            output = backbone.stage(stage).output
            head = model.get_submodule("head")
            assert isinstance(head, nn.Linear)
            self.head: nn.Module = conv_from_linear(head)
        else:
            body = model
            output = backbone.stages[-1].output
            self.head = location_head(model, backbone)
        self.normalize = PixelNormalize(preprocessing)
        self.features = create_feature_extractor(body.eval(), return_nodes={output: "map"})
        self.eval()

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        feature_map = self.features(self.normalize(pixels))["map"]
        maps: torch.Tensor = self.head(feature_map)
        return maps
