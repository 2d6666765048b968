"""Heads on CNN codes, the probe, and putting heads back into networks."""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_model, save_model
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import LinearSVC
from torch import nn

from tlvision.advisor.probe import format_probe_table, probe
from tlvision.codes.cache import FeatureCache
from tlvision.codes.split_codes import extract_split_codes
from tlvision.config import HEADS
from tlvision.data.layouts import find_splits
from tlvision.data.loading import ImageDataset
from tlvision.data.transforms import build_transforms
from tlvision.errors import UserError
from tlvision.models.backbone import get_backbone
from tlvision.models.network import (
    choose_weights,
    create_model,
    head_of,
    install_head,
    preprocessing_for,
)
from tlvision.models.stages import StageClassifier, StageCodes
from tlvision.models.weights import WeightsChoice
from tlvision.training.heads import HeadTraining, train_linear_head
from tlvision.training.sklearn_heads import fit_sklearn_head, select_C, sklearn_to_linear

REFERENCE_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "hymenoptera_data"
NO_WEIGHTS = WeightsChoice(spec=None, path=None, label="none")


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def blobs(
    count: int, classes: int, dim: int, *, seed: int, spread: float = 1.0
) -> tuple[np.ndarray, np.ndarray]:
    """Gaussian clusters around random centres: separable when `spread` is small."""
    rng = np.random.default_rng(seed)
    centres = np.random.default_rng(1234).normal(0, 3, size=(classes, dim))
    labels = rng.integers(classes, size=count)
    codes = centres[labels] + rng.normal(0, spread, size=(count, dim))
    return codes.astype(np.float32), labels


def argmax_of(layer: nn.Linear, codes: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return layer(torch.from_numpy(np.array(codes))).argmax(dim=1).numpy()


def test_linear_head_learns_a_separable_problem() -> None:
    train, train_labels = blobs(600, 4, 32, seed=0)
    val, val_labels = blobs(300, 4, 32, seed=1)
    layer, history = train_linear_head(
        train, train_labels, val, val_labels, num_classes=4,
        training=HeadTraining(epochs=10, seed=0),
    )  # fmt: skip
    assert isinstance(layer, nn.Linear) and (layer.in_features, layer.out_features) == (32, 4)
    assert [record["epoch"] for record in history] == list(range(1, 11))
    assert set(history[0]) == {
        "epoch", "train_loss", "train_acc", "val_loss", "val_acc", "lr", "seconds"
    }  # fmt: skip
    assert max(record["val_acc"] for record in history) >= 0.95
    assert (argmax_of(layer, val) == val_labels).mean() == max(r["val_acc"] for r in history)


def test_linear_head_keeps_the_best_epoch_or_the_last_and_is_reproducible() -> None:
    train, train_labels = blobs(200, 3, 16, seed=0, spread=4.0)
    val, val_labels = blobs(200, 3, 16, seed=1, spread=4.0)
    training = HeadTraining(epochs=6, learning_rate=0.05, seed=5)
    best, history = train_linear_head(
        train, train_labels, val, val_labels, num_classes=3, training=training
    )
    again, _ = train_linear_head(
        train, train_labels, val, val_labels, num_classes=3, training=training
    )
    torch.testing.assert_close(best.weight, again.weight, rtol=0, atol=0)
    accuracies = [record["val_acc"] for record in history]
    assert (argmax_of(best, val) == val_labels).mean() == pytest.approx(max(accuracies))
    last, history = train_linear_head(
        train, train_labels, val, val_labels, num_classes=3,
        training=replace(training, keep_best=False),
    )  # fmt: skip
    assert (argmax_of(last, val) == val_labels).mean() == pytest.approx(history[-1]["val_acc"])


def test_linear_head_starts_from_init_and_folds_standardisation() -> None:
    train, train_labels = blobs(300, 3, 8, seed=0)
    train = train * 50 + 100  # badly scaled codes
    val, val_labels = blobs(100, 3, 8, seed=1)
    val = val * 50 + 100
    init = nn.Linear(8, 3)
    start = init.weight.detach().clone()
    layer, history = train_linear_head(
        train, train_labels, val, val_labels, num_classes=3, init=init,
        training=HeadTraining(
            epochs=5, standardize=True, optimizer="adamw", learning_rate=0.01, schedule="cosine"
        ),
    )  # fmt: skip
    torch.testing.assert_close(init.weight, start)  # init is copied, not trained in place
    assert history[-1]["val_acc"] >= 0.95
    assert (argmax_of(layer, val) == val_labels).mean() >= 0.95  # reads raw codes


def test_class_weights_weight_the_losses_like_cross_entropy_loss() -> None:
    train, train_labels = blobs(120, 2, 8, seed=0, spread=3.0)
    val, val_labels = blobs(60, 2, 8, seed=1, spread=3.0)
    layer, history = train_linear_head(
        train, train_labels, val, val_labels, num_classes=2,
        training=HeadTraining(epochs=2, keep_best=False), class_weights=[1.0, 3.0],
    )  # fmt: skip
    criterion = nn.CrossEntropyLoss(weight=torch.tensor([1.0, 3.0]))
    with torch.no_grad():
        expected = criterion(layer(torch.from_numpy(val)), torch.from_numpy(val_labels))
    assert history[-1]["val_loss"] == pytest.approx(float(expected), rel=1e-5)


def test_linear_head_trains_on_views_one_per_image_per_epoch() -> None:
    centre, labels = blobs(100, 2, 8, seed=0)
    views = [centre, centre + 0.01, centre - 0.01]
    _layer, history = train_linear_head(
        views, labels, centre, labels, num_classes=2,
        training=HeadTraining(epochs=3, batch_size=10, seed=0),
    )  # fmt: skip
    assert len(history) == 3 and history[-1]["val_acc"] >= 0.95
    with pytest.raises(ValueError, match="one shape"):
        train_linear_head([centre, centre[:50]], labels, centre, labels, num_classes=2)


@pytest.mark.parametrize("kind", ["logreg", "svm"])
@pytest.mark.parametrize("classes", [2, 4])
def test_sklearn_heads_predict_exactly_as_sklearn(kind: str, classes: int) -> None:
    train, train_labels = blobs(300, classes, 24, seed=0, spread=3.0)  # overlapping: hard cases
    test, _ = blobs(500, classes, 24, seed=1, spread=3.0)
    estimator = LogisticRegression(C=0.5, max_iter=5000) if kind == "logreg" else LinearSVC(C=0.5)
    raw = estimator.fit(train, train_labels)
    np.testing.assert_array_equal(
        argmax_of(sklearn_to_linear(raw, num_classes=classes), test), raw.predict(test)
    )
    pipeline = make_pipeline(
        StandardScaler(),
        LogisticRegression(C=0.5, max_iter=5000) if kind == "logreg" else LinearSVC(C=0.5),
    ).fit(train, train_labels)
    scaler, fitted = pipeline[0], pipeline[1]
    folded = sklearn_to_linear(fitted, num_classes=classes, mean=scaler.mean_, std=scaler.scale_)
    np.testing.assert_array_equal(argmax_of(folded, test), pipeline.predict(test))
    ours = fit_sklearn_head(kind, train, train_labels, C=0.5)
    agreement = (argmax_of(ours, test) == pipeline.predict(test)).mean()
    assert agreement >= 0.99  # the same model up to the solver's float tolerance
    if kind == "logreg":
        with torch.no_grad():
            probabilities = torch.softmax(folded(torch.from_numpy(test)), dim=1).numpy()
        np.testing.assert_allclose(probabilities, pipeline.predict_proba(test), atol=1e-4)


def test_a_class_missing_from_training_is_never_predicted() -> None:
    train, train_labels = blobs(200, 2, 8, seed=0)
    layer = fit_sklearn_head("logreg", train, train_labels * 2, num_classes=3, C=1.0)
    assert layer.out_features == 3
    predictions = argmax_of(layer, train)
    assert set(predictions.tolist()) <= {0, 2}


def test_select_c_picks_the_c_that_cross_validates_best() -> None:
    # 72 codes of class 0 and 27 of class 1, far apart. A tiny C squeezes the weights to about
    # zero, so every image gets the prior's class: 73% in cross-validation at C <= 0.001, about
    # 96% at 0.01, every fold right from 0.1 up. Ties go to the smallest C: 0.1.
    codes, labels = blobs(160, 2, 8, seed=0)
    keep = np.flatnonzero((labels == 0) | (np.cumsum(labels == 1) <= 27))
    codes, labels = codes[keep], labels[keep]
    assert np.bincount(labels).tolist() == [72, 27]
    assert select_C("logreg", codes, labels) == 0.1
    # The scores decide, not the grid's order.
    assert select_C("logreg", codes, labels, grid=(0.0001, 1.0)) == 1.0
    assert select_C("logreg", codes, labels, grid=(1.0, 0.0001)) == 1.0
    assert select_C("svm", codes, labels, grid=(0.3,)) == 0.3


def test_probe_scores_every_head_on_every_stage() -> None:
    train_top, labels = blobs(150, 3, 16, seed=0)
    val_top, val_labels = blobs(90, 3, 16, seed=1)
    noise = np.random.default_rng(0)
    train = {"stage1": noise.normal(size=(150, 4)).astype(np.float32), None: train_top}
    val = {"stage1": noise.normal(size=(90, 4)).astype(np.float32), None: val_top}
    lines: list[str] = []
    rows = probe(train, val, labels, val_labels, num_classes=3, log=lines.append)
    assert [(row.stage, row.head) for row in rows] == [
        (stage, head) for stage in ("stage1", None) for head in HEADS
    ]
    by_cell = {(row.stage, row.head): row for row in rows}
    for head in HEADS:
        assert by_cell[(None, head)].val_acc >= 0.95
        assert by_cell[("stage1", head)].val_acc < 0.7  # noise codes: chance level
    assert by_cell[(None, "logreg")].C is not None and by_cell[(None, "linear")].C is None
    table = format_probe_table(rows)
    assert table.splitlines()[0].split() == ["stage", *HEADS]
    assert table.splitlines()[2].startswith("top ")
    assert len(lines) == 6 and rows[0].to_json()["stage"] == "stage1"


def test_install_head_makes_full_model_logits_equal_head_of_top_codes() -> None:
    backbone = get_backbone("mobilenet_v2")
    torch.manual_seed(0)
    model = create_model(backbone, 2, NO_WEIGHTS).eval()
    trained = nn.Linear(backbone.feature_size, 3)  # another class count: the head is replaced
    installed = install_head(model, backbone, trained)
    assert installed is head_of(model, backbone) and installed.out_features == 3
    images = torch.randn(3, 3, 64, 64)
    with torch.no_grad():
        codes = StageCodes(model, backbone, [None])(images)[None]
        torch.testing.assert_close(model(images), trained(codes), rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match="another stage"):
        install_head(model, backbone, nn.Linear(32, 3))


def test_stage_classifier_equals_codes_then_head_and_survives_safetensors(tmp_path: Path) -> None:
    backbone = get_backbone("mobilenet_v2")
    torch.manual_seed(0)
    model = backbone.build().eval()
    head = nn.Linear(32, 4)
    classifier = StageClassifier.from_trained(backbone, "stage2", model, head).eval()
    assert sum(isinstance(m, nn.Identity) for m in model.modules()) == 0  # model untouched
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        codes = StageCodes(model, backbone, ["stage2"])(images)["stage2"]
        expected = head(codes)
        torch.testing.assert_close(classifier(images), expected, rtol=0, atol=1e-5)
    keys = set(classifier.state_dict())
    assert {"head.weight", "head.bias"} <= keys
    assert not any(key.startswith(("body.features.7.", "body.classifier.")) for key in keys)
    save_model(classifier, str(tmp_path / "model.safetensors"))
    rebuilt = StageClassifier(get_backbone("mobilenet_v2"), "stage2", 4)
    load_model(rebuilt, str(tmp_path / "model.safetensors"), strict=True)
    with torch.no_grad():
        torch.testing.assert_close(rebuilt.eval()(images), expected, rtol=0, atol=1e-5)


@pytest.mark.slow
@pytest.mark.skipif(not REFERENCE_DATA.is_dir(), reason="reference dataset not present")
def test_real_codes_train_accurate_heads_on_the_reference_set(tmp_path: Path) -> None:
    """mobilenet_v2 ImageNet codes of hymenoptera (245 train / 153 val): every head >= 0.9."""
    backbone = get_backbone("mobilenet_v2")
    try:
        weights = choose_weights(backbone, None)
    except UserError as error:  # no weights offline: nothing to measure
        pytest.skip(f"mobilenet_v2 weights unavailable: {error}")
    splits = find_splits(REFERENCE_DATA)
    torch.manual_seed(0)
    model = create_model(backbone, 2, weights)
    threads = torch.get_num_threads()
    torch.set_num_threads(max(1, len(os.sched_getaffinity(0))))
    try:
        codes = extract_split_codes(
            model, backbone, splits, weights=weights.label,
            preprocessing=preprocessing_for(backbone, weights),
            cache=FeatureCache(tmp_path / "cache"), batch_size=32,
        )[None]  # fmt: skip
    finally:
        torch.set_num_threads(threads)
    layer, history = train_linear_head(
        codes.train_views, codes.train_labels, codes.val, codes.val_labels, num_classes=2,
        init=head_of(model, backbone),
    )  # fmt: skip
    assert max(record["val_acc"] for record in history) >= 0.9
    for kind in ("logreg", "svm"):
        sk = fit_sklearn_head(kind, codes.train_views, codes.train_labels, num_classes=2)
        assert (argmax_of(sk, np.asarray(codes.val)) == codes.val_labels).mean() >= 0.9, kind
    install_head(model, backbone, layer)
    model.eval()
    with torch.no_grad():
        dataset = ImageDataset(
            splits.samples["val"][:8], splits.class_names,
            build_transforms(preprocessing_for(backbone, weights))["val"],
        )  # fmt: skip
        images = torch.stack([dataset[index][0] for index in range(8)])
        torch.testing.assert_close(
            model(images), layer(torch.from_numpy(np.array(codes.val[:8]))), rtol=0, atol=1e-4
        )
