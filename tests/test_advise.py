"""The advisor on real weights: its measurements, its decision rules and reproducibility."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tlvision import demo_data_dir
from tlvision.advisor.decision import SIMILAR_CONFIDENCE
from tlvision.advisor.measure import advise, recommended_input_size
from tlvision.advisor.race import POOL_IMAGES, race_pool, race_split
from tlvision.cli import main
from tlvision.data.images import load_rgb_image
from tlvision.data.layouts import find_splits
from tlvision.data.transforms import build_transforms
from tlvision.models.backbone import get_backbone
from tlvision.models.network import choose_weights, preprocessing_for
from tlvision.models.weights import load_state_dict_file


def test_input_size_follows_native_resolution() -> None:
    assert recommended_input_size(371, 224) == 224  # photos: the weights' own size
    assert recommended_input_size(32, 224) == 64  # digits: twice native
    assert recommended_input_size(128, 224) == 128
    assert recommended_input_size(8, 224) == 64  # never below 64
    assert recommended_input_size(0, 224) == 224  # unreadable headers: the default


@pytest.mark.slow
def test_advice_on_demo_photos_is_frozen_features_and_reproducible(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    arguments = ["advise", str(demo_data_dir()), "--json", "--cache-dir", str(tmp_path)]
    assert main(arguments) == 0
    first = json.loads(capsys.readouterr().out)
    assert main(arguments) == 0
    second = json.loads(capsys.readouterr().out)
    for key in ("strategy", "stage", "size", "similarity", "command"):
        assert first[key] == second[key]
    assert first["evidence"]["probe"] == second["evidence"]["probe"]
    assert first["size"] == "small" and first["similarity"] == "similar"
    # Small and similar: frozen codes, no fine-tuning trial.
    assert first["strategy"] == "linear-probe" and first["head"] == "logreg"
    assert first["command"].startswith("tlvision train ")
    evidence = first["evidence"]
    assert evidence["size"]["train_images"] == 51
    # The ImageNet head's confidence: its mean top-1 probability over the race's held-out
    # train images, at the measured input size. Fish, monuments and tools are ImageNet-like
    # photos, so the similarity vote it casts is "similar".
    fit = evidence["pretrained_fit"]
    holdout, confidence = imagenet_confidence(demo_data_dir(), evidence["native_input_size"])
    assert fit["images"] == len(holdout)
    assert fit["imagenet_confidence"] == pytest.approx(confidence, abs=1e-4)
    assert fit["imagenet_confidence"] >= SIMILAR_CONFIDENCE
    stated = f"ImageNet head confidence {fit['imagenet_confidence']:.2f} (>= {SIMILAR_CONFIDENCE})"
    assert stated in " ".join(first["reasons"])
    assert set(evidence["probe"]) == {"stage2", "stage3", "top"}
    assert "small and similar" in evidence["trial_skipped"]
    assert {entry["strategy"] for entry in evidence["race"]} == {"linear-probe"}


def imagenet_confidence(data: Path, input_size: int) -> tuple[list[Path], float]:
    """(the held-out train images, the pretrained mobilenet_v2's mean top-1 ImageNet
    probability over them), computed image by image here."""
    import torch

    train = find_splits(data).samples["train"]
    _fit, holdout = race_split(race_pool(train, seed=0), seed=0)
    backbone = get_backbone("mobilenet_v2")
    weights = choose_weights(backbone, None)
    assert weights.path is not None
    model = backbone.build()  # with its own 1000-class head
    model.load_state_dict(load_state_dict_file(weights.path))
    transform = build_transforms(preprocessing_for(backbone, weights, input_size=input_size))
    top1 = []
    with torch.inference_mode():
        for path, _label in holdout:
            logits = model.eval()(transform["val"](load_rgb_image(path)).unsqueeze(0))
            top1.append(float(torch.softmax(logits, dim=1).max()))
    return [path for path, _ in holdout], sum(top1) / len(top1)


def test_advise_refuses_random_weights(
    tiny_dataset: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["advise", str(tiny_dataset), "--weights", "none"]) == 2
    assert "pretrained" in capsys.readouterr().err


@pytest.mark.slow
def test_train_auto_runs_the_advice_and_records_it(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    import shutil

    # Only train/: the advisor must measure the same seeded split that training then uses.
    data = tmp_path / "photos"
    shutil.copytree(demo_data_dir() / "train", data / "train")
    run = tmp_path / "run"
    common = ["--val-split", "0.25", "--cache-dir", str(tmp_path / "cache"), "--out", str(run)]
    assert main(["train", str(data), "--strategy", "auto", *common]) == 0
    printed = capsys.readouterr().out
    assert "recommended:" in printed

    advice = json.loads((run / "advice.json").read_text())
    model = json.loads((run / "model.json").read_text())
    summary = json.loads((run / "summary.json").read_text())
    assert (advice["size"], advice["similarity"]) == ("small", "similar")
    assert advice["strategy"] == "linear-probe"
    assert model["strategy"] == summary["strategy"] == advice["strategy"]
    assert "--val-split 0.25" in advice["command"]
    size = advice["evidence"]["size"]
    assert (size["train_images"], size["val_images"]) == (
        summary["train_images"],
        summary["val_images"],
    )
    assert summary["val_split"] == 0.25 and (run / "val_split.json").is_file()
    assert summary["best_val_acc"] >= 0.9

    # An occupied --out is refused before the advisor spends its time, and the run survives.
    assert main(["train", str(data), "--strategy", "auto", *common]) == 2
    captured = capsys.readouterr()
    assert "--overwrite" in captured.err and "recommended:" not in captured.out
    assert json.loads((run / "summary.json").read_text()) == summary


@pytest.mark.slow
def test_train_auto_with_no_cache_writes_no_codes_to_disk(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:

    cache = tmp_path / "cache"
    arguments = ["train", str(demo_data_dir()), "--strategy", "auto", "--no-cache"]
    assert main([*arguments, "--cache-dir", str(cache), "--out", str(tmp_path / "run")]) == 0
    assert "recommended:" in capsys.readouterr().out
    assert not cache.exists()  # neither the advisor nor the training run wrote codes
    assert (tmp_path / "run" / "model.safetensors").is_file()


def test_the_race_holds_out_part_of_train_and_never_reads_val(tiny_dataset: Path) -> None:
    splits = find_splits(tiny_dataset)
    fit, holdout = race_split(splits.samples["train"], seed=0)
    assert fit and holdout and not set(fit) & set(holdout)
    assert set(fit) | set(holdout) <= set(splits.samples["train"])
    assert race_split(splits.samples["train"], seed=0) == (fit, holdout)
    assert race_pool(splits.samples["train"], seed=0) == splits.samples["train"]  # small: all


def test_the_race_pool_keeps_class_shares_and_is_seeded() -> None:
    train = [(Path(f"{label}-{index}.png"), label) for label in (0, 1) for index in range(3000)]
    train += [(Path(f"2-{index}.png"), 2) for index in range(600)]
    pool = race_pool(train, seed=0)
    assert abs(len(pool) - POOL_IMAGES) <= 3 and set(pool) <= set(train)  # rounded by class
    assert sum(label == 2 for _, label in pool) == round(600 * POOL_IMAGES / len(train))
    assert race_pool(train, seed=0) == pool and race_pool(train, seed=1) != pool


def _scramble_labels(split_dir: Path) -> None:
    """Swap the two class folders: every label of the split becomes wrong."""
    first, second = sorted(path for path in split_dir.iterdir())
    first.rename(split_dir / "swap")
    second.rename(first)
    (split_dir / "swap").rename(second)


def _decision(advice_json: dict[str, object]) -> dict[str, object]:
    """Everything the advice says but the measured times."""
    evidence = advice_json["evidence"]
    assert isinstance(evidence, dict)
    return {
        **{key: advice_json[key] for key in ("strategy", "stage", "input_size", "epochs")},
        "command": advice_json["command"],
        "race": [(e["name"], e["accuracy"], e["epoch_accuracy"]) for e in evidence["race"]],
        "curve": evidence["learning_curve"],
        "margin": advice_json["margin"],
    }


def test_a_test_split_is_reported_and_neither_it_nor_val_decides(
    tiny_dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    arguments = ["advise", "--json", "--cache-dir", str(tmp_path / "cache")]
    assert main([*arguments, str(tiny_dataset)]) == 0
    plain = json.loads(capsys.readouterr().out)
    assert plain["evidence"]["size"]["test_images"] == 0
    # The same train/, with a test/ split and a val/ split whose labels are all wrong.
    shutil.copytree(tiny_dataset / "val", tiny_dataset / "test")
    _scramble_labels(tiny_dataset / "test")
    _scramble_labels(tiny_dataset / "val")
    assert main([*arguments, str(tiny_dataset)]) == 0
    scrambled = json.loads(capsys.readouterr().out)
    assert scrambled["evidence"]["size"]["test_images"] == 8
    assert _decision(scrambled) == _decision(plain)
    assert main(["advise", str(tiny_dataset), "--cache-dir", str(tmp_path / "cache")]) == 0
    assert "/ 8 test (not used)" in capsys.readouterr().out


def _noisy_dataset(root: Path) -> Path:
    """Two classes told apart by a faint tint in strong noise: the frozen codes do not solve
    them, so the advisor runs its fine-tuning trials too."""
    rng = np.random.default_rng(7)
    for split, count in (("train", 24), ("val", 6)):
        for label, tint in enumerate((-3, 3)):
            folder = root / split / f"class{label}"
            folder.mkdir(parents=True)
            for index in range(count):
                brightness = 128 + tint + rng.normal(0, 8)  # hides the tint of most images
                pixels = rng.normal(brightness, 60, size=(32, 32, 3))
                image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
                image.save(folder / f"{index}.png")
    return root


def test_the_same_data_and_seed_give_the_same_advice_on_a_busy_machine(tmp_path: Path) -> None:
    data = _noisy_dataset(tmp_path / "noise")
    quiet = advise(data, cache_dir=tmp_path / "cache-quiet", log=lambda _: None).to_json()
    assert {entry["strategy"] for entry in quiet["evidence"]["race"]} == {
        "linear-probe",
        "finetune",
    }, quiet["evidence"]["trial_skipped"]
    burners = [
        subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(2)
    ]  # a real busy loop per core, alongside the whole measurement
    try:
        busy = advise(data, cache_dir=tmp_path / "cache-busy", log=lambda _: None).to_json()
    finally:
        for burner in burners:
            burner.kill()
            burner.wait()
    assert _decision(busy) == _decision(quiet)
