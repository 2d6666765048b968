"""tlvision.codes."""
