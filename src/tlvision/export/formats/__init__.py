"""The built-in export formats: each module registers one (tlvision.export.format)."""
