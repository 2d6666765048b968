"""tlvision.data."""
