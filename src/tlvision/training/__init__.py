"""tlvision.training."""
