"""tlvision: transfer learning from a pretrained ConvNet to your folder of labelled images.

From Python (the command line's commands as functions; nothing is printed unless verbose=True):

    import tlvision
    run = tlvision.train("DATA", epochs=5, out="runs/first")
    run.predict("photo.jpg", top_k=2)
    run.evaluate("DATA/val").accuracy
"""

import os

# Before torch loads its OpenMP runtime: idle OpenMP threads that busy-wait steal the CPU from
# the data-loader processes. On a 2-core machine a feature-extract epoch measured 21.0 s with the
# default policy and 9.6 s with PASSIVE (benchmarks/RESULTS.md). A user's own setting wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

# The public API; none of it imports torch until a function is called.
from tlvision.api import advise, check, demo_data_dir, load, probe, resume, train
from tlvision.api.results import (
    Advice,
    CheckReport,
    ImageLike,
    Prediction,
    ProbeTable,
    Run,
)
from tlvision.errors import UserError

__version__ = "0.1.0"

__all__ = [
    "Advice",
    "CheckReport",
    "ImageLike",
    "Prediction",
    "ProbeTable",
    "Run",
    "UserError",
    "__version__",
    "advise",
    "check",
    "demo_data_dir",
    "load",
    "probe",
    "resume",
    "train",
]
