"""Strangers: images unlike every class. Each image's cosine distance to each class's centre,
as a robust z-score among that class's own images' distances (median and MAD); an image's score
is the smallest over the classes: high only when it is far from its own class and from all the
others. A mislabelled image sits near another class and so scores low here."""

from __future__ import annotations

import numpy as np


def stranger_scores(unit: np.ndarray, labels: np.ndarray, classes: int) -> np.ndarray:
    """(N,) scores, higher is stranger; `unit` holds L2-normalised codes."""
    scores = np.full(len(unit), np.inf)
    for k in range(classes):
        members = labels == k
        if not members.any():
            continue
        centre = unit[members].mean(axis=0)
        centre /= max(float(np.linalg.norm(centre)), 1e-12)
        distance = 1.0 - unit @ centre
        own = distance[members]
        median = float(np.median(own))
        spread = 1.4826 * float(np.median(np.abs(own - median))) + 1e-6
        scores = np.minimum(scores, (distance - median) / spread)
    return scores
