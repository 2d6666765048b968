"""tlvision.models."""
