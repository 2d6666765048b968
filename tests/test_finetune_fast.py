"""Default fine-tuning: the frozen prefix runs once, its BatchNorm stays frozen, the model above
it is the same model, and the run records the defaults it used."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tlvision.codes.cache import sha256_hex, train_views
from tlvision.config import TrainConfig
from tlvision.data.images import decode_image_rgb
from tlvision.data.layouts import find_splits
from tlvision.data.transforms import build_transforms
from tlvision.models.backbone import get_backbone
from tlvision.models.network import choose_weights, create_model, preprocessing_for
from tlvision.models.stages import stage_graph
from tlvision.progress import showing_progress
from tlvision.training.fit import fit
from tlvision.training.freezing import frozen_stage
from tlvision.training.frozen_prefix import SkipPrefix, compute_prefix, prefix_modules
from tlvision.training.strategies import finetune
from tlvision.training.strategy import FROZEN_ROUTE_EPOCHS, with_defaults

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_strategy_defaults_are_filled_in_and_recorded() -> None:
    backbone = get_backbone("mobilenet_v2")
    tuned = with_defaults(TrainConfig(Path("d"), Path("o"), strategy="finetune"), backbone)
    assert (tuned.freeze_until, tuned.views, tuned.epochs) == ("stage2", 8, 10)
    assert (finetune.VIEWS, finetune.EPOCHS, backbone.partial_freeze_stage) == (8, 10, "stage2")
    assert with_defaults(tuned, backbone) == tuned
    frozen = with_defaults(TrainConfig(Path("d"), Path("o")), backbone)
    assert (frozen.freeze_until, frozen.views, frozen.epochs) == (None, 0, FROZEN_ROUTE_EPOCHS)
    every_stage = TrainConfig(Path("d"), Path("o"), strategy="finetune", freeze_until="none")
    assert frozen_stage(with_defaults(every_stage, backbone)) is None


@pytest.mark.parametrize("name", ["mobilenet_v2", "resnet18"])
def test_the_model_above_the_prefix_is_the_whole_model(name: str) -> None:
    backbone = get_backbone(name)
    model = create_model(backbone, 3, choose_weights(backbone, "none"))
    prefix = stage_graph(model, backbone, ["stage2"])
    above = SkipPrefix(model, prefix_modules(backbone, "stage2", prefix))
    keys = set(model.state_dict())
    assert above.matches(prefix, "stage2", 64)
    model.eval()
    images = torch.randn(2, 3, 64, 64)
    with torch.inference_mode():
        assert torch.allclose(model(images), above(prefix(images)["stage2"]), atol=1e-4)
    assert set(model.state_dict()) == keys, "the frozen modules are back after each pass"


def progress_bars(text: str) -> dict[str, str]:
    """{description: "total unit"} of the tqdm bars drawn in `text`."""
    bar = r"([^\r\n:]+): +\d+%\|[^|]*\| *\d+/(\d+) \[[^\]]*?"
    rate = r"(?:\?|[\d.]+)(?:([a-z]+)/s|s/([a-z]+))\]"  # ?img/s, 12.5img/s or 1.25s/img
    found = re.findall(bar + rate, text)
    return {name.strip(): f"{total} {unit or slow}" for name, total, unit, slow in found}


def test_default_finetune_keeps_the_prefix_frozen_and_shows_images_per_second(
    tiny_dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    lines: list[str] = []
    config = TrainConfig(
        data_dir=tiny_dataset, out_dir=tmp_path / "run", strategy="finetune", epochs=2,
        input_size=64, batch_size=8,
    )  # fmt: skip
    with showing_progress(True):
        summary = fit(config, log=lines.append)
    assert any(line.startswith("frozen prefix (up to stage2)") for line in lines)
    assert any(line.startswith("head started on the top codes") for line in lines)
    # The bars tlvision shows when asked: the prefix pass counts views (the centre crop and
    # each kept view of the 16 train images, then the 8 val images), each epoch counts images.
    views = finetune.VIEWS
    assert progress_bars(capsys.readouterr().err) == {
        f"frozen prefix, centre + {finetune.VIEWS} train views": f"{16 * (1 + views)} view",
        "frozen prefix, val": "8 view",
        **{f"epoch {epoch}/2 train": "16 img" for epoch in (1, 2)},
        **{f"epoch {epoch}/2 val": "8 img" for epoch in (1, 2)},
        "train codes": "16 img",  # the saved model's pass for the ood score's train codes
    }
    recorded = json.loads((tmp_path / "run" / "model.json").read_text())["config"]
    assert recorded["freeze_until"] == "stage2" and recorded["views"] == finetune.VIEWS
    assert summary["epochs"] == 2

    backbone = get_backbone("mobilenet_v2")
    pretrained = create_model(backbone, 2, choose_weights(backbone, None)).state_dict()
    saved = load_file(tmp_path / "run" / "model.safetensors")
    frozen = tuple(f"{path}." for stage in backbone.stages[:3] for path in stage.modules)
    checked = [key for key in pretrained if key.startswith(frozen)]
    assert any(key.endswith("running_var") for key in checked)
    for key in checked:  # weights and BatchNorm statistics alike
        assert torch.equal(saved[key], pretrained[key]), f"{key} moved while frozen"
    assert not torch.equal(
        saved["features.14.conv.0.0.weight"], pretrained["features.14.conv.0.0.weight"]
    )


def test_each_kept_view_is_the_centre_crop_or_its_own_seeded_crop_of_the_image_decoded_once(
    tiny_dataset: Path,
) -> None:
    """compute_prefix decodes a file once for all its views; each view must still be the crop
    and flip that view's seed gives that image (view 0: val's centre crop), as if it had been
    made on its own."""
    backbone = get_backbone("mobilenet_v2")
    model = create_model(backbone, 2, choose_weights(backbone, "none")).eval()
    prefix = stage_graph(model, backbone, ["stage2"])
    preprocessing = preprocessing_for(backbone, choose_weights(backbone, "none"), input_size=64)
    transforms = build_transforms(preprocessing)
    samples = find_splits(tiny_dataset).samples
    samples = {"train": samples["train"][:3], "val": samples["val"][:2]}
    kept = compute_prefix(
        prefix, "stage2", samples, transforms, views=3, seed=5, batch_size=4, num_workers=0,
        device=torch.device("cpu"),
    )  # fmt: skip
    assert len(kept.train_views) == 1 + 3 and kept.val.shape[0] == 2
    assert not torch.equal(kept.train_views[1], kept.train_views[2])
    for image_index, (path, _label) in enumerate(samples["train"]):
        data = path.read_bytes()
        rgb, _notes = decode_image_rgb(data, path)
        with torch.inference_mode():  # view 0: the centre crop, exactly as val would see it
            centre = prefix(transforms["val"](rgb)[None])["stage2"][0]
        assert torch.allclose(
            kept.train_views[0][image_index].float(), centre, rtol=2e-3, atol=2e-3
        )
        for view_index, view in enumerate(train_views(3, seed=5), start=1):
            torch.manual_seed(view.image_seed(sha256_hex(data)))
            with torch.inference_mode():
                alone = prefix(transforms["train"](rgb)[None])["stage2"][0]
            together = kept.train_views[view_index][image_index].float()
            assert torch.allclose(together, alone, rtol=2e-3, atol=2e-3)
