from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from PIL import Image

from tlvision.data import build_transforms, find_splits
from tlvision.errors import UserError
from tlvision.weights import Preprocessing


def test_find_splits_matches_classes_by_name_and_ignores_hidden_files(tiny_dataset: Path) -> None:
    (tiny_dataset / "train" / "circles" / ".DS_Store").write_bytes(b"\x00\x01")
    (tiny_dataset / "val" / "squares" / "._squares_0.jpg").write_bytes(b"resource fork")
    splits = find_splits(tiny_dataset)
    assert splits.class_names == ("circles", "squares")
    assert len(splits.samples["train"]) == 16 and len(splits.samples["val"]) == 8
    for phase in ("train", "val"):
        for path, label in splits.samples[phase]:
            assert path.parent.name == splits.class_names[label]
            assert not path.name.startswith(".")


def test_missing_val_split_is_a_clear_error(tiny_dataset: Path) -> None:
    shutil.rmtree(tiny_dataset / "val")
    with pytest.raises(UserError, match="val"):
        find_splits(tiny_dataset)


def test_empty_class_folder_names_the_folder(tiny_dataset: Path) -> None:
    empty = tiny_dataset / "train" / "empty_class"
    empty.mkdir()
    (tiny_dataset / "val" / "empty_class").mkdir()
    make_one = Image.new("RGB", (40, 40))
    make_one.save(tiny_dataset / "val" / "empty_class" / "x.jpg")
    with pytest.raises(UserError) as raised:
        find_splits(tiny_dataset)
    assert str(empty) in str(raised.value)


def test_class_mismatch_lists_both_sides(tiny_dataset: Path) -> None:
    (tiny_dataset / "val" / "squares").rename(tiny_dataset / "val" / "square")
    with pytest.raises(UserError) as raised:
        find_splits(tiny_dataset)
    message = str(raised.value)
    assert "squares" in message and "square" in message
    assert "\n" not in message


def test_a_path_that_is_not_a_dataset(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="train"):
        find_splits(tmp_path)
    with pytest.raises(UserError):
        find_splits(tmp_path / "does-not-exist")


def test_transforms_take_size_and_normalisation_from_preprocessing() -> None:
    preprocessing = Preprocessing(
        resize_size=80, crop_size=64, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25)
    )
    transforms = build_transforms(preprocessing)
    image = Image.new("RGB", (120, 90), color=(255, 128, 0))
    val = transforms["val"](image)
    train = transforms["train"](image)
    assert val.shape == train.shape == (3, 64, 64)
    # (1.0 - 0.5) / 0.25 = 2 for the red channel, (0 - 0.5) / 0.25 = -2 for blue
    assert torch.allclose(val[0], torch.full((64, 64), 2.0), atol=1e-4)
    assert torch.allclose(val[2], torch.full((64, 64), -2.0), atol=1e-4)


def test_preprocessing_json_round_trip() -> None:
    preprocessing = Preprocessing(resize_size=292, crop_size=256, interpolation="bicubic")
    assert Preprocessing.from_json(preprocessing.to_json()) == preprocessing
