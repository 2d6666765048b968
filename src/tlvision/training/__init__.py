"""Training: `fit` and `resume`, the strategy registry (one module per strategy in
training/strategies/), the frozen routes on cached codes, fine-tuning's loop above a kept
frozen prefix, BatchNorm's mode, heads on codes, schedules, checkpoints and lr-find.

Imports inference and below.
"""
