"""tlvision.advisor."""
