"""Shared fixtures: small synthetic image datasets made on the spot, and the reference set."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

REFERENCE_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "hymenoptera_data"

# Each class is a colour with a pattern, so even a tiny head separates them quickly.
CLASS_COLOURS = {"circles": (200, 40, 40), "squares": (40, 60, 210), "stripes": (30, 170, 60)}


def make_image(class_name: str, index: int, size: int = 48) -> Image.Image:
    rng = np.random.default_rng(index + 1000 * sorted(CLASS_COLOURS).index(class_name))
    base = np.array(CLASS_COLOURS[class_name], dtype=np.float32)
    pixels = base + rng.normal(0, 25, size=(size, size, 3))
    if class_name == "stripes":
        pixels[:, ::6] *= 0.4
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def write_dataset(
    root: Path,
    classes: tuple[str, ...] = ("circles", "squares"),
    per_class: dict[str, int] | None = None,
) -> Path:
    per_class = per_class or {"train": 8, "val": 4}
    for split, count in per_class.items():
        for class_name in classes:
            folder = root / split / class_name
            folder.mkdir(parents=True, exist_ok=True)
            for index in range(count):
                offset = 0 if split == "train" else 500
                make_image(class_name, index + offset).save(folder / f"{class_name}_{index}.jpg")
    return root


def write_flat_dataset(
    root: Path, classes: tuple[str, ...] = ("circles", "squares"), count: int = 10
) -> Path:
    """DATA/<class>/*.jpg with no train/ or val/: the layout most downloaded datasets have."""
    for class_name in classes:
        (root / class_name).mkdir(parents=True, exist_ok=True)
        for index in range(count):
            make_image(class_name, index).save(root / class_name / f"{class_name}_{index}.jpg")
    return root


@pytest.fixture
def flat_dataset(tmp_path: Path) -> Path:
    return write_flat_dataset(tmp_path / "flat")


@pytest.fixture(autouse=True, scope="session")
def private_feature_cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Tests never write CNN codes into the user's own cache directory. The pretrained weights
    stay where torch keeps them (TORCH_HOME follows XDG_CACHE_HOME unless set), so they are
    fetched once per machine, not once per test session."""
    user_cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    os.environ.setdefault("TORCH_HOME", str(Path(user_cache) / "torch"))
    os.environ["XDG_CACHE_HOME"] = str(tmp_path_factory.mktemp("xdg-cache"))


@pytest.fixture
def dataset_factory(tmp_path: Path) -> Callable[..., Path]:
    counter = iter(range(1000))

    def factory(**kwargs: object) -> Path:
        return write_dataset(tmp_path / f"data{next(counter)}", **kwargs)  # type: ignore[arg-type]

    return factory


@pytest.fixture
def tiny_dataset(tmp_path: Path) -> Path:
    return write_dataset(tmp_path / "data")


@pytest.fixture
def reference_data() -> Path:
    if not (REFERENCE_DATA / "train").is_dir():
        pytest.skip(f"reference dataset not found at {REFERENCE_DATA}")
    return REFERENCE_DATA


@pytest.fixture(scope="module")
def one_torch_thread() -> Iterator[None]:
    """Tiny models run fastest on one thread (and do not fight other work for the cores)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def predict_with_torch(
    loaded: Any, images: list[Any], *, top_k: int = 1, tta: bool = False, device: Any = None
) -> list[Any]:
    """The run's predictions on torch: the reference other runtimes are held against."""
    from tlvision.inference.runtime import TorchClassifier
    from tlvision.inference.stream import stream_predictions

    classifier = TorchClassifier(loaded, device)
    return list(stream_predictions(classifier, images, top_k=top_k, tta=tta, decoders=0))
