"""Numbers are checked where flags are parsed: one line naming the flag, the value and the range."""

import pytest

from banyan.config import RunConfig, parse_cli
from banyan.errors import ConfigError


@pytest.mark.parametrize("flag,value,message", [
    ("--train.max_steps", "0", "--train.max_steps must be >= 1, got 0"),
    ("--train.max_steps", "-3", "--train.max_steps must be >= 1, got -3"),
    ("--model.n_layer", "0", "--model.n_layer must be >= 1, got 0"),
    ("--optim.lr", "nan", "--optim.lr must be a finite number, got nan"),
    ("--optim.lr", "-0.1", "--optim.lr must be >= 0.0, got -0.1"),
    ("--optim.beta2", "1.5", "--optim.beta2 must be in [0.0, 0.999999], got 1.5"),
    ("--model.dropout", "inf", "--model.dropout must be a finite number, got inf"),
    ("--checkpoint.keep_last", "0", "--checkpoint.keep_last must be >= 1, got 0"),
])
def test_bad_numbers_are_one_clear_error(flag, value, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        parse_cli(RunConfig, [flag, value], default_preset="shakespeare")


def test_every_preset_is_in_range():
    from banyan.configlib import list_presets

    for name in list_presets():
        parse_cli(RunConfig, ["--preset", name])


def test_a_toml_recipe_is_checked_too(tmp_path):
    (tmp_path / "bad.toml").write_text("[model]\nn_layer = -4\n")
    with pytest.raises(ConfigError, match="--model.n_layer must be >= 1, got -4"):
        parse_cli(RunConfig, ["--config", str(tmp_path / "bad.toml")])
