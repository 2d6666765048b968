"""CNN codes: extractors, the on-disk feature cache, and extraction over image files."""

from __future__ import annotations

import hashlib
import multiprocessing
import os
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from tlvision.codes.cache import (
    CodesSpec,
    FeatureCache,
    View,
    default_cache_dir,
    train_views,
)
from tlvision.codes.extraction import UnreadableImagesError, extract_codes
from tlvision.codes.split_codes import extract_split_codes
from tlvision.data.images import load_rgb_image
from tlvision.data.layouts import DatasetSplits
from tlvision.data.preprocessing import Preprocessing
from tlvision.data.transforms import build_transforms
from tlvision.models.backbone import BACKBONES, get_backbone
from tlvision.models.network import head_of, replace_head
from tlvision.models.stages import StageCodes, model_fingerprint, stage_channels

TINY = Preprocessing(resize_size=36, crop_size=32)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def write_images(folder: Path, count: int, *, seed: int = 0, side: int = 40) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for index in range(count):
        pixels = rng.integers(0, 256, size=(side, side, 3), dtype=np.uint8)
        path = folder / f"image{index:05d}.png"
        Image.fromarray(pixels).save(path)
        paths.append(path)
    return paths


class Body(nn.Module):
    """A small convnet with a named stage and a Linear head, like a registry backbone."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2), nn.ReLU(), nn.Conv2d(8, 16, 3))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(16, 3)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(self.features(images)).flatten(1))


def counted(module: nn.Module) -> list[int]:
    """Record the batch size of every forward call of `module` (and of deep copies of it)."""
    calls: list[int] = []

    def count(_module: nn.Module, args: tuple[Any, ...]) -> None:
        if isinstance(args[0], torch.Tensor):  # not the symbolic calls of torch.fx tracing
            calls.append(args[0].shape[0])

    module.register_forward_pre_hook(count)
    return calls


@pytest.fixture
def body() -> Body:
    torch.manual_seed(0)
    return Body().eval()


def spec(stage: str | None = None, **changes: object) -> CodesSpec:
    fields: dict[str, object] = {
        "backbone": "body",
        "weights": "none",
        "preprocessing": TINY,
        "stage": stage,
    }
    fields.update(changes)
    return CodesSpec(**fields)  # type: ignore[arg-type]


def extract_one(
    extractor: nn.Module, samples: list[Path], *, spec: CodesSpec, **options: Any
) -> np.ndarray:
    """One spec's codes: what most of these tests ask for."""
    return extract_codes(extractor, samples, specs=[spec], **options)[spec.stage]


def direct_codes(
    extractor: nn.Module, paths: list[Path], preprocessing: Preprocessing
) -> np.ndarray:
    transform = build_transforms(preprocessing)["val"]
    images = torch.stack([transform(load_rgb_image(path)) for path in paths])
    with torch.no_grad():
        codes = extractor.eval()(images)
    if isinstance(codes, dict):  # a StageCodes of one stage
        (codes,) = codes.values()
    return np.asarray(codes.numpy())


# ------------------------------------------------------------------------------------------
# Extractors
# ------------------------------------------------------------------------------------------


def test_top_codes_are_exactly_the_heads_input() -> None:
    backbone = get_backbone("mobilenet_v2")
    torch.manual_seed(0)
    model = backbone.build()
    replace_head(model, backbone, 3)
    model.eval()
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        codes = StageCodes(model, backbone, [None])(images)[None]
        expected = torch.flatten(
            nn.functional.adaptive_avg_pool2d(model.get_submodule("features")(images), 1), 1
        )
        assert codes.shape == (2, backbone.feature_size)
        torch.testing.assert_close(codes, expected, rtol=0, atol=1e-6)
        torch.testing.assert_close(
            model(images), head_of(model, backbone)(codes), rtol=0, atol=1e-5
        )


@pytest.mark.parametrize("name", list(BACKBONES))
def test_every_backbone_gives_codes_for_every_stage_in_one_pass(name: str) -> None:
    backbone = get_backbone(name)
    torch.manual_seed(0)
    model = backbone.build().eval()
    stages: list[str | None] = [None, *backbone.stage_names]
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        codes = StageCodes(model, backbone, stages)(images)
        logits = model(images)
    assert list(codes) == stages
    for stage in stages:
        assert codes[stage].shape == (2, stage_channels(backbone, stage)), stage
        assert codes[stage].dtype == torch.float32
    assert codes[None].shape == (2, backbone.feature_size)
    torch.testing.assert_close(logits, head_of(model, backbone)(codes[None]), rtol=0, atol=1e-4)


def test_stage_extractor_stops_after_its_stage_and_leaves_no_hooks() -> None:
    backbone = get_backbone("resnet18")
    model = backbone.build().eval()
    extractor = StageCodes(model, backbone, ["stage2"])
    later = counted(model.get_submodule("layer3"))
    head = counted(model.get_submodule("fc"))
    with torch.no_grad():
        codes = extractor(torch.randn(1, 3, 64, 64))["stage2"]
    assert codes.shape == (1, 128)
    assert later == [] and head == []  # nothing after stage2 ran
    hooks = sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())
    assert hooks == 2  # only this test's two counters


def test_unknown_stage_is_a_clear_error() -> None:
    backbone = get_backbone("resnet18")
    with pytest.raises(Exception, match="unknown stage 'stage9'"):
        StageCodes(backbone.build(), backbone, ["stage9"])


def test_fingerprint_follows_the_tensors_not_the_memory_format(body: Body) -> None:
    fingerprint = model_fingerprint(body)
    assert model_fingerprint(body.to(memory_format=torch.channels_last)) == fingerprint
    with torch.no_grad():
        body.features.get_parameter("0.weight").add_(1e-3)
    assert model_fingerprint(body) != fingerprint


def test_stage_codes_fingerprint_covers_the_body_up_to_the_stage_not_the_head() -> None:
    backbone = get_backbone("resnet18")
    torch.manual_seed(0)
    model = backbone.build().eval()
    top, stage2 = StageCodes(model, backbone, [None]), StageCodes(model, backbone, ["stage2"])
    before = top.fingerprint(), stage2.fingerprint()
    with torch.no_grad():
        model.fc.weight.add_(1.0)  # the head: no code depends on it
    assert (top.fingerprint(), stage2.fingerprint()) == before
    with torch.no_grad():
        model.layer4[0].conv1.weight.add_(1e-3)  # after stage2: only the top codes change
    assert top.fingerprint() != before[0] and stage2.fingerprint() == before[1]
    with torch.no_grad():
        model.conv1.weight.add_(1e-3)
    assert stage2.fingerprint() != before[1]


# ------------------------------------------------------------------------------------------
# The cache
# ------------------------------------------------------------------------------------------


def test_default_cache_dir_follows_xdg(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert default_cache_dir() == tmp_path / "tlvision" / "features"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert default_cache_dir() == Path.home() / ".cache" / "tlvision" / "features"


def test_codes_match_a_direct_computation_and_a_hit_runs_nothing(
    body: Body, tmp_path: Path
) -> None:
    paths = write_images(tmp_path / "images", 5)
    extractor = Extractor(body)
    calls = counted(body.features)
    messages: list[str] = []
    cache = FeatureCache(tmp_path / "cache", log=messages.append)
    codes = extract_one(extractor, paths, spec=spec(), cache=cache, batch_size=2)
    assert isinstance(codes, np.memmap) and codes.shape == (5, 16)
    assert sum(calls) == 5
    np.testing.assert_allclose(codes, direct_codes(extractor, paths, TINY), atol=1e-5)
    uncached = extract_one(extractor, paths, spec=spec(), cache=None, batch_size=2)
    np.testing.assert_array_equal(codes, uncached)

    messages.clear()
    calls.clear()
    again = extract_one(
        extractor, paths, spec=spec(), cache=FeatureCache(tmp_path / "cache", log=messages.append)
    )
    assert calls == []
    np.testing.assert_array_equal(again, codes)
    assert messages == [f"codes: reused 5 cached codes from {tmp_path / 'cache'}"]
    assert not again.flags.writeable


@pytest.mark.parametrize("channels_last", [False, True])
def test_extraction_runs_in_eval_mode_and_leaves_the_model_as_it_was(
    tmp_path: Path, channels_last: bool
) -> None:
    backbone = get_backbone("mobilenet_v2")  # batch norm and dropout: train mode would differ
    torch.manual_seed(0)
    model = backbone.build()
    replace_head(model, backbone, 2)
    model.train()
    model.get_submodule("features.0").eval()  # a mixed state, as frozen batch norm leaves it
    before = {name: module.training for name, module in model.named_modules()}
    state = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    paths = write_images(tmp_path / "images", 3)
    codes = extract_one(
        StageCodes(model, backbone, ["stage1"]), paths, spec=spec("stage1"), cache=None,
        channels_last=channels_last,
    )  # fmt: skip
    assert {name: module.training for name, module in model.named_modules()} == before
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, state[name]), name  # running stats untouched
        assert tensor.is_contiguous(), name
    expected = direct_codes(StageCodes(model, backbone, ["stage1"]), paths, TINY)
    np.testing.assert_allclose(codes, expected, atol=1e-5)


def test_duplicate_images_and_subsets_reuse_entries(body: Body, tmp_path: Path) -> None:
    paths = write_images(tmp_path / "images", 4)
    copy_path = tmp_path / "images" / "copy.png"
    copy_path.write_bytes(paths[0].read_bytes())
    extractor = Extractor(body)
    calls = counted(body.features)
    cache = FeatureCache(tmp_path / "cache", log=lambda message: None)
    codes = extract_one(extractor, [*paths, copy_path], spec=spec(), cache=cache)
    assert sum(calls) == 4  # identical content is one entry
    np.testing.assert_array_equal(codes[0], codes[4])
    subset = extract_one(extractor, [paths[2], paths[0]], spec=spec(), cache=cache)
    assert sum(calls) == 4
    np.testing.assert_array_equal(subset, codes[[2, 0]])


class Extractor(nn.Module):
    """Any module mapping images to (N, C): the body's pooled features."""

    def __init__(self, body: Body) -> None:
        super().__init__()
        self.body = body

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return torch.flatten(self.body.pool(self.body.features(images)), 1)


def test_a_changed_image_gets_new_codes_even_with_its_old_size_and_mtime(
    body: Body, tmp_path: Path
) -> None:
    paths = write_images(tmp_path / "images", 3)
    extractor = Extractor(body)
    calls = counted(body.features)
    cache = FeatureCache(tmp_path / "cache", log=lambda message: None)
    before = np.array(extract_one(extractor, paths, spec=spec(), cache=cache))
    stat = paths[1].stat()
    replacement = write_images(tmp_path / "other", 1, seed=99)[0].read_bytes()
    paths[1].write_bytes(replacement)
    os.utime(paths[1], ns=(stat.st_atime_ns, stat.st_mtime_ns))
    calls.clear()
    after = extract_one(extractor, paths, spec=spec(), cache=FeatureCache(cache.root))
    assert sum(calls) == 1
    np.testing.assert_array_equal(after[[0, 2]], before[[0, 2]])
    assert not np.allclose(after[1], before[1])
    np.testing.assert_allclose(after, direct_codes(extractor, paths, TINY), atol=1e-5)


def test_weights_stage_view_preprocessing_and_tensors_are_part_of_the_key(
    body: Body, tmp_path: Path
) -> None:
    paths = write_images(tmp_path / "images", 2)
    extractor = Extractor(body)
    calls = counted(body.features)
    cache = FeatureCache(tmp_path / "cache", log=lambda message: None)
    extract_one(extractor, paths, spec=spec(), cache=cache)
    variants = [
        spec(weights="IMAGENET1K_V1"),
        spec(stage="stage1"),
        spec(preprocessing=Preprocessing(resize_size=40, crop_size=32)),
        spec(view=View(augment=0, seed=0)),
        spec(view=View(augment=0, seed=1)),
    ]
    for variant in variants:
        calls.clear()
        extract_one(extractor, paths, spec=variant, cache=cache)
        assert sum(calls) == 2, variant
        calls.clear()
        extract_one(extractor, paths, spec=variant, cache=cache)
        assert sum(calls) == 0, variant
    with torch.no_grad():
        body.features.get_parameter("2.bias").add_(
            0.5
        )  # the same labels, other tensors: other codes
    calls.clear()
    extract_one(extractor, paths, spec=spec(), cache=cache)
    assert sum(calls) == 2


def test_augmented_views_are_reproducible_distinct_and_cacheable(
    body: Body, tmp_path: Path
) -> None:
    paths = write_images(tmp_path / "images", 4, side=64)
    extractor = Extractor(body)
    first, second = train_views(2, seed=7)
    assert (first.name, second.name) == ("train-aug-0-seed-7", "train-aug-1-seed-7")
    a = extract_one(extractor, paths, spec=spec(view=first), cache=None)
    b = extract_one(extractor, paths[::-1], spec=spec(view=first), cache=None)[::-1]
    np.testing.assert_array_equal(a, b)  # per image, not per position or order
    c = extract_one(extractor, paths, spec=spec(view=second), cache=None)
    assert not np.allclose(a, c)
    cached = extract_one(
        extractor, paths, spec=spec(view=first), cache=FeatureCache(tmp_path / "cache")
    )
    np.testing.assert_array_equal(cached, a)
    rng_state = torch.random.get_rng_state()
    extract_one(extractor, paths, spec=spec(view=second), cache=None)
    assert torch.equal(torch.random.get_rng_state(), rng_state)  # the global RNG is untouched


def only_shard(cache: FeatureCache) -> Path:
    shards = sorted(cache.root.rglob("*.codes"))
    assert len(shards) == 1, shards
    return shards[0]


def truncate(path: Path) -> None:
    with path.open("r+b") as handle:
        handle.truncate(path.stat().st_size - 7)


def flip_byte(offset: int) -> object:
    def corrupt(path: Path) -> None:
        data = bytearray(path.read_bytes())
        data[offset] ^= 0x40
        path.write_bytes(bytes(data))

    return corrupt


@pytest.mark.parametrize(
    "corrupt",
    [truncate, flip_byte(-5), flip_byte(20), flip_byte(140), lambda path: path.write_bytes(b"")],
    ids=["truncated", "code-byte", "header-byte", "key-byte", "empty"],
)
def test_a_corrupt_shard_is_reported_once_and_recomputed(
    body: Body, tmp_path: Path, corrupt: object
) -> None:
    paths = write_images(tmp_path / "images", 3)
    extractor = Extractor(body)
    calls = counted(body.features)
    messages: list[str] = []
    cache = FeatureCache(tmp_path / "cache", log=messages.append)
    good = np.array(extract_one(extractor, paths, spec=spec(), cache=cache))
    shard = only_shard(cache)
    corrupt(shard)  # type: ignore[operator]
    calls.clear()
    messages.clear()
    again = extract_one(extractor, paths, spec=spec(), cache=cache)
    assert sum(calls) == 3
    np.testing.assert_array_equal(again, good)
    corrupt_lines = [message for message in messages if "is corrupt" in message]
    assert len(corrupt_lines) == 1 and str(shard) in corrupt_lines[0]
    calls.clear()
    messages.clear()
    extract_one(extractor, paths, spec=spec(), cache=cache)
    assert sum(calls) == 0 and not any("is corrupt" in message for message in messages), messages


def test_an_interrupted_extraction_keeps_finished_chunks(body: Body, tmp_path: Path) -> None:
    paths = write_images(tmp_path / "images", 6)
    extractor = Extractor(body)
    calls = counted(body.features)

    def fail_on_third_batch(_module: nn.Module, _args: object) -> None:
        if len(calls) == 3:
            raise KeyboardInterrupt

    handle = body.features.register_forward_pre_hook(fail_on_third_batch)
    cache = FeatureCache(tmp_path / "cache", log=lambda message: None)
    with pytest.raises(KeyboardInterrupt):
        extract_one(extractor, paths, spec=spec(), cache=cache, batch_size=2, chunk_size=2)
    handle.remove()
    files = sorted(path.name for path in cache.root.rglob("*") if path.is_file())
    assert sum(name.startswith("chunk-") for name in files) == 2
    assert not any(name.startswith(".tmp-") for name in files)  # the unfinished one is gone
    calls.clear()
    codes = extract_one(extractor, paths, spec=spec(), cache=cache, batch_size=2, chunk_size=2)
    assert sum(calls) == 2
    np.testing.assert_allclose(codes, direct_codes(extractor, paths, TINY), atol=1e-5)
    remaining = [path.name for path in cache.root.rglob("*.codes")]
    assert len(remaining) == 1 and remaining[0].startswith("list-")  # chunks folded into it


def test_unreadable_images_are_listed_and_everything_else_is_cached(
    body: Body, tmp_path: Path
) -> None:
    paths = write_images(tmp_path / "images", 5)
    paths[1].write_bytes(paths[1].read_bytes()[:60])  # truncated PNG
    paths[3].write_bytes(b"")
    extractor = Extractor(body)
    calls = counted(body.features)
    cache = FeatureCache(tmp_path / "cache", log=lambda message: None)
    with pytest.raises(UnreadableImagesError) as caught:
        extract_one(extractor, paths, spec=spec(), cache=cache, batch_size=2, chunk_size=2)
    assert [path for path, _reason in caught.value.images] == [paths[1], paths[3]]
    assert "zero-byte" in caught.value.images[1][1] and str(paths[1]) in str(caught.value)
    assert sum(calls) == 3
    good = [paths[0], paths[2], paths[4]]
    codes = extract_one(extractor, good, spec=spec(), cache=cache)
    assert sum(calls) == 3  # all three were cached before the error
    np.testing.assert_allclose(codes, direct_codes(extractor, good, TINY), atol=1e-5)


def test_a_broken_image_hash_index_is_reported_and_bypassed(body: Body, tmp_path: Path) -> None:
    paths = write_images(tmp_path / "images", 2)
    messages: list[str] = []
    cache = FeatureCache(tmp_path / "cache", log=messages.append)
    cache.root.mkdir(parents=True)
    cache.hash_index_path.write_bytes(b"this is not a database" * 100)
    hashes = cache.image_hashes(paths)
    assert hashes == [hashlib.sha256(path.read_bytes()).hexdigest() for path in paths]
    assert any("unusable" in message for message in messages)
    cache.hash_index_path.unlink()
    cache.image_hashes(paths)
    with sqlite3.connect(cache.hash_index_path) as connection:
        assert connection.execute("SELECT COUNT(*) FROM image_hashes").fetchone() == (2,)


def _extract_in_process(root: str, paths: list[str], barrier: object) -> None:
    torch.set_num_threads(1)
    torch.manual_seed(0)
    body = Body().eval()
    barrier.wait()  # type: ignore[attr-defined]
    extract_one(
        Extractor(body),
        [Path(path) for path in paths],
        spec=spec(),
        cache=FeatureCache(Path(root), log=lambda message: None),
        batch_size=4,
        chunk_size=3,
    )


def test_two_processes_writing_the_same_entries_leave_a_valid_cache(tmp_path: Path) -> None:
    paths = [str(path) for path in write_images(tmp_path / "images", 12)]
    root = tmp_path / "cache"
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(2)
    workers = [
        context.Process(target=_extract_in_process, args=(str(root), paths, barrier))
        for _ in range(2)
    ]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=120)
    assert [worker.exitcode for worker in workers] == [0, 0]
    assert not [path for path in root.rglob(".tmp-*")]
    torch.manual_seed(0)
    body = Body().eval()
    calls = counted(body.features)
    messages: list[str] = []
    codes = extract_one(
        Extractor(body),
        [Path(p) for p in paths],
        spec=spec(),
        cache=FeatureCache(root, log=messages.append),
    )
    assert sum(calls) == 0 and not any("is corrupt" in message for message in messages), messages
    np.testing.assert_allclose(
        codes, direct_codes(Extractor(body), [Path(p) for p in paths], TINY), atol=1e-5
    )


MEMORY_CHILD = textwrap.dedent(
    """
    import re, resource, sys
    from pathlib import Path
    import numpy as np, torch
    from torch import nn
    from tlvision.data.preprocessing import Preprocessing
    from tlvision.codes.cache import CodesSpec, FeatureCache
    from tlvision.codes.extraction import extract_codes

    torch.set_num_threads(1)
    folder, cache_dir, headroom = sys.argv[1], sys.argv[2], int(sys.argv[3])
    paths = sorted(Path(folder).glob("*.png"))

    class Wide(nn.Module):  # 32x32 images -> 16384 features: codes far larger than the headroom
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 16, 1)
        def forward(self, images):
            return self.conv(images).flatten(1)

    model = Wide().eval()
    spec = CodesSpec("wide", "none", Preprocessing(resize_size=32, crop_size=32))
    with torch.no_grad():  # warm up the allocations the run makes once
        model(torch.zeros(16, 3, 32, 32))
    data = int(re.search(r"VmData:\\s+(\\d+) kB", Path("/proc/self/status").read_text())[1]) * 1024
    resource.setrlimit(resource.RLIMIT_DATA, (data + headroom, data + headroom))
    for cache in (FeatureCache(Path(cache_dir), log=print),) * 2 + (None,):  # cold, warm, none
        try:
            # torch: the limit measures the codes' memory, not ONNX Runtime's fixed working set
            codes = extract_codes(
                model, paths, specs=[spec], cache=cache, batch_size=16, chunk_size=256,
                runtime="torch",
            )[None]
        except MemoryError:
            print("MemoryError", flush=True)
            continue
        blocks = range(0, len(codes), 256)
        total = sum(float(codes[i : i + 256].sum(dtype=np.float64)) for i in blocks)
        print(type(codes).__name__, codes.shape, codes.nbytes, f"{total:.3f}", flush=True)
    """
)


def test_codes_for_more_images_than_the_memory_limit(tmp_path: Path) -> None:
    """1000 images x 16384 float32 features = 65 MB of codes, extracted (cold, then warm) under
    a 24 MB limit on the process's heap (RLIMIT_DATA), which mapped files do not count against;
    the same codes in memory (no cache) fail under that limit, so the limit is real."""
    folder = tmp_path / "images"
    write_images(folder, 1000, side=32)
    completed = subprocess.run(
        [sys.executable, "-c", MEMORY_CHILD, str(folder), str(tmp_path / "cache"), str(24 << 20)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert completed.returncode == 0, completed.stdout + completed.stderr
    lines = completed.stdout.splitlines()
    assert len(lines) == 5, lines
    assert lines[0].startswith("codes: computing codes for 1000 images into ")
    assert lines[1].startswith("memmap (1000, 16384) 65536000 ")
    assert lines[2].startswith("codes: reused 1000 cached codes from ")
    assert lines[3] == lines[1]  # the warm run maps the same codes
    assert lines[4] == "MemoryError"


# ------------------------------------------------------------------------------------------
# Whole datasets
# ------------------------------------------------------------------------------------------


def test_split_codes_have_one_array_per_view_and_stage(tmp_path: Path) -> None:
    samples = {}
    for phase, count in (("train", 3), ("val", 2)):
        samples[phase] = [
            (path, label)
            for label, name in enumerate(("ants", "bees"))
            for path in write_images(
                tmp_path / "data" / phase / name, count, seed=label + 10 * count
            )
        ]
    broken = samples["train"][1][0]
    broken.write_bytes(b"not an image")
    splits = DatasetSplits(root=tmp_path / "data", class_names=("ants", "bees"), samples=samples)
    backbone = get_backbone("mobilenet_v2")
    torch.manual_seed(0)
    model = backbone.build()
    replace_head(model, backbone, 2)
    messages: list[str] = []
    cache = FeatureCache(tmp_path / "cache", log=messages.append)
    kwargs: dict[str, object] = {
        "weights": "none", "preprocessing": TINY, "cache": cache, "stages": [None, "stage2"],
        "augmented_views": 2, "seed": 3,
    }  # fmt: skip
    codes = extract_split_codes(model, backbone, splits, **kwargs)  # type: ignore[arg-type]
    assert set(codes) == {None, "stage2"}
    top = codes[None]
    assert len(top.train_views) == 3 and all(view.shape == (5, 1280) for view in top.train_views)
    assert top.val.shape == (4, 1280) and codes["stage2"].val.shape == (4, 32)
    assert top.train_labels.tolist() == [0, 0, 1, 1, 1]
    assert top.val_labels.tolist() == [0, 0, 1, 1]
    assert [path for path, _ in top.skipped] == [broken]
    assert broken not in [path for path, _ in top.train_samples]
    assert any("skipped 1 unreadable image" in message for message in messages)
    stacked, labels = top.stacked_train()
    assert stacked.shape == (15, 1280) and labels.shape == (15,)
    direct = extract_one(
        StageCodes(model, backbone, [None]), [path for path, _ in samples["val"]],
        spec=spec(), cache=None,
    )  # fmt: skip
    np.testing.assert_allclose(top.val, direct, atol=1e-5)
    calls = counted(model.get_submodule("features"))
    again = extract_split_codes(model, backbone, splits, **kwargs)  # type: ignore[arg-type]
    assert calls == []  # all cached; only the unreadable file is tried (and skipped) again
    assert [path for path, _ in again[None].skipped] == [broken]
    np.testing.assert_array_equal(again["stage2"].train_views[2], codes["stage2"].train_views[2])


def test_a_stage_already_cached_is_served_while_another_is_computed(tmp_path: Path) -> None:
    backbone = get_backbone("resnet18")
    torch.manual_seed(0)
    model = backbone.build().eval()
    paths = write_images(tmp_path / "images", 3)
    cache = FeatureCache(tmp_path / "cache", log=lambda message: None)
    options: dict[str, Any] = {"cache": cache, "channels_last": False}
    top = extract_one(StageCodes(model, backbone, [None]), paths, spec=spec(), **options)
    both = extract_codes(
        StageCodes(model, backbone, [None, "stage2"]), paths,
        specs=[spec(), spec("stage2")], **options,
    )  # fmt: skip
    np.testing.assert_array_equal(both[None], top)
    expected = direct_codes(StageCodes(model, backbone, ["stage2"]), paths, TINY)
    np.testing.assert_allclose(both["stage2"], expected, atol=1e-5)
