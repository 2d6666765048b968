"""The keyword options of tlvision.train: written by tlvision.config.train_options_source
from TrainConfig's fields (tests/test_options.py checks that it is current); do not edit.
"""

from __future__ import annotations

import os
from typing import Literal, TypedDict

PathLike = str | os.PathLike[str]


class TrainOptions(TypedDict, total=False):
    out: PathLike | None
    """run directory (default: runs/<strategy>-<date>-<time>)"""
    backbone: str
    """pretrained network"""
    weights: str | None
    """pretrained weights: a name such as IMAGENET1K_V1 (default: the backbone's first), a
    .pth/.safetensors file, or none for random initialisation"""
    strategy: str
    """what trains; auto: measure the data (as `tlvision advise` does) and run its
    recommendation"""
    freeze_until: str | None
    """finetune: keep the stages up to and including STAGE frozen (default: the backbone's
    middle stage, stage2 for most; none: train every stage; names: `tlvision backbones`)"""
    stage: str | None
    """linear-probe: take pooled codes from this stage instead of the top"""
    head: str
    """linear-probe: softmax layer (torch), logistic regression or linear SVM (scikit-learn)"""
    input_size: int | None
    """side of the square the network sees (default: the weights' own, 224 for most)"""
    epochs: int | None
    """epochs (default: the strategy's: 25 for the frozen routes, 10 for finetune)"""
    batch_size: int
    """images per step (per process under torchrun)"""
    lr: float | Literal["find"]
    """the new head's learning rate; fine-tuning starts its head on codes and then trains it at
    the pretrained layers' rate (--backbone-lr-mult x this); `find`: run the learning-rate range
    test first (tlvision lr-find)"""
    backbone_lr_mult: float | None
    """finetune: pretrained layers learn at this times --lr (default 0.1; 0.03 with --batchnorm
    frozen)"""
    momentum: float
    """SGD momentum"""
    weight_decay: float
    """SGD weight decay (L2)"""
    schedule: str
    """learning-rate schedule, stepped every batch"""
    step_epochs: int
    """step schedule: multiply the rate by --step-gamma every N epochs"""
    step_gamma: float
    """step schedule: the factor"""
    seed: int
    """seeds the split, the augmentation, the order and the new head"""
    device: str
    """auto (CUDA, then MPS, then the CPU), cpu, cuda, cuda:N or mps"""
    workers: int | None
    """data-loader processes (default: one per CPU core, up to 8; none when fine-tuning on the
    CPU)"""
    views: int | None
    """augmented views per train image beside its centre crop: the frozen routes compute their
    codes once (default 0); finetune keeps the frozen stages' output for them (default 8; 0:
    augment afresh each epoch and run the whole network)"""
    batchnorm: str | None
    """finetune: train (BatchNorm follows the batches' statistics) or frozen (ImageNet's kept;
    default: chosen by measuring how far the data sits from them)"""
    cache_dir: PathLike | None
    """CNN-codes cache (default: ~/.cache/tlvision/features)"""
    no_cache: bool
    """keep CNN codes in memory only"""
    val_split: float | None
    """hold out this stratified, seeded share of each class as val when there is no val/ folder
    (default 0.2 for a flat DATA/<class>/ folder)"""
    exclude: PathLike | None
    """leave these train files out: a list (one path a line, relative to DATA) or an audit.json
    (`tlvision audit`; --exclude-sections); recorded in summary.json"""
    exclude_sections: str
    """the audit.json sections --exclude reads, comma-separated: label_issues, duplicates,
    outliers"""
    exclude_held_out: bool
    """--exclude also leaves out val files (val accuracy is then inflated)"""
    class_weights: str | None
    """auto: weight the loss by inverse class frequency (multi-label: positive weights)"""
    sampler: str
    """finetune: shuffle (each image once an epoch) or balanced (images drawn with replacement,
    each class equally often: for classes of very different sizes)"""
    threshold_precision: float | None
    """multi-label data: tune each class's threshold on val to reach this precision (default:
    the F1-optimal threshold)"""
    precision: str
    """auto: bf16 mixed precision on a CUDA GPU that has it, else 32; 16: float16 with a
    gradient scaler (CUDA)"""
    tensorboard: bool
    """write TensorBoard events to RUN/tensorboard/"""
    overwrite: bool
    """replace an existing run in --out (never a folder that is not a run)"""
