"""Code extraction on both runtimes, side by side: torch eager (channels-last) and ONNX Runtime.

One cold pass (no cache) of mobilenet_v2's top codes over the reference set's images, first on
torch, then in ONNX Runtime (its export included), twice in alternation; prints seconds, images/s,
the ratio and the largest difference between the two runtimes' codes.

    python benchmarks/extraction_runtime.py --data ../shared/data/hymenoptera_data
"""

from __future__ import annotations

# isort: off
import tlvision  # noqa: F401  (sets OMP_WAIT_POLICY before torch loads, as the CLI does)
# isort: on

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from tlvision.codes.cache import VAL_VIEW, CodesSpec
from tlvision.codes.extraction import extract_codes
from tlvision.data.layouts import is_image_file
from tlvision.data.loading import default_num_workers
from tlvision.models.backbone import get_backbone
from tlvision.models.network import choose_weights, create_model, preprocessing_for
from tlvision.models.stages import StageCodes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("../shared/data/hymenoptera_data"))
    parser.add_argument("--rounds", type=int, default=2)
    arguments = parser.parse_args()
    paths = sorted(path for path in arguments.data.rglob("*") if is_image_file(path))
    backbone = get_backbone("mobilenet_v2")
    weights = choose_weights(backbone, None)
    extractor = StageCodes(create_model(backbone, 2, weights).eval(), backbone, [None]).eval()
    spec = CodesSpec(
        backbone.name, weights.label, preprocessing_for(backbone, weights), None, VAL_VIEW
    )
    seconds: dict[str, list[float]] = {"torch": [], "auto": []}
    codes: dict[str, np.ndarray] = {}
    for _ in range(arguments.rounds):
        for runtime in seconds:
            started = time.perf_counter()
            codes[runtime] = extract_codes(
                extractor, paths, specs=[spec], cache=None, runtime=runtime,
                num_workers=default_num_workers(),
            )[None]  # fmt: skip
            seconds[runtime].append(time.perf_counter() - started)
    print(f"{len(paths)} images, mobilenet_v2 top codes, torch threads {torch.get_num_threads()}")
    for runtime, name in (
        ("torch", "torch eager, channels-last"),
        ("auto", "ONNX Runtime, export included"),
    ):
        times = ", ".join(f"{s:.1f}s" for s in seconds[runtime])
        print(f"{name}: {times}; best {len(paths) / min(seconds[runtime]):.1f} img/s")
    ratio = min(seconds["torch"]) / min(seconds["auto"])
    difference = float(np.abs(codes["torch"] - codes["auto"]).max())
    print(
        f"ONNX Runtime {ratio:.2f}x faster (best against best); "
        f"max abs code difference {difference:.1e}"
    )


if __name__ == "__main__":
    main()
