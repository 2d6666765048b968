"""tlvision.inference."""
