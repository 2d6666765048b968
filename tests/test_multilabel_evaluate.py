"""Label tables scored after training: DATA/test.csv at the end of `train`, and `evaluate` on a
table or a DATA folder holding tables (CLI and API), multi-label and single-label."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import write_dataset
from multilabel_data import write_multilabel_dataset
from sklearn.metrics import average_precision_score, f1_score

import tlvision
from tlvision.cli import main
from tlvision.config import TrainConfig
from tlvision.errors import UserError
from tlvision.inference.table_evaluation import MultiLabelReport
from tlvision.training.fit import fit

pytestmark = pytest.mark.usefixtures("one_torch_thread")
CLASSES = ["blue", "green", "red"]


def _train(data: Path, out: Path, **options: Any) -> dict[str, Any]:
    settings: dict[str, Any] = dict(
        no_cache=True, input_size=48, epochs=2, batch_size=8, num_workers=0, device="cpu"
    )
    config = TrainConfig(data_dir=data, out_dir=out, **{**settings, **options})
    return fit(config, log=lambda _: None)


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("multilabel")
    return write_multilabel_dataset(root, repeats={"train": 3, "val": 2, "test": 1})


@pytest.fixture(scope="module")
def run(data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("runs") / "logreg"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("OMP_NUM_THREADS", "1")
        _train(data, out, strategy="linear-probe", head="logreg")
    return out


def _rows(table: Path) -> tuple[list[Path], np.ndarray]:
    """The images of a table and their 0/1 targets, read here without tlvision."""
    paths, targets = [], []
    for line in table.read_text().splitlines()[1:]:
        name, labels = line.split(",")
        paths.append(table.parent / name)
        targets.append([float(c in labels.split(";")) for c in CLASSES])
    return paths, np.asarray(targets)


def test_test_csv_is_scored_once_at_the_end_and_leads_the_summary(run: Path, data: Path) -> None:
    summary = json.loads((run / "summary.json").read_text())
    assert list(summary)[:4] == ["test_map", "test_micro_f1", "test_macro_f1", "test_images"]
    assert summary["test_images"] == 16 and summary["val_images"] == 32
    # the same rows scored apart: every image's probabilities from predict, scikit-learn's
    # metrics at the thresholds the run recorded
    paths, truth = _rows(data / "test.csv")
    predictions = tlvision.load(run).predict(paths, device="cpu", runtime="torch")
    scores = np.asarray([[p.probabilities[c] for c in CLASSES] for p in predictions])
    ap = [average_precision_score(truth[:, c], scores[:, c]) for c in range(3)]
    assert summary["test_map"] == pytest.approx(np.mean(ap), abs=1e-6)
    chosen = (scores >= np.asarray(summary["thresholds"])).astype(int)
    assert summary["test_micro_f1"] == pytest.approx(f1_score(truth, chosen, average="micro"))
    assert summary["test_macro_f1"] == pytest.approx(f1_score(truth, chosen, average="macro"))
    # and `evaluate` on the same table gives the very numbers
    report = tlvision.load(run).evaluate(data / "test.csv", device="cpu")
    assert isinstance(report, MultiLabelReport)
    assert report.to_json()["map"] == summary["test_map"]
    assert report.to_json()["micro_f1"] == summary["test_micro_f1"]


def test_the_report_and_the_served_model_info_carry_the_test_map(run: Path) -> None:
    from tlvision.report.page import write_report
    from tlvision.serve.schemas import run_metrics

    summary = json.loads((run / "summary.json").read_text())
    write_report(run)
    page = (run / "report.html").read_text()
    label = "test mAP (the saved weights, scored once at the end)"
    assert f"<td>{label}</td><td>{round(summary['test_map'], 4)}</td>" in page
    assert run_metrics(run)["test_map"] == summary["test_map"]


def test_evaluate_prints_map_f1_and_per_class_scores(
    run: Path, data: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    summary = json.loads((run / "summary.json").read_text())
    assert main(["evaluate", str(run), str(data / "val.csv"), "--device", "cpu"]) == 0
    text = capsys.readouterr().out.splitlines()
    assert text[0].startswith("mAP ") and "on 32 images" in text[0] and "micro F1" in text[0]
    assert text[2].split() == ["class", "AP", "threshold", "precision", "recall", "f1", "support"]
    assert [line.split()[0] for line in text[3:6]] == CLASSES
    # a DATA folder: val.csv by default, --split test picks test.csv; --json says the same
    assert main(["evaluate", str(run), str(data), "--json", "--device", "cpu"]) == 0
    on_val = json.loads(capsys.readouterr().out)
    assert f"mAP {on_val['map']:.4f} on 32 images" in text[0]
    assert on_val["map"] == pytest.approx(summary["saved_val_map"], abs=1e-5)
    assert [row["class"] for row in on_val["per_class"]] == CLASSES
    assert [row["threshold"] for row in on_val["per_class"]] == summary["thresholds"]
    for row in on_val["per_class"]:
        assert row["ap"] == pytest.approx(summary["val_per_class_ap"][row["class"]], abs=1e-5)
        assert {"precision", "recall", "f1", "support"} <= set(row)
    command = ["evaluate", str(run), str(data), "--split", "test", "--json", "--device", "cpu"]
    assert main(command) == 0
    on_test = json.loads(capsys.readouterr().out)
    assert (on_test["map"], on_test["images"]) == (summary["test_map"], 16)


def test_a_multilabel_run_given_class_folders_is_told_to_pass_a_table(
    run: Path, data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    split = tmp_path / "val"
    for name in ("blue", "red"):
        (split / name).mkdir(parents=True)
        (split / name / "a.png").symlink_to(data / "images" / "val_49.png")
    assert main(["evaluate", str(run), str(split), "--device", "cpu"]) == 2
    error = capsys.readouterr().err.strip()
    assert "\n" not in error and "multi-label run" in error and "DATA/val.csv" in error
    with pytest.raises(UserError, match="multi-label run; pass a table"):
        tlvision.load(run).evaluate(split)
    tables = tmp_path / "tables"
    tables.mkdir()
    (tables / "train.csv").write_text("file,labels\n")
    with pytest.raises(UserError, match=r"test.csv: no such file in this CSV dataset"):
        tlvision.load(run).evaluate(tables, split="test")


def _single_label_tables(data: Path) -> Path:
    """train/val/test.csv with one label a row over the class folders of `data`."""
    for phase in ("train", "val", "test"):
        rows = [
            f"{phase}/{path.parent.name}/{path.name},{path.parent.name}"
            for path in sorted((data / phase).rglob("*.jpg"))
        ]
        (data / f"{phase}.csv").write_text("file,labels\n" + "\n".join(rows) + "\n")
    return data


def test_a_single_label_csv_run_scores_test_csv_and_refuses_several_labels(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = write_dataset(tmp_path / "data", per_class={"train": 6, "val": 3, "test": 4})
    _single_label_tables(data)
    summary = _train(
        data, tmp_path / "run", weights="none", backbone="resnet18", learning_rate=0.05
    )
    assert next(iter(summary)) == "test_acc" and summary["test_images"] == 8
    on_table = tlvision.load(tmp_path / "run").evaluate(data, split="test", device="cpu")
    on_folder = tlvision.load(tmp_path / "run").evaluate(data / "test", device="cpu")
    assert summary["test_acc"] == on_table.accuracy == on_folder.accuracy
    folders = tmp_path / "folders"  # a DATA folder without tables: --split picks DATA/test
    folders.mkdir()
    for phase in ("train", "val", "test"):
        (folders / phase).symlink_to(data / phase)
    on_split = tlvision.load(tmp_path / "run").evaluate(folders, split="test", device="cpu")
    assert on_split.to_json() == on_folder.to_json()
    assert main(["evaluate", str(tmp_path / "run"), str(data / "val.csv"), "--device", "cpu"]) == 0
    assert capsys.readouterr().out.startswith("accuracy ")
    (data / "several.csv").write_text("file,labels\nval/circles/circles_0.jpg,circles;squares\n")
    assert main(["evaluate", str(tmp_path / "run"), str(data / "several.csv")]) == 2
    error = capsys.readouterr().err.strip()
    assert "several.csv: line 2: 2 labels, but this run is single-label" in error
    assert "\n" not in error


def test_a_bad_test_csv_after_the_model_is_saved_is_a_note_not_a_lost_run(
    data: Path, tmp_path: Path
) -> None:
    copy = tmp_path / "data"
    copy.mkdir()
    (copy / "images").symlink_to(data / "images")
    for phase in ("train", "val"):
        (copy / f"{phase}.csv").write_text((data / f"{phase}.csv").read_text())
    (copy / "test.csv").write_text("file,labels\nimages/test_81.png,red\nimages/gone.png,blue\n")
    messages: list[str] = []
    config = TrainConfig(
        data_dir=copy, out_dir=tmp_path / "run", strategy="linear-probe", head="logreg",
        no_cache=True, input_size=48, num_workers=0, device="cpu",
    )  # fmt: skip
    summary = fit(config, log=messages.append)
    assert "test_map" not in summary and "line 3" in summary["test_error"]
    assert "gone.png: no such file" in summary["test_error"]
    assert any(m.startswith("note: no test score: ") for m in messages)
    assert tlvision.load(tmp_path / "run").summary["final_val_map"] >= 0.9


def test_a_frozen_run_scored_from_its_cached_codes_gives_sigmoid_probabilities(
    data: Path, tmp_path: Path
) -> None:
    """evaluate reads a frozen body's codes back from the cache: the head's logits then go
    through a sigmoid each, as the images' route does, not a softmax."""
    out = tmp_path / "run"
    summary = _train(data, out, strategy="linear-probe", head="logreg", no_cache=False,
                     cache_dir=tmp_path / "codes")  # fmt: skip
    cached = tlvision.load(out).evaluate(data / "test.csv", device="cpu")
    images = tlvision.load(out).evaluate(data / "test.csv", device="cpu", runtime="torch")
    assert isinstance(cached, MultiLabelReport) and isinstance(images, MultiLabelReport)
    np.testing.assert_allclose(cached.probabilities, images.probabilities, atol=1e-4)
    assert cached.map == summary["test_map"] == pytest.approx(images.map, abs=1e-3)
