"""ONNX Runtime's CPU memory arena on and off, side by side, for a one-pass code extraction.

Exports mobilenet_v2's body (the pretrained top codes) once, then for each batch size opens a
session with the arena on and one with it off, in alternation, each in its own process (so peak
RSS is that session's), and times a pass over the same decoded images. Prints images/s, the
ratio on/off and each process's peak RSS.

    python benchmarks/onnx_arena.py --data ../shared/data/hymenoptera_data --images 192
"""

from __future__ import annotations

# isort: off
import tlvision  # noqa: F401  (sets OMP_WAIT_POLICY before torch loads, as the CLI does)
# isort: on

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from tlvision.compute.onnx import write_onnx
from tlvision.data.images import load_rgb_image
from tlvision.data.layouts import is_image_file
from tlvision.data.transforms import prepare_pixels
from tlvision.models.backbone import get_backbone
from tlvision.models.network import choose_weights, create_model, preprocessing_for
from tlvision.models.stages import StageCodes


def prepare(data: Path, count: int, scratch: Path) -> None:
    """The body as ONNX and `count` normalised images, written into `scratch`."""
    paths = sorted(path for path in data.rglob("*") if is_image_file(path))[:count]
    backbone = get_backbone("mobilenet_v2")
    weights = choose_weights(backbone, None)
    model = create_model(backbone, 2, weights).eval()
    preprocessing = preprocessing_for(backbone, weights)
    mean = np.asarray(preprocessing.mean, np.float32)[:, None, None]
    std = np.asarray(preprocessing.std, np.float32)[:, None, None]
    pixels = np.stack([prepare_pixels(load_rgb_image(path), preprocessing) for path in paths])
    images = (pixels.transpose(0, 3, 1, 2).astype(np.float32) / 255.0 - mean) / std
    np.save(scratch / "images.npy", np.ascontiguousarray(images, dtype=np.float32))

    class TopCodes(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.codes = StageCodes(model, backbone, [None]).eval()

        def forward(self, batch: torch.Tensor) -> torch.Tensor:
            return self.codes(batch)[None]

    graph = write_onnx(
        TopCodes().eval(), torch.from_numpy(images[:2]), input_name="images",
        output_names=["codes"], dynamic_axes={0: "batch"},
    )  # fmt: skip
    assert graph is not None
    (scratch / "body.onnx").write_bytes(graph)


def one_session(scratch: Path, arena: bool, batch: int, threads: int) -> dict[str, float]:
    """Images/s of one session over the saved images, and this process's peak RSS."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.enable_cpu_mem_arena = arena
    session = onnxruntime.InferenceSession(
        str(scratch / "body.onnx"), sess_options=options, providers=["CPUExecutionProvider"]
    )
    images = np.load(scratch / "images.npy")
    session.run(None, {"images": images[:batch]})  # first run: the graph's own set-up
    started = time.perf_counter()
    for start in range(0, len(images), batch):
        session.run(None, {"images": images[start : start + batch]})
    seconds = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"images_per_second": len(images) / seconds, "peak_rss_mb": peak}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("../shared/data/hymenoptera_data"))
    parser.add_argument("--images", type=int, default=192)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 4, 8, 16, 32])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--session", nargs=3, help=argparse.SUPPRESS)  # child: SCRATCH ARENA BATCH
    arguments = parser.parse_args()
    if arguments.session:
        scratch, arena, batch = arguments.session
        print(json.dumps(one_session(Path(scratch), arena == "on", int(batch), arguments.threads)))
        return
    with tempfile.TemporaryDirectory(prefix="onnx-arena-") as folder:
        scratch = Path(folder)
        prepare(arguments.data, arguments.images, scratch)
        best: dict[tuple[int, str], dict[str, float]] = {}
        for _round in range(arguments.rounds):
            for batch in arguments.batches:
                for arena in ("on", "off"):  # alternated: the machine's load moves both alike
                    command = [sys.executable, __file__, "--threads", str(arguments.threads),
                               "--session", str(scratch), arena, str(batch)]  # fmt: skip
                    output = subprocess.run(command, check=True, capture_output=True, text=True)
                    found = json.loads(output.stdout.splitlines()[-1])
                    kept = best.get((batch, arena))
                    if kept is None or found["images_per_second"] > kept["images_per_second"]:
                        best[(batch, arena)] = found
        print(f"{arguments.images} images, {arguments.threads} threads, best of {arguments.rounds}")
        print("| batch | arena on img/s | arena off img/s | on / off | peak RSS on MB | off MB |")
        print("|---|---|---|---|---|---|")
        for batch in arguments.batches:
            on, off = best[(batch, "on")], best[(batch, "off")]
            print(f"| {batch} | {on['images_per_second']:.0f} | {off['images_per_second']:.0f} | "
                  f"{on['images_per_second'] / off['images_per_second']:.2f}x | "
                  f"{on['peak_rss_mb']:.0f} | {off['peak_rss_mb']:.0f} |")  # fmt: skip


if __name__ == "__main__":
    main()
