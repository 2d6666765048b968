"""Images in: dataset layouts and splits, the safe decoder, preprocessing as data and applied,
loaders that survive broken files, and the dataset doctor (`tlvision check`).

Imports compute and the top-level modules only.
"""
