"""The built-in backbones: each module registers one family (tlvision.models.backbone)."""
