"""tlvision: transfer learning from a pretrained ConvNet to your folder of labelled images."""

import os

# Before torch loads its OpenMP runtime: idle OpenMP threads that busy-wait steal the CPU from
# the data-loader processes. On a 2-core machine a feature-extract epoch measured 21.0 s with the
# default policy and 9.6 s with PASSIVE (benchmarks/RESULTS.md). A user's own setting wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.1.0"
