"""A small script that uses the public API with full type annotations.

tests/test_api.py runs mypy --strict on this file: the API's signatures must be precise enough
for a typed client (no Any leaking where a str, float or list is promised). It also runs as a
script: `python tests/typed_client.py DATA OUT_DIR`.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from PIL import Image

import tlvision


def train_and_report(data: Path, out: Path) -> tuple[list[str], float, list[tlvision.Prediction]]:
    report: tlvision.CheckReport = tlvision.check(data)
    if not report.ok:
        raise SystemExit(str(report))
    run: tlvision.Run = tlvision.train(
        data, strategy="feature-extract", epochs=2, out=out, overwrite=True, lr=0.01, seed=0
    )
    classes: list[str] = run.classes
    last_epoch: dict[str, object] = run.metrics[-1]
    print(f"last epoch: {last_epoch}")
    accuracy: float = run.evaluate(data / "val", device="cpu").accuracy
    pixels = np.zeros((64, 64, 3), dtype=np.uint8)
    predictions = run.predict([pixels, Image.new("RGB", (64, 64))], top_k=1)
    for prediction in predictions:
        if prediction.error is None:
            name, probability = prediction.top[0]
            print(f"{name}: {probability:.3f}")
    return classes, accuracy, predictions


def main(arguments: list[str]) -> int:
    try:
        classes, accuracy, _ = train_and_report(Path(arguments[0]), Path(arguments[1]))
    except tlvision.UserError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    reloaded = tlvision.load(arguments[1])
    html: str = reloaded._repr_html_()
    print(classes, f"{accuracy:.3f}", len(html))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
