"""One definition of each option: every TrainConfig field reaches the command line, the API's
keywords, config.toml and the report's reproduce line, and comes back unchanged from each."""

from __future__ import annotations

import inspect
import shlex
import typing
from pathlib import Path
from typing import Any

import pytest

import tlvision
from tlvision.api.train_options import TrainOptions
from tlvision.cli import build_parser, main
from tlvision.cli.options import config_file_defaults, training_options
from tlvision.cli.train import with_config_file
from tlvision.config import TrainConfig, config_from_options, option_fields, train_options_source
from tlvision.errors import UserError
from tlvision.report.page import reproduce_command
from tlvision.runs.config_file import read_config_toml, write_config_toml

REPOSITORY = Path(__file__).resolve().parents[1]

# A value unlike its default for every option, of the option's own type.
SET_VALUES: dict[str, Any] = {
    "backbone": "resnet18", "weights": "IMAGENET1K_V1", "strategy": "linear-probe",
    "freeze_until": "stage1", "stage": "stage3", "head": "svm", "input_size": 160, "epochs": 3,
    "batch_size": 8, "learning_rate": 0.005, "backbone_lr_mult": 0.05, "momentum": 0.8,
    "weight_decay": 0.0001, "schedule": "cosine", "step_epochs": 3, "step_gamma": 0.5,
    "seed": 7, "device": "cpu", "num_workers": 1, "views": 2, "batchnorm": "frozen",
    "no_cache": True, "val_split": 0.3, "class_weights": "auto", "precision": "32",
    "tensorboard": True, "exclude_sections": "label_issues,duplicates", "exclude_held_out": True,
    "sampler": "balanced", "threshold_precision": 0.9,
}  # fmt: skip


def everything_set(tmp_path: Path) -> TrainConfig:
    return TrainConfig(
        data_dir=tmp_path / "data", out_dir=tmp_path / "run", cache_dir=tmp_path / "cache",
        exclude=tmp_path / "audit.json", **SET_VALUES,
    )  # fmt: skip


def test_every_field_has_an_option_and_a_value_that_differs_from_its_default() -> None:
    fields = {each.field for each in option_fields()}
    paths = {"data_dir", "out_dir", "cache_dir", "exclude"}
    assert fields == set(SET_VALUES) | paths | {"overwrite"}
    for each in option_fields():
        if each.field in SET_VALUES:
            assert SET_VALUES[each.field] != each.default, each.field
        assert each.option.help, f"{each.field} has no help"


def test_the_reproduce_line_parses_back_to_the_same_config(tmp_path: Path) -> None:
    config = everything_set(tmp_path)
    line = reproduce_command(config.to_json(), config.out_dir)
    words = shlex.split(line)
    assert words[:2] == ["tlvision", "train"]
    for each in option_fields():  # every option the run set is spelled out
        if each.field not in ("data_dir", "out_dir", "overwrite"):
            assert each.flag in words, each.flag
    parsed = build_parser().parse_args(words[1:])
    again = config_from_options(parsed.data, parsed.out, _without_out(training_options(parsed)))
    assert again == config


def test_config_toml_records_every_replayed_option_and_reads_back(tmp_path: Path) -> None:
    config = everything_set(tmp_path)
    config.out_dir.mkdir()
    write_config_toml(config)
    values = read_config_toml(config.out_dir / "config.toml")
    assert set(values) == {each.field for each in option_fields() if each.option.replayed}
    assert TrainConfig(**values) == config
    # and as the defaults of the command line's flags, as `train --config FILE` reads it
    parser, argv = build_parser(), ["train", "--config", str(config.out_dir / "config.toml")]
    parsed = with_config_file(parser, parser.parse_args(argv), argv)
    options = training_options(parsed)
    assert config_from_options(parsed.data, options.pop("out"), options) == config
    assert config_file_defaults({"learning_rate": 0.5}) == {"lr": 0.5}


def test_a_config_file_with_a_wrong_type_or_name_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text('epochs = "three"\n')
    with pytest.raises(UserError, match="epochs = 'three' should be a int"):
        read_config_toml(path)
    path.write_text("epoch = 3\n")
    with pytest.raises(UserError, match="unknown setting 'epoch'"):
        read_config_toml(path)


def test_the_api_takes_every_option_as_a_keyword_with_the_clis_default() -> None:
    names = {each.name for each in option_fields()} - {"data"}
    assert set(typing.get_type_hints(TrainOptions)) == names
    parameters = inspect.signature(tlvision.train).parameters
    defaults = vars(build_parser().parse_args(["train", "DATA"]))
    for each in option_fields():
        if each.field != "data_dir":
            assert parameters[each.name].kind is inspect.Parameter.KEYWORD_ONLY
            assert parameters[each.name].default == defaults[each.name], each.name
    with pytest.raises(UserError, match=r"unknown option.*learning_rate"):
        config_from_options("DATA", "out", {"learning_rate": 0.1})


def test_the_typed_options_file_is_the_one_config_writes() -> None:
    written = (REPOSITORY / "src" / "tlvision" / "api" / "train_options.py").read_text()
    assert written == train_options_source(), "regenerate it with train_options_source()"


def test_a_range_error_names_the_flag_and_the_bad_value(
    tiny_dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    capsys.readouterr()
    out = ["--out", str(tmp_path / "run")]
    assert main(["train", str(tiny_dataset), "--batch-size", "0", *out]) == 2
    assert "--batch-size 0: must be at least 1" in capsys.readouterr().err


def _without_out(options: dict[str, Any]) -> dict[str, Any]:
    return {name: value for name, value in options.items() if name != "out"}
