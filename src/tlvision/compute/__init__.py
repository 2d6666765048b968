"""tlvision.compute."""
