"""tlvision.export."""
