"""The run directory: its file names, the one reader of a run (one clear error for a missing or
damaged file), the writers, and config.toml.

Imports codes and below (in practice models, data and the top-level modules).
"""
