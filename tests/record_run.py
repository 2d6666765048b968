"""The tlvision CLI, recording each image every process decodes: for tests/test_distributed.py.

Run by torchrun in place of `-m tlvision`. Each process appends one line per decoded image to
$TLVISION_RECORD_DIR/rank<RANK>.txt: "image PATH" for the training loop's loaders, "codes PATH"
for code extraction. It only listens: the code under test runs unchanged.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from tlvision.cli import main
from tlvision.codes import extraction
from tlvision.data import loading as data

RECORD = Path(os.environ["TLVISION_RECORD_DIR"]) / f"rank{os.environ.get('RANK', '0')}.txt"


def note(kind: str, path: object) -> None:
    with RECORD.open("a") as handle:
        handle.write(f"{kind} {path}\n")


def recording_image_item(self: data.ImageDataset, index: int) -> Any:
    note("image", self.samples[index][0])
    return IMAGE_ITEM(self, index)


def recording_codes_item(self: Any, index: int) -> Any:
    note("codes", self.paths[index])
    return CODES_ITEM(self, index)


IMAGE_ITEM = data.ImageDataset.__getitem__
CODES_ITEM = extraction._ViewImages.__getitem__
data.ImageDataset.__getitem__ = recording_image_item  # type: ignore[method-assign]
extraction._ViewImages.__getitem__ = recording_codes_item  # type: ignore[method-assign]

if __name__ == "__main__":
    sys.exit(main())
