"""tlvision.report."""
