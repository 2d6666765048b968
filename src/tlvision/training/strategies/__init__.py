"""The built-in strategies: each module registers one (tlvision.training.strategy)."""
