"""The kept frozen-prefix outputs fit in memory: their size is known before they are made, and a
fresh fine-tuning run keeps fewer views, or none, where the machine cannot hold them all."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tlvision.compute.devices import available_memory_bytes
from tlvision.config import TrainConfig
from tlvision.data.layouts import find_splits
from tlvision.data.transforms import build_transforms
from tlvision.models.backbone import get_backbone
from tlvision.models.network import choose_weights, create_model, preprocessing_for
from tlvision.models.stages import stage_graph
from tlvision.training.frozen_prefix import (
    KEPT_MEMORY_SHARE,
    compute_prefix,
    fit_kept_views,
    kept_bytes,
    values_per_view,
    views_that_fit,
)
from tlvision.training.strategy import with_defaults

pytestmark = pytest.mark.usefixtures("one_torch_thread")

# mobilenet_v2's stage2 output at 224 px: 32 channels at stride 8, 28 x 28
STAGE2_AT_224 = 32 * 28 * 28


def test_the_predicted_size_is_what_compute_prefix_keeps(tiny_dataset: Path) -> None:
    backbone = get_backbone("mobilenet_v2")
    weights = choose_weights(backbone, "none")
    model = create_model(backbone, 2, weights).eval()
    preprocessing = preprocessing_for(backbone, weights, input_size=72)  # 72 / 8 = 9: exact
    samples = find_splits(tiny_dataset).samples
    kept = compute_prefix(
        stage_graph(model, backbone, ["stage2"]), "stage2", samples,
        build_transforms(preprocessing), views=2, seed=0, batch_size=4, num_workers=0,
        device=torch.device("cpu"),
    )  # fmt: skip
    values = values_per_view(backbone.stage("stage2"), preprocessing.crop_size)
    assert kept.train_views[0][0].numel() == values == 32 * 9 * 9
    predicted = kept_bytes(len(samples["train"]), len(samples["val"]), 1 + 2, values)
    assert predicted == round(kept.megabytes * 1e6)


def test_sizes_that_do_not_divide_by_the_stride_round_up() -> None:
    stage2 = get_backbone("mobilenet_v2").stage("stage2")
    assert values_per_view(stage2, 224) == STAGE2_AT_224
    assert values_per_view(stage2, 65) == 32 * 9 * 9  # 65 -> 33 -> 17 -> 9


def test_views_that_fit_keeps_all_some_or_none() -> None:
    def budget_for(views: int) -> int:  # exactly the centre crop and `views` views
        return kept_bytes(1000, 200, 1 + views, STAGE2_AT_224)

    assert views_that_fit(8, 1000, 200, STAGE2_AT_224, budget_for(8)) == 8
    assert views_that_fit(8, 1000, 200, STAGE2_AT_224, budget_for(8) - 1) == 7
    assert views_that_fit(8, 1000, 200, STAGE2_AT_224, budget_for(3) + 1) == 3
    assert views_that_fit(8, 1000, 200, STAGE2_AT_224, budget_for(1) - 1) == 0


def test_a_fresh_run_keeps_the_views_that_fit_and_says_so() -> None:
    backbone = get_backbone("mobilenet_v2")
    config = with_defaults(TrainConfig(Path("d"), Path("o"), strategy="finetune"), backbone)
    counts = (20_000, 5_000)  # 9 train views at 224 px: 9.0 GB; val in float32: 0.5 GB
    needed_for_8 = kept_bytes(*counts, 1 + 8, STAGE2_AT_224)
    lines: list[str] = []

    ample = fit_kept_views(config, backbone, counts, 224, 3 * needed_for_8, lines.append)
    assert ample == config and lines == []

    available = int(kept_bytes(*counts, 1 + 4, STAGE2_AT_224) / KEPT_MEMORY_SHARE)
    fewer = fit_kept_views(config, backbone, counts, 224, available, lines.append)
    assert fewer.views == 4
    assert "9.5 GB" in lines[-1] and "keeping 4 views" in lines[-1] and "--views" in lines[-1]

    none = fit_kept_views(config, backbone, counts, 224, 10**9, lines.append)
    assert none.views == 0 and "the whole model runs each epoch" in lines[-1]

    unknown = fit_kept_views(config, backbone, counts, 224, None, lines.append)
    assert unknown == config  # no measure of memory here: the views asked for
    whole = with_defaults(
        TrainConfig(Path("d"), Path("o"), strategy="finetune", freeze_until="none"), backbone
    )
    assert fit_kept_views(whole, backbone, counts, 224, 10**9, lines.append) == whole


def test_available_memory_is_read_from_the_kernel(tmp_path: Path) -> None:
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:       24000000 kB\nMemAvailable:   12000000 kB\n")
    assert available_memory_bytes(meminfo) == 12_000_000 * 1024
    meminfo.write_text("MemTotal:       24000000 kB\n")
    assert available_memory_bytes(meminfo) is None
    assert available_memory_bytes(tmp_path / "absent") is None
    own = Path("/proc/meminfo")
    if own.is_file():  # this machine's own, on Linux: read by default, in kB like the fixture
        lines = own.read_text().splitlines()
        total_kb = next(int(line.split()[1]) for line in lines if line.startswith("MemTotal:"))
        measured = available_memory_bytes()
        # MemAvailable, not MemTotal (the kernel always keeps some back), counted in whole kB
        assert measured is not None and measured % 1024 == 0
        assert 0 < measured < total_kb * 1024
