"""Pretrained networks as data: the backbone registry (stages declared as data; one module per
backbone in models/backbones/), pretrained weights found offline, the one head contract, stage
graphs for codes and partial freezing, pixels in, and class-map networks.

Imports data, compute and the top-level modules.
"""
