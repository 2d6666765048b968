"""config.toml: the options a run was started with, as `--config` reads them back.

Every replayed TrainConfig field that is set (TOML has no null: unset ones are left out and
read back as their defaults), with absolute paths. `tlvision train --config RUN/config.toml
--out NEW` trains the same run again; options given on the command line override the file's.
The file is checked against TrainConfig's field types (tlvision.config), names unknown settings
and never turns on --overwrite.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

from tlvision.config import OptionField, TrainConfig, option_fields
from tlvision.errors import UserError, writing
from tlvision.runs.layout import CONFIG_FILE, CONFIG_HEADER


def write_config_toml(config: TrainConfig) -> None:
    import tomli_w

    replayed = {each.field for each in option_fields() if each.option.replayed}
    values = {
        key: value
        for key, value in config.to_json().items()
        if value is not None and key in replayed
    }
    text = CONFIG_HEADER + tomli_w.dumps(values)
    with writing(config.out_dir / CONFIG_FILE, needed=len(text)):
        (config.out_dir / CONFIG_FILE).write_text(text)


def read_config_toml(path: Path) -> dict[str, Any]:
    """The TrainConfig fields a config file sets, by field name, checked by name and type."""
    try:
        values = tomllib.loads(path.read_text())
    except FileNotFoundError as error:
        raise UserError(f"--config {path}: no such file") from error
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as error:
        raise UserError(f"--config {path}: not valid TOML ({error})") from error
    known = {each.field: each for each in option_fields() if each.option.replayed}
    for key, value in values.items():
        if key not in known:
            raise UserError(
                f"--config {path}: unknown setting {key!r}; known: {', '.join(sorted(known))}"
            )
        values[key] = _typed(path, known[key], value)
    return values


def _typed(path: Path, option: OptionField, value: Any) -> Any:
    """`value` as the field's type (paths from strings, floats from integers), or a UserError."""
    expected = option.type
    if expected is Path and isinstance(value, str):
        return Path(value)
    if expected is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, expected) and (expected is bool or not isinstance(value, bool)):
        return value
    raise UserError(f"--config {path}: {option.field} = {value!r} should be a {expected.__name__}")
