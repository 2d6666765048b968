"""tlvision check on a salted dataset: real images, real breakage, no mocks."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from PIL import Image, ImageEnhance
from salted_data import make_salted, save_jpegs, texture

from tlvision.cli import main
from tlvision.data.doctor import (
    FLAT_SPLIT,
    MIN_SIDE,
    TEST_SPLIT,
    CheckReport,
    Problem,
    check_dataset,
)
from tlvision.errors import UserError


@pytest.fixture(scope="module")
def salted(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, CheckReport]:
    data = make_salted(tmp_path_factory.mktemp("check"))
    return data, check_dataset(data, progress=False)


def kinds_by_name(findings: list[Problem]) -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    for finding in findings:
        found.setdefault(Path(finding.path).name, set()).add(finding.kind)
    return found


def test_broken_files_are_named_with_their_kind(salted: tuple[Path, CheckReport]) -> None:
    data, report = salted
    assert report.exit_status == 1
    found = kinds_by_name(report.problems)
    assert found["zero.jpg"] == {"zero-byte"}
    assert found["truncated.jpg"] == {"truncated"}
    assert found["text.jpg"] == {"not-an-image"}
    assert found["bomb.png"] == {"decompression-bomb"}
    assert found["tiny.png"] == {"tiny-image"}
    tiny = next(p for p in report.problems if p.kind == "tiny-image")
    assert tiny.path == str(data / "train" / "ants" / "tiny.png")
    assert "8x8" in tiny.message and str(MIN_SIDE) in tiny.message
    bomb = next(p for p in report.problems if p.kind == "decompression-bomb")
    assert "400,000,000 pixels" in bomb.message


def test_exactly_the_expected_problems(salted: tuple[Path, CheckReport]) -> None:
    _, report = salted
    assert report.problem_counts() == {
        "zero-byte": 1,
        "truncated": 1,
        "not-an-image": 1,
        "decompression-bomb": 1,
        "tiny-image": 1,
        "duplicate-across-splits": 1,
        "near-duplicate-across-splits": 1,
        "class-imbalance": 1,
    }
    assert all(problem.message for problem in report.problems)


def test_odd_modes_and_exif_are_notes_not_problems(salted: tuple[Path, CheckReport]) -> None:
    _, report = salted
    notes = {Path(note.path).name: note for note in report.notes}
    problems = kinds_by_name(report.problems)
    expected = {
        "cmyk.jpg": ("converted", "CMYK converted to RGB"),
        "rgba.png": ("converted", "RGBA composited on white"),
        "sixteen.png": ("converted", "16-bit grayscale (I;16) scaled to 8-bit RGB"),
        "palette.png": ("converted", "palette (P) converted to RGB"),
        "gray.jpg": ("converted", "grayscale (L) converted to RGB"),
        "rotated.jpg": ("exif-orientation", "EXIF orientation 6 applied"),
    }
    for name, (kind, message) in expected.items():
        assert name not in problems
        assert (notes[name].kind, notes[name].message) == (kind, message)


def test_hidden_and_system_files_are_ignored(salted: tuple[Path, CheckReport]) -> None:
    data, report = salted
    ignored = set(report.ignored)
    assert data / "train" / ".DS_Store" in ignored
    assert data / "val" / ".DS_Store" in ignored
    assert data / "train" / "__MACOSX" in ignored
    assert data / "train" / "ants" / "._a0.jpg" in ignored
    assert data / "train" / "ants" / "Thumbs.db" in ignored
    reported = {finding.path for finding in report.problems + report.notes}
    assert not any(".DS_Store" in path or "__MACOSX" in path for path in reported)
    assert not any(path.endswith(("._a0.jpg", "Thumbs.db")) for path in reported)


def test_visible_non_image_file_is_named(salted: tuple[Path, CheckReport]) -> None:
    data, report = salted
    [note] = [note for note in report.notes if note.kind == "non-image-file"]
    assert note.path == str(data / "train" / "ants" / "notes.txt")


def test_leakage_names_both_files(salted: tuple[Path, CheckReport]) -> None:
    data, report = salted
    [exact] = [p for p in report.problems if p.kind == "duplicate-across-splits"]
    assert exact.path == str(data / "val" / "ants" / "dup.jpg")
    assert str(data / "train" / "ants" / "a0.jpg") in exact.message
    # The exact copy is not reported again as a near duplicate; only the re-encode is.
    [near] = [p for p in report.problems if p.kind == "near-duplicate-across-splits"]
    assert near.path == str(data / "val" / "ants" / "near.jpg")
    assert str(data / "train" / "ants" / "a1.jpg") in near.message
    assert f"`tlvision audit {data}` also finds copies" in report.to_text()


def test_no_pointer_to_audit_without_leaks(tiny_dataset: Path) -> None:
    assert "tlvision audit" not in check_dataset(tiny_dataset, progress=False).to_text()


def test_class_counts_weights_and_imbalance(salted: tuple[Path, CheckReport]) -> None:
    _, report = salted
    # ants: 9 good + 6 odd-mode + the tiny one load; the 4 broken files do not count.
    assert report.class_counts == {
        "train": {"ants": 16, "bees": 3},
        "val": {"ants": 5, "bees": 2},
    }
    assert report.suggested_class_weights == {"ants": round(19 / 32, 3), "bees": round(19 / 6, 3)}
    [imbalance] = [p for p in report.problems if p.kind == "class-imbalance"]
    assert "--class-weights auto" in imbalance.message
    assert "ants=0.594" in imbalance.message and "bees=3.167" in imbalance.message


def test_json_and_text_reports(salted: tuple[Path, CheckReport]) -> None:
    data, report = salted
    document = json.loads(json.dumps(report.to_json()))
    assert document["exit_status"] == 1 and document["ok"] is False
    assert document["images_checked"] == 30
    assert {problem["kind"] for problem in document["problems"]} >= {"zero-byte", "truncated"}
    assert str(data / "train" / ".DS_Store") in document["ignored"]
    text = report.to_text()
    for name in ("zero.jpg", "truncated.jpg", "text.jpg", "bomb.png", "tiny.png", "dup.jpg"):
        assert name in text
    assert "Problems (8):" in text
    assert "--class-weights auto" in text


def test_check_command_prints_and_returns_status(
    salted: tuple[Path, CheckReport], capsys: pytest.CaptureFixture[str]
) -> None:
    data, _ = salted
    assert main(["check", str(data), "--json"]) == 1
    document = json.loads(capsys.readouterr().out)  # stdout is pure JSON
    assert document["problem_counts"]["zero-byte"] == 1
    assert main(["check", str(data)]) == 1
    assert "Result: 8 problems" in capsys.readouterr().out


def test_clean_dataset_exits_zero(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for split, start in (("train", 0), ("val", 100)):
        save_jpegs(tmp_path / split / "cats", "c", range(start, start + 3))
        save_jpegs(tmp_path / split / "dogs", "d", range(start + 10, start + 13))
    report = check_dataset(tmp_path, progress=False)
    assert (report.problems, report.notes, report.ignored) == ([], [], [])
    assert report.exit_status == 0
    assert report.suggested_class_weights == {"cats": 1.0, "dogs": 1.0}
    assert main(["check", str(tmp_path)]) == 0
    assert "no problems found" in capsys.readouterr().out


def test_class_mismatch_names_both_sides(tmp_path: Path) -> None:
    save_jpegs(tmp_path / "train" / "bees", "b", range(0, 2))
    save_jpegs(tmp_path / "train" / "ants", "a", range(2, 4))
    save_jpegs(tmp_path / "val" / "bess", "b", range(10, 12))
    save_jpegs(tmp_path / "val" / "ants", "a", range(12, 14))
    report = check_dataset(tmp_path, progress=False)
    [mismatch] = [p for p in report.problems if p.kind == "class-mismatch"]
    assert "only in train/: ['bees']" in mismatch.message
    assert "only in val/: ['bess']" in mismatch.message


def test_structural_problems(tmp_path: Path) -> None:
    save_jpegs(tmp_path / "train" / "ants", "a", range(0, 2))
    save_jpegs(tmp_path / "train" / "bees", "b", range(2, 4))
    (tmp_path / "train" / "wasps").mkdir()
    (tmp_path / "train" / "wasps" / "readme.md").write_text("todo\n")
    (tmp_path / "train" / "bees" / "phone.heic").write_bytes(b"ftypheic")
    texture(5).save(tmp_path / "train" / "stray.jpg")
    report = check_dataset(tmp_path, progress=False)
    found = kinds_by_name(report.problems)
    assert found["val"] == {"missing-split"}
    [missing] = [p for p in report.problems if p.kind == "missing-split"]
    assert "--val-split 0.2" in missing.message
    assert found["wasps"] == {"empty-class"}
    assert found["phone.heic"] == {"unsupported-format"}
    assert found["stray.jpg"] == {"loose-file"}
    assert report.suggested_class_weights is None  # wasps has no images
    assert report.exit_status == 1


def test_same_image_in_two_classes(tmp_path: Path) -> None:
    for split, start in (("train", 0), ("val", 100)):
        save_jpegs(tmp_path / split / "cats", "c", range(start, start + 2))
        save_jpegs(tmp_path / split / "dogs", "d", range(start + 10, start + 12))
    shutil.copy(tmp_path / "train" / "cats" / "c0.jpg", tmp_path / "train" / "dogs" / "x.jpg")
    report = check_dataset(tmp_path, progress=False)
    [conflict] = report.problems
    assert conflict.kind == "duplicate-across-classes"
    assert "c0.jpg (cats)" in conflict.message and "x.jpg (dogs)" in conflict.message


def test_flat_images_are_not_near_duplicates_of_each_other(tmp_path: Path) -> None:
    for split, colour in (("train", (10, 10, 10)), ("val", (240, 240, 240))):
        for name in ("cats", "dogs"):
            folder = tmp_path / split / name
            folder.mkdir(parents=True)
            Image.new("RGB", (64, 64), colour).save(folder / f"{name}.png")
            colour = (colour[0] + 5, *colour[1:])
    report = check_dataset(tmp_path, progress=False)
    assert report.problems == []


def test_not_a_dataset_is_a_user_error(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="no such directory"):
        check_dataset(tmp_path / "nowhere")
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(UserError, match="not a directory"):
        check_dataset(tmp_path / "file.txt")
    with pytest.raises(UserError, match="no train/ folder"):
        check_dataset(tmp_path)
    save_jpegs(tmp_path / "train" / "cats", "c", range(2))
    with pytest.raises(UserError, match=r"did you mean"):
        check_dataset(tmp_path / "train")


def test_flat_dataset_is_checked_as_one_pool(tmp_path: Path) -> None:
    save_jpegs(tmp_path / "cats", "c", range(0, 4))
    save_jpegs(tmp_path / "dogs", "d", range(10, 12))
    texture(20).save(tmp_path / "stray.jpg")
    shutil.copy(tmp_path / "cats" / "c0.jpg", tmp_path / "dogs" / "x.jpg")
    report = check_dataset(tmp_path, progress=False)
    assert report.layout == "flat" and report.to_json()["layout"] == "flat"
    assert report.class_counts == {FLAT_SPLIT: {"cats": 4, "dogs": 3}}
    assert report.suggested_class_weights == {"cats": round(7 / 8, 3), "dogs": round(7 / 6, 3)}
    found = kinds_by_name(report.problems)
    assert found == {"stray.jpg": {"loose-file"}, "c0.jpg": {"duplicate-across-classes"}}
    assert "missing-split" not in report.problem_counts()


def test_broken_link_is_a_problem_naming_the_fix(tmp_path: Path) -> None:
    for split, start in (("train", 0), ("val", 100)):
        save_jpegs(tmp_path / split / "cats", "c", range(start, start + 2))
        save_jpegs(tmp_path / split / "dogs", "d", range(start + 10, start + 12))
    link = tmp_path / "train" / "cats" / "x.jpg"
    link.symlink_to(tmp_path / "gone.jpg")
    report = check_dataset(tmp_path, progress=False)
    [problem] = report.problems
    assert (problem.kind, problem.path) == ("broken-link", str(link))
    assert str(tmp_path / "gone.jpg") in problem.message
    assert "restore the file it points to, or delete the link" in problem.message
    assert report.class_counts["train"] == {"cats": 2, "dogs": 2}


def test_names_that_are_not_utf8_survive_json_and_text(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for split, start in (("train", 0), ("val", 100)):
        save_jpegs(tmp_path / split / "cats", "c", range(start, start + 2))
        save_jpegs(tmp_path / split / "dogs", "d", range(start + 10, start + 12))
    broken = Path(os.fsdecode(os.fsencode(tmp_path / "train" / "dogs") + b"/bad_\xff.jpg"))
    broken.write_bytes(b"\xff\xd8\xff\xe0 cut short")
    assert main(["check", str(tmp_path), "--json"]) == 1
    [problem] = json.loads(capsys.readouterr().out)["problems"]
    assert Path(problem["path"]) == broken and os.fsencode(problem["path"]).endswith(b"_\xff.jpg")
    # capsys's stream is strict UTF-8, as stdout is in an en_US.UTF-8 locale
    assert main(["check", str(tmp_path)]) == 1
    assert "bad_\\udcff.jpg: truncated image data" in capsys.readouterr().out


def write_three_splits(root: Path) -> Path:
    """train, val and test/ with two classes each and no image shared between them."""
    for split, start in (("train", 0), ("val", 100), (TEST_SPLIT, 200)):
        save_jpegs(root / split / "cats", "c", range(start, start + 3))
        save_jpegs(root / split / "dogs", "d", range(start + 10, start + 13))
    return root


def save_near_copy(source: Path, target: Path) -> None:
    """A re-encoded, slightly brighter copy: other bytes, nearly the same picture."""
    brighter = ImageEnhance.Brightness(Image.open(source).convert("RGB")).enhance(1.08)
    brighter.save(target, quality=70)


def test_clean_dataset_with_test_split_exits_zero(tmp_path: Path) -> None:
    data = write_three_splits(tmp_path)
    report = check_dataset(data, progress=False)
    assert (report.problems, report.notes, report.ignored) == ([], [], [])
    assert report.class_counts == {
        "train": {"cats": 3, "dogs": 3},
        "val": {"cats": 3, "dogs": 3},
        "test": {"cats": 3, "dogs": 3},
    }
    assert report.images_checked == 18
    assert report.suggested_class_weights == {"cats": 1.0, "dogs": 1.0}
    assert "test 6" in report.to_text()


def test_missing_test_split_is_normal(tmp_path: Path) -> None:
    data = write_three_splits(tmp_path)
    shutil.rmtree(data / TEST_SPLIT)
    report = check_dataset(data, progress=False)
    assert report.problems == [] and list(report.class_counts) == ["train", "val"]


def test_test_split_leakage_names_both_files(tmp_path: Path) -> None:
    data = write_three_splits(tmp_path)
    train, val, test = (data / split / "cats" for split in ("train", "val", TEST_SPLIT))
    shutil.copy(train / "c0.jpg", test / "from_train.jpg")
    shutil.copy(val / "c100.jpg", test / "from_val.jpg")
    save_near_copy(train / "c1.jpg", test / "near_train.jpg")
    save_near_copy(val / "c101.jpg", test / "near_val.jpg")
    report = check_dataset(data, progress=False)
    found = kinds_by_name(report.problems)
    assert found == {
        "from_train.jpg": {"duplicate-across-splits"},
        "from_val.jpg": {"duplicate-across-splits"},
        "near_train.jpg": {"near-duplicate-across-splits"},
        "near_val.jpg": {"near-duplicate-across-splits"},
    }
    by_path = {Path(problem.path).name: problem.message for problem in report.problems}
    assert f"{train / 'c0.jpg'} in train/" in by_path["from_train.jpg"]
    assert f"{val / 'c100.jpg'} in val/" in by_path["from_val.jpg"]
    assert f"{train / 'c1.jpg'} in train/" in by_path["near_train.jpg"]
    assert f"{val / 'c101.jpg'} in val/" in by_path["near_val.jpg"]
    for message in by_path.values():
        assert "the test score is inflated" in message and "delete the test copy" in message
    assert (
        "trained on" in by_path["from_train.jpg"] and "picks the epoch" in by_path["from_val.jpg"]
    )
    assert report.class_counts[TEST_SPLIT] == {"cats": 7, "dogs": 3}


def test_test_copy_of_a_file_in_train_and_val_is_named_for_both(tmp_path: Path) -> None:
    data = write_three_splits(tmp_path)
    original = data / "train" / "dogs" / "d10.jpg"
    val_copy, test_copy = data / "val" / "dogs" / "x.jpg", data / TEST_SPLIT / "dogs" / "y.jpg"
    shutil.copy(original, val_copy)
    shutil.copy(original, test_copy)
    report = check_dataset(data, progress=False)
    assert report.problem_counts() == {"duplicate-across-splits": 3}
    named = {(p.path, p.message.split(": ")[0]) for p in report.problems}
    assert named == {
        (str(val_copy), f"same file content as {original} in train/"),
        (str(test_copy), f"same file content as {original} in train/"),
        (str(test_copy), f"same file content as {val_copy} in val/"),
    }


def test_test_split_class_folders_are_compared_with_train(tmp_path: Path) -> None:
    data = write_three_splits(tmp_path)
    save_jpegs(data / TEST_SPLIT / "birds", "b", range(300, 302))
    report = check_dataset(data, progress=False)
    [mismatch] = report.problems
    assert (mismatch.kind, mismatch.path) == ("class-mismatch", str(data / TEST_SPLIT))
    assert "only in train/: none" in mismatch.message
    assert "only in test/: ['birds']" in mismatch.message
    assert report.class_counts[TEST_SPLIT] == {"birds": 2, "cats": 3, "dogs": 3}
    # Class weights and imbalance look at train only.
    assert report.suggested_class_weights == {"cats": 1.0, "dogs": 1.0}


def test_test_split_files_are_decoded_and_sorted_out(tmp_path: Path) -> None:
    data = write_three_splits(tmp_path)
    (data / TEST_SPLIT / "cats" / "zero.jpg").touch()
    texture(400).save(data / TEST_SPLIT / "stray.jpg")
    (data / TEST_SPLIT / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
    save_jpegs(data / TEST_SPLIT / "dogs", "extra", range(500, 530))  # test imbalance is fine
    report = check_dataset(data, progress=False)
    found = kinds_by_name(report.problems)
    assert found == {"zero.jpg": {"zero-byte"}, "stray.jpg": {"loose-file"}}
    stray = next(p for p in report.problems if p.kind == "loose-file")
    assert "so the test score ignores it" in stray.message
    assert report.ignored == [data / TEST_SPLIT / ".DS_Store"]
    assert report.images_checked == 18 + 1 + 30


def test_class_weights_are_sklearn_balanced() -> None:
    import numpy as np
    from sklearn.utils.class_weight import compute_class_weight

    from tlvision.data.doctor_classes import suggested_class_weights

    counts = {"a": 7, "b": 1, "c": 13}
    labels = [name for name, n in counts.items() for _ in range(n)]
    expected = compute_class_weight("balanced", classes=np.array(list(counts)), y=labels)
    weights = suggested_class_weights(counts)
    assert weights == {name: round(21 / (3 * n), 3) for name, n in counts.items()}
    assert weights == {n: round(float(w), 3) for n, w in zip(counts, expected, strict=True)}
    assert suggested_class_weights({"a": 3}) is None
    assert suggested_class_weights({"a": 3, "b": 0}) is None
