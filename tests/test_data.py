from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from PIL import Image

from tlvision.data.layouts import FLAT_VAL_SPLIT, find_splits, layout_note
from tlvision.data.preprocessing import Preprocessing
from tlvision.data.transforms import build_transforms
from tlvision.errors import UserError


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


def test_flat_layout_is_split_seeded_and_stratified(flat_dataset: Path) -> None:
    splits = find_splits(flat_dataset, seed=3)
    assert (splits.layout, splits.val_split) == ("flat", FLAT_VAL_SPLIT)
    assert splits.class_names == ("circles", "squares")
    assert splits.class_counts("train") == [8, 8] and splits.class_counts("val") == [2, 2]
    assert find_splits(flat_dataset, seed=3).samples == splits.samples
    assert find_splits(flat_dataset, seed=4).samples != splits.samples
    wider = find_splits(flat_dataset, val_split=0.5, seed=3)
    assert wider.val_split == 0.5 and wider.class_counts("val") == [5, 5]
    for phase in ("train", "val"):
        for path, label in splits.samples[phase]:
            assert path.parent == flat_dataset / splits.class_names[label]
    note = layout_note(flat_dataset, None)
    assert note is not None and "80/20" in note and "--val-split" in note and "\n" not in note
    assert layout_note(flat_dataset, 0.5) is not None and "50/50" in layout_note(flat_dataset, 0.5)


def test_split_layout_has_no_layout_note(tiny_dataset: Path) -> None:
    assert find_splits(tiny_dataset).layout == "split"
    assert layout_note(tiny_dataset, None) is None


def test_flat_layout_errors_name_the_folder(flat_dataset: Path, tiny_dataset: Path) -> None:
    with pytest.raises(UserError, match="between 0 and 1"):
        find_splits(flat_dataset, val_split=1.5)
    shutil.rmtree(flat_dataset / "squares")
    with pytest.raises(UserError, match="one class"):
        find_splits(flat_dataset)
    with pytest.raises(UserError, match=f"did you mean {tiny_dataset}"):
        find_splits(tiny_dataset / "train")


def test_a_broken_link_is_set_apart_not_dropped(tiny_dataset: Path, tmp_path: Path) -> None:
    link = tiny_dataset / "train" / "circles" / "x.jpg"
    link.symlink_to(tmp_path / "gone.jpg")
    splits = find_splits(tiny_dataset)
    assert splits.broken_links == (link,)
    assert link not in {path for path, _ in splits.samples["train"]}
    assert len(splits.samples["train"]) == 16
