"""Config: precedence, dotted overrides, unknown keys and wrong types name the key."""

import subprocess
import sys

import pytest

from banyan.config import (ConfigError, ModelConfig, RunConfig, list_presets, load_config, parse_cli,
                           read_saved_config, write_config)


def test_presets_exist_and_finalize():
    names = list_presets()
    for required in ["shakespeare", "gpt2-124m", "llama-125m", "llama-500m", "llama-1b"]:
        assert required in names
        cfg = load_config(RunConfig, preset=required).finalize()
        assert cfg.model.d_model % cfg.model.n_head == 0


def test_precedence_cli_over_file_over_preset(tmp_path):
    f = tmp_path / "x.toml"
    f.write_text("[model]\nn_layer = 7\nd_model = 512\n[optim]\nlr = 0.5\n")
    cfg = parse_cli(RunConfig, ["--preset", "llama-125m", "--config", str(f), "--model.n_layer", "3"])
    assert cfg.model.n_layer == 3          # CLI
    assert cfg.model.d_model == 512        # file
    assert cfg.model.vocab_size == 32000   # preset
    assert cfg.train.grad_clip == 1.0      # default
    assert cfg.optim.lr == 0.5


def test_unknown_key_suggests_closest(tmp_path):
    f = tmp_path / "bad.toml"
    f.write_text("[model]\nn_layers = 3\n")
    with pytest.raises(ConfigError, match=r"bad.toml.*unknown key 'model.n_layers'.*did you mean 'model.n_layer'"):
        load_config(RunConfig, file=str(f))
    with pytest.raises(ConfigError, match="unknown key 'modle'.*did you mean 'model'"):
        load_config(RunConfig, overrides={"modle": {}})


def test_wrong_type_names_key():
    with pytest.raises(ConfigError, match=r"'train.max_steps' expects int, got str"):
        load_config(RunConfig, overrides={"train": {"max_steps": "10"}})
    with pytest.raises(ConfigError, match=r"'model.arch' expects one of"):
        load_config(RunConfig, overrides={"model": {"arch": "gpt3"}})


def test_derived_values():
    m = ModelConfig(arch="llama", d_model=256, n_head=4, multiple_of=64).finalize()
    assert m.n_kv_head == 4 and m.d_ff == 704 and m.head_dim == 64
    g = ModelConfig(arch="gpt2", d_model=128, n_head=4, tie_embeddings=False).finalize()
    assert g.d_ff == 512 and g.tie_embeddings
    with pytest.raises(ConfigError, match="n_kv_head"):
        ModelConfig(n_head=4, n_kv_head=3).finalize()


def test_grad_accum_must_divide():
    cfg = load_config(RunConfig, overrides={"train": {"micro_batch": 4, "seq_len": 64, "global_batch_tokens": 1024}})
    assert cfg.grad_accum(1) == 4 and cfg.grad_accum(2) == 2
    with pytest.raises(ConfigError, match="global_batch_tokens"):
        cfg.grad_accum(3)


def test_resolved_config_roundtrip(tmp_path):
    cfg = load_config(RunConfig, preset="llama-500m")
    path = write_config(cfg, tmp_path / "config.toml")
    text = path.read_text()
    assert "git_commit" in text
    assert read_saved_config(RunConfig, path) == cfg


def test_cli_unknown_flag_exits_nonzero():
    r = subprocess.run([sys.executable, "-m", "banyan", "pretrain", "--model.n_layerz", "3"],
                       capture_output=True, text=True)
    assert r.returncode != 0


def test_cli_unknown_verb():
    r = subprocess.run([sys.executable, "-m", "banyan", "pretrian"], capture_output=True, text=True)
    assert r.returncode == 2 and "pretrain" in r.stderr


def test_names_importable_from_banyan_config():
    import banyan.config
    import banyan.configlib
    import banyan.model.config

    for name in ["PRESET_DIR", "apply_dict", "git_commit", "list_presets", "load_config", "parse_cli", "preset_path",
                 "read_saved_config", "read_toml", "to_dict", "write_config", "_check_value"]:
        assert getattr(banyan.config, name) is getattr(banyan.configlib, name), name
    assert banyan.config.ModelConfig is banyan.model.config.ModelConfig
    assert not hasattr(banyan.configlib, "RunConfig")  # the machinery knows no particular config


def test_presets_are_a_property_of_the_class(tmp_path):
    from dataclasses import dataclass
    from typing import ClassVar

    @dataclass
    class Plain:
        """A verb without presets."""

        n: int = 1
        """A number."""

    @dataclass
    class Staged(Plain):
        """A verb with presets."""

        takes_presets: ClassVar[bool] = True

    recipe = tmp_path / "recipe.toml"
    recipe.write_text("n = 5\n")
    assert parse_cli(Staged, ["--preset", str(recipe)]).n == 5
    assert parse_cli(Staged, ["--preset", str(recipe), "--n", "6"]).n == 6
    with pytest.raises(ConfigError, match="--preset applies to training runs.*prog-x takes --config FILE.toml"):
        parse_cli(Plain, ["--preset", str(recipe)], prog="prog-x")
    assert parse_cli(Plain, ["--config", str(recipe)]).n == 5


def test_a_class_can_keep_config_for_itself(tmp_path):
    from dataclasses import dataclass
    from typing import ClassVar

    @dataclass
    class Planner:
        """--config names something this verb reads itself."""

        takes_config_file: ClassVar[bool] = False
        config: str = ""
        """A file this verb reads."""

    assert parse_cli(Planner, ["--config", str(tmp_path / "missing.toml")]).config == str(tmp_path / "missing.toml")
