"""Multi-label data from CSV tables: detection, the bad rows, training on codes, thresholds
recorded and applied by predict (CLI and API)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import write_dataset
from multilabel_data import write_multilabel_dataset

import tlvision
from tlvision.cli import main
from tlvision.config import TrainConfig
from tlvision.data.doctor import check_dataset
from tlvision.data.layouts import find_splits, layout_note
from tlvision.errors import UserError
from tlvision.training.fit import fit

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _train(data: Path, out: Path, **options: Any) -> dict[str, Any]:
    settings: dict[str, Any] = dict(
        no_cache=True, input_size=48, epochs=4, batch_size=8, num_workers=0, device="cpu"
    )
    config = TrainConfig(data_dir=data, out_dir=out, **{**settings, **options})
    return fit(config, log=lambda _: None)


@pytest.fixture(scope="module")
def multilabel_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_multilabel_dataset(tmp_path_factory.mktemp("multilabel"))


@pytest.fixture(scope="module")
def logreg_run(multilabel_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("runs") / "logreg"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("OMP_NUM_THREADS", "1")
        _train(multilabel_data, out, strategy="linear-probe", head="logreg")
    return out


def test_csv_tables_are_detected_as_multi_label(multilabel_data: Path) -> None:
    splits = find_splits(multilabel_data)
    assert splits.layout == "csv" and splits.multi_label
    assert splits.class_names == ("blue", "green", "red")
    lines = (multilabel_data / "train.csv").read_text().splitlines()[1:]
    for (path, row), line in zip(splits.samples["train"], lines, strict=True):
        name, labels = line.split(",")
        assert path == multilabel_data / name
        assert [splits.class_names[i] for i in splits.classes_of(row)] == (
            labels.split(";") if labels else []
        )
    note = layout_note(multilabel_data, None)
    assert note is not None and "multi-label, 3 classes" in note


def test_a_csv_with_one_label_per_row_is_single_label(tmp_path: Path) -> None:
    data = write_dataset(tmp_path / "folders", per_class={"train": 3, "val": 2})
    for phase in ("train", "val"):
        rows = [
            f"{phase}/{path.parent.name}/{path.name},{path.parent.name}"
            for path in sorted((data / phase).rglob("*.jpg"))
        ]
        (data / f"{phase}.csv").write_text("file,labels\n" + "\n".join(rows) + "\n")
    splits = find_splits(data)
    assert splits.layout == "csv" and not splits.multi_label
    assert splits.class_names == ("circles", "squares")
    assert [label for _, label in splits.samples["val"]] == [0, 0, 1, 1]


BAD_TABLES = {
    "missing file": (
        "file,labels\nimages/train_1.png,red\nimages/gone.png,blue\n",
        "train.csv: line 3: .*gone.png: no such file",
    ),
    "bad row": (
        "file,labels\nimages/train_1.png,red\nimages/train_2.png,red,blue\n",
        "train.csv: line 3: 3 cells",
    ),
    "labels empty everywhere": (
        "file,labels\nimages/train_1.png,\nimages/train_2.png,\n",
        "train.csv: the labels column is empty on every row",
    ),
    "duplicate": (
        "file,labels\nimages/train_1.png,red\nimages/train_1.png,blue\n",
        "train.csv: line 3: train_1.png is listed again",
    ),
    "unknown columns": ("path,tags\nimages/train_1.png,red\n", "train.csv: line 1 has columns"),
}


@pytest.mark.parametrize("case", sorted(BAD_TABLES))
def test_bad_tables_are_one_line_errors_naming_the_row(
    case: str, multilabel_data: Path, tmp_path: Path
) -> None:
    table, message = BAD_TABLES[case]
    data = _copy_tables(multilabel_data, tmp_path)
    (data / "train.csv").write_text(table)
    with pytest.raises(UserError, match=message) as caught:
        find_splits(data)
    assert "\n" not in str(caught.value)
    # check reports the same row, with the others, instead of stopping
    problems = check_dataset(data, progress=False).problems
    assert any(re.search(message, f"{p.path}: {p.message}") for p in problems)


def test_a_class_with_no_positive_train_image_is_named(
    multilabel_data: Path, tmp_path: Path
) -> None:
    data = _copy_tables(multilabel_data, tmp_path)
    (data / "train.csv").write_text(
        "file,labels\nimages/train_1.png,red\nimages/train_2.png,blue\n"
    )
    with pytest.raises(UserError, match=r"val.csv: line \d+: label 'green' has no positive"):
        find_splits(data)
    report = check_dataset(data, progress=False)
    assert any("'green' has no positive example" in p.message for p in report.problems)


def test_check_lists_every_bad_row_at_once(multilabel_data: Path, tmp_path: Path) -> None:
    data = _copy_tables(multilabel_data, tmp_path)
    (data / "train.csv").write_text(
        "file,labels\nimages/train_1.png,red\nimages/gone.png,blue\n"
        "images/train_2.png,a,b\nimages/train_1.png,blue\nimages/train_3.png,blue\n"
    )
    report = check_dataset(data, progress=False)
    train = [p.message.split(":")[0] for p in report.problems if p.path.endswith("train.csv")]
    assert train == ["line 3", "line 4", "line 5"]  # missing file, bad row, duplicate
    assert any("label 'green'" in p.message for p in report.problems)  # val rows no train has
    assert report.layout == "csv" and report.exit_status == 1


def _copy_tables(source: Path, tmp_path: Path) -> Path:
    """A dataset that reuses `source`'s images (a link) with tables of its own."""
    data = tmp_path / "data"
    data.mkdir()
    (data / "images").symlink_to(source / "images")
    for phase in ("train", "val"):
        (data / f"{phase}.csv").write_text((source / f"{phase}.csv").read_text())
    return data


def test_logreg_on_codes_records_thresholds_and_map(logreg_run: Path) -> None:
    summary = json.loads((logreg_run / "summary.json").read_text())
    model = json.loads((logreg_run / "model.json").read_text())
    assert summary["task"] == model["task"] == "multi-label"
    assert summary["thresholds"] == model["thresholds"] and len(model["thresholds"]) == 3
    assert summary["final_val_map"] >= 0.9
    assert set(summary["val_per_class_ap"]) == {"blue", "green", "red"}
    assert 0.8 <= summary["val_micro_f1"] <= 1.0


def test_predict_json_applies_the_recorded_thresholds(
    logreg_run: Path, multilabel_data: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rows = (multilabel_data / "val.csv").read_text().splitlines()[1:]
    names = [multilabel_data / row.split(",")[0] for row in rows]
    truth = [row.split(",")[1].split(";") if row.split(",")[1] else [] for row in rows]
    assert main(["predict", str(logreg_run), *map(str, names), "--json", "--device", "cpu"]) == 0
    output = json.loads(capsys.readouterr().out)
    thresholds = json.loads((logreg_run / "model.json").read_text())["thresholds"]
    right = 0
    for row, expected in zip(output, truth, strict=True):
        probabilities = row["probabilities"]
        assert list(probabilities) == ["blue", "green", "red"]
        over = [n for n, t in zip(probabilities, thresholds, strict=True) if probabilities[n] >= t]
        assert row["labels"] == over
        right += row["labels"] == expected
    assert right / len(truth) >= 0.75
    # the API gives the same labels
    api = tlvision.load(logreg_run).predict(names[:4], device="cpu", runtime="torch")
    assert [list(p.labels or ()) for p in api] == [row["labels"] for row in output[:4]]
    # the text output names the labels, not the softmax-style ranking
    assert main(["predict", str(logreg_run), *map(str, names[:4]), "--device", "cpu"]) == 0
    lines = capsys.readouterr().out.splitlines()
    for line, row in zip(lines, output[:4], strict=True):
        chosen = ", ".join(f"{n} {row['probabilities'][n]:.3f}" for n in row["labels"])
        assert line == f"{row['path']}: labels: {chosen or 'none over their thresholds'}"


def test_linear_head_trains_with_bce_and_positive_weights(
    multilabel_data: Path, tmp_path: Path
) -> None:
    summary = _train(multilabel_data, tmp_path / "run", class_weights="auto", epochs=3)
    assert summary["task"] == "multi-label" and summary["head"] == "linear"
    metrics = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").open()]
    assert [m["epoch"] for m in metrics] == [1, 2, 3]
    assert summary["final_val_map"] == metrics[-1]["val_map"] >= 0.9
    assert np.isfinite(summary["saved_val_map"])


def test_report_shows_per_class_curves_and_errors(logreg_run: Path) -> None:
    from tlvision.report.page import write_report

    page = write_report(logreg_run).path.read_text()
    assert 'id="pr-curves"' in page and "Multi-label scores" in page
    for name in ("blue", "green", "red"):
        assert f'data-class="{name}"' in page
    assert "Confusion matrix" not in page  # a softmax view of sigmoid outputs would mislead


def test_export_sidecar_and_onnx_runtime_carry_the_thresholds(
    logreg_run: Path, multilabel_data: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("onnxruntime")
    from tlvision.export.exporter import ExportRequest, export_model

    document = export_model(ExportRequest(run_dir=logreg_run, format="onnx"))
    model = json.loads((logreg_run / "model.json").read_text())
    assert document["task"] == "multi-label" and document["thresholds"] == model["thresholds"]
    assert "sigmoid" in document["output"]["meaning"]
    assert document["parity"]["max_abs_sigmoid_difference"] <= 1e-4
    images = [str(p) for p in sorted((multilabel_data / "images").glob("val_*.png"))[:8]]
    rows = {}
    for runtime in ("torch", "onnx"):
        command = ["predict", str(logreg_run), *images, "--json", "--runtime", runtime]
        assert main([*command, "--device", "cpu"]) == 0
        rows[runtime] = json.loads(capsys.readouterr().out)
    assert [r["labels"] for r in rows["onnx"]] == [r["labels"] for r in rows["torch"]]
    for onnx_row, torch_row in zip(rows["onnx"], rows["torch"], strict=True):
        for name, probability in torch_row["probabilities"].items():
            assert onnx_row["probabilities"][name] == pytest.approx(probability, abs=1e-4)


def test_advise_says_plainly_it_does_not_race_multilabel_data(multilabel_data: Path) -> None:
    with pytest.raises(UserError, match=r"does not race multi-label data.*--head logreg"):
        tlvision.advise(multilabel_data)


def test_probe_refuses_multilabel_data_in_one_line(
    multilabel_data: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["probe", str(multilabel_data)]) == 2
    layout_line, error = capsys.readouterr().err.splitlines()  # the layout's line, the error
    assert "CSV tables (multi-label" in layout_line
    assert error.startswith("tlvision: error: ") and "does not measure multi-label data" in error


def test_audit_label_next_and_add_labels_refuse_multilabel_data_in_one_line(
    multilabel_data: Path, logreg_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Each works on one class per image: a multi-label dataset or run gets one line, and
    nothing in DATA changes."""
    before = sorted(path.name for path in multilabel_data.rglob("*"))
    assert main(["audit", str(multilabel_data), "--out", str(tmp_path / "audit")]) == 2
    assert "does not audit multi-label data" in capsys.readouterr().err
    pool = multilabel_data / "images"
    assert main(["label-next", str(logreg_run), str(pool), "-n", "2"]) == 2
    assert "does not rank for multi-label models" in capsys.readouterr().err
    filled = tmp_path / "filled.csv"
    filled.write_text(f"file,class\n{next(pool.iterdir())},red\n")
    assert main(["add-labels", str(filled), str(multilabel_data)]) == 2
    assert "add the rows to train.csv" in capsys.readouterr().err
    assert sorted(path.name for path in multilabel_data.rglob("*")) == before
    assert not (tmp_path / "audit").exists()
