"""`tlvision audit`: planted label errors, a planted leak and a planted stranger are found on a
small set of real images, the dataset's bytes are the same afterwards, and bad inputs get a
one-line error."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import write_dataset
from PIL import Image, ImageOps

import tlvision
from tlvision.cli import main
from tlvision.errors import UserError

CLASSES = ("circles", "squares", "stripes")


def _contents(root: Path) -> dict[str, str]:
    return {
        path.relative_to(root).as_posix(): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(root.rglob("*"))
        if path.is_file()
    }


def _reference_subset(reference: Path, root: Path, train: int = 20, val: int = 6) -> None:
    """The first images of each class of the reference set (ants and bees photos)."""
    for split, count in (("train", train), ("val", val)):
        for name in ("ants", "bees"):
            (root / split / name).mkdir(parents=True)
            for path in sorted((reference / split / name).glob("*.jpg"))[:count]:
                shutil.copy(path, root / split / name / path.name)


def _planted(reference: Path, root: Path) -> dict[str, list[str]]:
    """Ants and bees photos with two flipped labels, a mirrored and resized copy of a val image
    in train, and a grey checkerboard among the ants."""
    _reference_subset(reference, root)
    flips = []
    for source, target in (("ants", "bees"), ("bees", "ants")):
        first = sorted((root / "train" / source).glob("*.jpg"))[0]
        moved = root / "train" / target / f"flipped_{first.name}"
        shutil.move(first, moved)
        flips.append(moved.relative_to(root).as_posix())
    leaked = sorted((root / "val" / "bees").glob("*.jpg"))[2]
    original = Image.open(leaked)
    copy = ImageOps.mirror(original).resize((original.width // 2, original.height // 2))
    copy.save(root / "train" / "bees" / "copy_of_val.jpg", quality=80)
    board = np.kron((np.indices((6, 6)).sum(axis=0) % 2) * 200 + 30, np.ones((16, 16)))
    Image.fromarray(board.astype(np.uint8)).convert("RGB").save(
        root / "train" / "ants" / "stranger.png"
    )
    return {
        "flips": flips,
        "leak": [leaked.relative_to(root).as_posix(), "train/bees/copy_of_val.jpg"],
        "stranger": ["train/ants/stranger.png"],
    }


def test_audit_finds_planted_errors_and_changes_nothing(
    tmp_path: Path, reference_data: Path
) -> None:
    data = tmp_path / "data"
    planted = _planted(reference_data, data)
    before = _contents(data)
    report = tlvision.audit(data, out=tmp_path / "audit", input_size=160, device="cpu")
    assert _contents(data) == before  # not a byte, not a file name changed
    issues = report.label_issues
    top = [issue["file"] for issue in issues[:4]]
    assert set(planted["flips"]) <= set(top), issues[:6]
    flipped = {issue["file"]: issue for issue in issues}
    assert flipped[planted["flips"][0]]["given"] == "bees"
    assert flipped[planted["flips"][0]]["suggested"] == "ants"
    first = report.duplicates[0]
    assert sorted(first["files"]) == sorted(planted["leak"]) and first["across_splits"]
    assert first["splits"] == ["train", "val"]
    assert planted["stranger"][0] in [item["file"] for item in report.outliers[:3]]
    written = json.loads((tmp_path / "audit" / "audit.json").read_text())
    assert written["label_issues"] == json.loads(json.dumps(issues))
    page = (tmp_path / "audit" / "audit.html").read_text()
    assert page.count("data:image/jpeg;base64,") > 10 and 'src="http' not in page
    fixes = (tmp_path / "audit" / "audit_fixes.csv").read_text().splitlines()
    assert f"{planted['flips'][0]},train,label,move to ants" in "\n".join(fixes)
    assert "<img" in report._repr_html_()


def test_audit_command_writes_outside_the_data_only(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = write_dataset(tmp_path / "data", CLASSES, {"train": 6, "val": 3})
    arguments = ["audit", str(data), "--input-size", "64", "--device", "cpu"]
    assert main([*arguments, "--out", str(tmp_path / "out"), "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["images"] == {"train": 18, "val": 9}
    assert (tmp_path / "out" / "audit.json").is_file()
    assert main([*arguments, "--out", str(data / "audit")]) == 2
    assert "inside the dataset" in capsys.readouterr().err
    assert not (data / "audit").exists()


def test_audit_lists_unreadable_files_and_goes_on(tmp_path: Path) -> None:
    data = write_dataset(tmp_path / "data", CLASSES, {"train": 6, "val": 3})
    (data / "train" / "squares" / "broken.jpg").write_bytes(b"not a jpeg at all")
    report = tlvision.audit(data, input_size=64, device="cpu")
    unreadable = report.to_json()["unreadable"]
    assert [item["path"] for item in unreadable] == [str(data / "train" / "squares" / "broken.jpg")]
    assert unreadable[0]["kind"] == "unreadable" and "fix or remove it" in unreadable[0]["message"]
    assert report.to_json()["images"]["train"] == 18


def test_too_few_images_for_the_folds(tmp_path: Path) -> None:
    data = write_dataset(tmp_path / "data", CLASSES, {"train": 2, "val": 1})
    with pytest.raises(UserError, match=r"fewer images than the 5 folds.*--folds 3"):
        tlvision.audit(data, input_size=64, device="cpu")
    assert tlvision.audit(data, folds=3, input_size=64, device="cpu").to_json()["folds"] == 3


def test_one_class_dataset(tmp_path: Path) -> None:
    data = write_dataset(tmp_path / "data", ("circles",), {"train": 6, "val": 3})
    with pytest.raises(UserError, match="found one class"):
        tlvision.audit(data, input_size=64, device="cpu")


def test_the_duplicate_search_never_holds_an_n_by_n_matrix(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import tracemalloc

    from tlvision.auditor import duplicates
    from tlvision.auditor.duplicates import similar_pairs, unit_rows

    monkeypatch.setattr(duplicates, "BLOCK_ELEMENTS", 1 << 20)  # 100,000 images: 1 << 24

    rng = np.random.default_rng(0)
    codes = rng.normal(size=(6000, 8)).astype(np.float32)
    codes[5999] = codes[10] * 1.01  # one planted copy
    unit = unit_rows(codes)
    tracemalloc.start()
    pairs = similar_pairs(unit, 0.99999)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert (10, 5999) in [(a, b) for a, b, _similarity in pairs.as_tuples()]
    full = 6000 * 6000 * 4  # 144 MB
    assert peak < 3 * (1 << 20) * 4 + 2_000_000 < full / 9
    small = unit[:500]
    brute = {(a, b) for a in range(500) for b in range(a + 1, 500) if small[a] @ small[b] >= 0.9}
    assert {(a, b) for a, b, _s in similar_pairs(small, 0.9).as_tuples()} == brute


def test_the_blocked_search_equals_the_plain_one_and_bounds_crowded_images(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Blocks of 7 rows give every pair at or above the threshold, in order, with the
    similarity of the plain n x n product; an image with more near neighbours than the limit
    keeps its most similar ones, so the pairs stay within n x limit."""
    from tlvision.auditor import duplicates
    from tlvision.auditor.duplicates import similar_pairs, unit_rows

    rng = np.random.default_rng(1)
    codes = rng.normal(size=(400, 16)).astype(np.float32)
    codes[:60] = codes[0] + 0.3 * rng.normal(size=(60, 16))  # a crowd of look-alikes
    unit = unit_rows(codes)
    plain = unit @ unit.T
    everything = [(a, b) for a in range(400) for b in range(a + 1, 400) if plain[a, b] >= 0.8]
    assert len(everything) > 1000
    monkeypatch.setattr(duplicates, "BLOCK_ELEMENTS", 7 * 400)
    blocked = similar_pairs(unit, 0.8).as_tuples()
    assert [(a, b) for a, b, _s in blocked] == everything
    assert np.allclose([s for _a, _b, s in blocked], [plain[a, b] for a, b in everything])

    limited = similar_pairs(unit, 0.8, nearest=5)
    assert len(limited) <= 400 * 5
    kept = set(zip(limited.first.tolist(), limited.second.tolist(), strict=True))
    for row in range(60):
        others = np.delete(np.arange(400), row)
        near = others[plain[row, others] >= 0.8]
        best = near[np.argsort(-plain[row, near])[:5]]
        assert all((min(row, b), max(row, b)) in kept for b in best.tolist())
    assert kept <= set(everything)


def test_look_alike_images_do_not_chain_into_one_group() -> None:
    from tlvision.auditor.duplicates import MAX_GROUP, duplicate_groups, unit_rows

    rng = np.random.default_rng(0)
    codes = rng.normal(size=(1, 16)) + 0.05 * rng.normal(size=(100, 16))  # all alike
    codes = np.concatenate([codes, codes[:1]])  # and one exact copy
    digests = [str(row) for row in range(100)] + ["0"]
    groups = duplicate_groups(unit_rows(codes), digests, 0.9, ["train"] * 50 + ["val"] * 51)
    assert max(len(group.rows) for group in groups) <= MAX_GROUP
    assert any({0, 100} <= set(group.rows) for group in groups)
    assert groups[0].spans_splits(["train"] * 50 + ["val"] * 51)


def test_fits_in_threads_give_the_fits_one_after_another_give() -> None:
    """The audit's logistic regressions run side by side in threads: the same C and the same
    out-of-fold probabilities, bit for bit, as one fit after another."""
    from tlvision.auditor.labels import choose_C, out_of_fold_probabilities

    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(3), 40)
    codes = (rng.normal(size=(120, 32)) + labels[:, None] * 0.4).astype(np.float32)
    train = np.arange(120) % 4 != 0
    assert choose_C(codes, labels, train, 0, jobs=2) == choose_C(codes, labels, train, 0, jobs=1)
    alone = out_of_fold_probabilities(codes, labels, C=0.1, folds=5, seed=0, jobs=1)
    side_by_side = out_of_fold_probabilities(codes, labels, C=0.1, folds=5, seed=0, jobs=2)
    assert np.array_equal(alone, side_by_side)
    assert np.allclose(alone.sum(axis=1), 1.0)


def test_the_chosen_C_is_remembered_for_the_same_train_codes(tmp_path: Path) -> None:
    from tlvision.auditor.labels import choose_C

    rng = np.random.default_rng(1)
    labels = np.repeat(np.arange(3), 40)
    codes = (rng.normal(size=(120, 32)) + labels[:, None] * 0.4).astype(np.float32)
    train = np.arange(120) % 4 != 0
    memo = tmp_path / "choices"
    chosen = choose_C(codes, labels, train, 0, remember_in=memo)
    assert chosen == choose_C(codes, labels, train, 0)  # the choice itself, unchanged
    (kept,) = memo.glob("C-*.json")
    assert json.loads(kept.read_text()) == {"C": chosen}
    kept.write_text(json.dumps({"C": 123.0}))  # what a second audit reads is the file
    assert choose_C(codes, labels, train, 0, remember_in=memo) == 123.0
    relabelled = labels.copy()
    relabelled[1] = 2  # one train label changed: chosen again, kept beside the first
    assert choose_C(codes, relabelled, train, 0, remember_in=memo) != 123.0
    assert choose_C(codes, labels, train, 1, remember_in=memo) != 123.0  # another seed
    assert len(list(memo.glob("C-*.json"))) == 3
    kept.write_text("not json")  # a damaged file: chosen again and rewritten
    assert choose_C(codes, labels, train, 0, remember_in=memo) == chosen
    assert json.loads(kept.read_text()) == {"C": chosen}
