"""Active labelling: `tlvision label-next` on a real run and pool, and `tlvision add-labels`."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from serving import demo_val_images, train_demo_run

from tlvision import demo_data_dir
from tlvision.cli import main
from tlvision.codes.cache import default_cache_dir
from tlvision.inference.sources import expand_image_paths
from tlvision.labelling.next import NEIGHBOURHOOD_DIR
from tlvision.labelling.pool import pool_codes
from tlvision.labelling.selection import (
    margin_uncertainty,
    neighbourhood,
    normalised,
    select,
)
from tlvision.runs.reader import load_run_model

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return train_demo_run(tmp_path_factory.mktemp("labelling") / "run")


@pytest.fixture
def pool(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """pool/ (relative to the working directory): 9 val images, an exact copy of one of them,
    a copy of a train image, and a file that is not an image."""
    monkeypatch.chdir(tmp_path)
    folder = Path("pool")
    (folder / "more").mkdir(parents=True)
    val = demo_val_images()[::3]
    for path in val:
        shutil.copy(path, folder / path.name)
    shutil.copy(val[0], folder / "more" / f"copy-{val[0].name}")
    train_image = sorted((demo_data_dir() / "train").rglob("*.jpg"))[0]
    shutil.copy(train_image, folder / "more" / f"train-{train_image.name}")
    (folder / "broken.jpg").write_text("not an image")
    return folder


def label_next_json(
    run_dir: Path, pool: Path, count: int, capsys: pytest.CaptureFixture[str]
) -> tuple[dict[str, object], str]:
    arguments = ["label-next", str(run_dir), str(pool), "-n", str(count), "--json"]
    assert main([*arguments, "--device", "cpu", "--out", "picked"]) == 0
    captured = capsys.readouterr()
    return json.loads(captured.out), captured.err


def test_label_next_picks_files_as_given_and_skips_duplicates(
    run_dir: Path, pool: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    result, err = label_next_json(run_dir, pool, 9, capsys)
    picks = result["picks"]
    assert isinstance(picks, list) and len(picks) == 9
    files = [pick["file"] for pick in picks]
    assert all(file.startswith("pool/") for file in files)  # as given: relative, not resolved
    assert not any(Path(file).name.startswith("train-") for file in files)
    copied = demo_val_images()[0].name
    assert sum(Path(file).name in {copied, f"copy-{copied}"} for file in files) == 1
    for pick in picks:
        assert set(pick) == {"file", "score", "predicted", "top"}
        assert pick["predicted"] == pick["top"][0]["class"]
    assert [pick["score"] for pick in picks] == sorted((p["score"] for p in picks), reverse=True)
    assert "skipped pool/broken.jpg" in err
    assert result["unreadable"][0]["file"] == "pool/broken.jpg"  # type: ignore[index]
    with Path("picked/label-next.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [row["file"] for row in rows] == files and all(row["class"] == "" for row in rows)
    sheet = Path("picked/label-next.html").read_text()
    assert sheet.count("<img ") == 9 and "tlvision add-labels" in sheet


def test_label_next_keeps_the_pools_neighbourhood_and_reads_it_back(
    run_dir: Path, pool: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(Path("xdg").absolute()))  # the run's codes cache
    first, _err = label_next_json(run_dir, pool, 3, capsys)
    [kept] = list((default_cache_dir() / NEIGHBOURHOOD_DIR).glob("*.json"))
    loaded = load_run_model(run_dir)
    found = pool_codes(loaded, expand_image_paths([pool]), device=torch.device("cpu"))
    computed = neighbourhood(normalised(found.codes))
    document = json.loads(kept.read_text())
    np.testing.assert_allclose(document["typicality"], computed.typicality)
    assert document["nearest"] == computed.nearest.ravel().tolist()
    # The next run over the same pool reads it: steered to one image, that image comes first.
    files = [str(path) for path in found.paths]
    picked = {pick["file"] for pick in first["picks"]}  # type: ignore[attr-defined]
    uncertainty = margin_uncertainty(found.probabilities)
    others = [i for i, file in enumerate(files) if file not in picked and "train-" not in file]
    steered = max(others, key=lambda i: uncertainty[i])
    values = np.full(len(files), 1e-6)
    values[steered] = 1.0
    kept.write_text(json.dumps({**document, "typicality": values.tolist()}))
    second, _err = label_next_json(run_dir, pool, 3, capsys)
    assert second["picks"][0]["file"] == files[steered]  # type: ignore[index]
    # A damaged file, or one naming images the pool does not have, is computed again, and the
    # picks are the first run's.
    out_of_range = [len(files)] * len(document["nearest"])
    for damaged in ("{", json.dumps({**document, "nearest": out_of_range})):
        kept.write_text(damaged)
        again, _err = label_next_json(run_dir, pool, 3, capsys)
        assert again["picks"] == first["picks"]
        rewritten = json.loads(kept.read_text())
        assert rewritten["nearest"] == document["nearest"]
        assert rewritten["typicality"] == pytest.approx(document["typicality"])


def test_more_picks_than_distinct_images_stops_at_the_duplicates(
    run_dir: Path, pool: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # 11 readable images, of which one is a train image and one a copy: 9 can be picked
    result, _err = label_next_json(run_dir, pool, 11, capsys)
    assert len(result["picks"]) == 9  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("empty", "holds no images"),
        ("too-many", "-n 50: the pool has only 11 readable images"),
        ("unreadable", "none of the 1 pool files can be read"),
        ("zero", "-n 0: ask for at least 1"),
    ],
)
def test_bad_pools_are_one_line_errors(
    run_dir: Path, pool: Path, case: str, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    target, count = pool, "50" if case == "too-many" else "0" if case == "zero" else "2"
    if case == "empty":
        target = Path("empty")
        target.mkdir()
    if case == "unreadable":
        target = pool / "broken.jpg"
    status = main(["label-next", str(run_dir), str(target), "-n", count, "--device", "cpu"])
    err = capsys.readouterr().err
    assert status == 2 and message in err and "Traceback" not in err


def test_selection_spreads_over_clusters_before_repeating_one() -> None:
    rng = np.random.default_rng(0)
    centres = np.eye(4, 16) * 10
    codes = np.concatenate([centre + rng.normal(0, 0.5, (20, 16)) for centre in centres])
    probabilities = np.full((80, 2), 0.5)  # equally uncertain everywhere
    picks = select(codes, probabilities, np.zeros((0, 16)), 4)
    assert sorted(pick.index // 20 for pick in picks) == [0, 1, 2, 3]
    labelled = centres[:3] + 0.001  # three clusters already labelled: the fourth comes first
    assert select(codes, probabilities, labelled, 1)[0].index // 20 == 3
    only_uncertain = np.tile([0.99, 0.01], (80, 1))
    only_uncertain[5] = [0.5, 0.5]
    assert select(codes, only_uncertain, np.zeros((0, 16)), 1, diversity=False)[0].index == 5


def test_selection_prefers_a_typical_image_to_a_slightly_more_uncertain_odd_one() -> None:
    rng = np.random.default_rng(0)
    dense = np.eye(1, 16) * 10 + rng.normal(0, 0.5, (30, 16))
    odd = rng.normal(0, 10, (5, 16))  # scattered: far from each other and from the cluster
    codes = np.concatenate([odd, dense])
    probabilities = np.tile([0.55, 0.45], (35, 1))
    probabilities[:5] = [0.5, 0.5]  # the odd ones out are a little more uncertain
    first = select(codes, probabilities, np.zeros((0, 16)), 1)[0]
    assert first.index >= 5 and first.typicality == pytest.approx(1.0)
    # uncertainty alone still takes the most uncertain
    assert select(codes, probabilities, np.zeros((0, 16)), 1, diversity=False)[0].index < 5


def test_selection_prefers_an_uncertain_region_to_an_uncertain_image_among_sure_ones() -> None:
    rng = np.random.default_rng(0)
    region = np.eye(1, 16) * 10 + rng.normal(0, 0.5, (30, 16))
    sure = np.eye(2, 16)[1:] * 10 + rng.normal(0, 0.5, (30, 16))
    codes = np.concatenate([region, sure])
    probabilities = np.tile([0.6, 0.4], (60, 1))  # the region: all rather uncertain
    probabilities[30:] = [0.99, 0.01]  # the other cluster: sure of all ...
    probabilities[45] = [0.5, 0.5]  # ... but one, the most uncertain image of the pool
    first = select(codes, probabilities, np.zeros((0, 16)), 1)[0]
    assert first.index < 30
    assert first.neighbourhood_uncertainty > first.uncertainty - 0.05
    assert select(codes, probabilities, np.zeros((0, 16)), 1, diversity=False)[0].index == 45


def test_a_large_pools_neighbours_are_pool_rows_from_its_sample() -> None:
    pool = normalised(np.random.default_rng(1).normal(size=(300, 8)))
    found = neighbourhood(pool, neighbours=5, sample=100)
    assert found.nearest.shape == (300, 5) and found.typicality.max() == pytest.approx(1.0)
    rows = np.sort(np.random.default_rng(0).choice(300, 100, replace=False))  # the seeded sample
    assert set(found.nearest.ravel()) <= set(rows.tolist())
    for image in (0, 150, 299):
        distance = 1.0 - pool[rows] @ pool[image]
        expected = rows[np.argsort(distance, kind="stable")[1:6]]
        assert sorted(found.nearest[image]) == sorted(expected)


def test_on_real_codes_noise_is_the_least_typical_and_not_picked_first(
    run_dir: Path, tmp_path: Path
) -> None:
    noise = tmp_path / "noise.png"
    pixels = np.random.default_rng(0).integers(0, 256, (96, 96, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(noise)
    loaded = load_run_model(run_dir)
    found = pool_codes(loaded, [noise, *demo_val_images()], device=torch.device("cpu"))
    assert len(found.paths) == 28
    typical = neighbourhood(normalised(found.codes)).typicality
    assert int(np.argmin(typical)) == 0 and typical.max() == pytest.approx(1.0)
    equal = np.full((28, 3), 1 / 3)  # every image as uncertain: typicality and spread decide
    picks = select(found.codes, equal, np.zeros((0, found.codes.shape[1])), 3)
    assert 0 not in [pick.index for pick in picks]
    assert picks[0].index == int(np.argmax(typical))


def filled_csv(tmp_path: Path, rows: list[tuple[str, str]]) -> Path:
    path = tmp_path / "labels.csv"
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["file", "class", "predicted", "score"])
        writer.writerows([(file, name, "fish", "0.5") for file, name in rows])
    return path


def test_add_labels_copies_filled_rows_and_refuses_the_rest(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "data"
    for name in ("fish", "tool"):
        (data / "train" / name).mkdir(parents=True)
    images = demo_val_images()[:3]
    unknown = filled_csv(tmp_path, [(str(images[2]), "whale")]).rename(tmp_path / "u.csv")
    assert main(["add-labels", str(unknown), str(data)]) == 2
    assert "class 'whale' is not a folder" in capsys.readouterr().err
    assert not any((data / "train").rglob("*.jpg"))  # nothing copied
    labels = filled_csv(tmp_path, [(str(images[0]), "tool"), (str(images[1]), "")])
    assert main(["add-labels", str(labels), str(data)]) == 0
    copied = data / "train" / "tool" / images[0].name
    assert copied.read_bytes() == images[0].read_bytes() and images[0].is_file()  # a copy
    assert sorted(p.name for p in (data / "train").rglob("*.jpg")) == [images[0].name]
    assert main(["add-labels", str(labels), str(data)]) == 2  # the name is there now
    assert "already exists" in capsys.readouterr().err
