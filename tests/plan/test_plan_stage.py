"""`banyan plan --stage dpo|grpo`: the frozen reference and the rollout KV cache against real tensors and the CLI."""

import json

import pytest

from banyan.cli import main as banyan
from banyan.config import ModelConfig, RunConfig, load_config, preset_path
from banyan.model import build_model
from banyan.plan import memory as M

pytestmark = pytest.mark.usefixtures("one_thread")


def cfg(arch="llama", **kw):
    base = dict(arch=arch, vocab_size=300, n_layer=2, n_head=4, n_kv_head=2 if arch == "llama" else 0, d_model=64,
                max_seq_len=32)
    return ModelConfig(**{**base, **kw})


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_reference_and_kv_cache_bytes_equal_real_tensors(arch):
    c = cfg(arch)
    model = build_model(c)  # what build_reference builds (then loads the --init weights): fp32, no optimizer
    real = sum(p.numel() * p.element_size() for p in model.parameters())
    specs = M.param_specs(c)
    assert M.reference_bytes(specs, "ddp", 4) == real
    assert M.reference_bytes(specs, "zero3", 4) == real / 4
    assert M.reference_bytes(M.param_specs(c, lora_rank=4, lora_targets="q_proj,c_attn"), "ddp", 1) == real
    cache = model.make_cache(6, 20)
    kv = sum(t.numel() * t.element_size() for t in cache.k + cache.v)
    assert M.kv_cache_bytes(c, 6, 20) == kv
    grpo = M.stage_bytes(M.StageMemory("grpo", group_size=3, prompts=2, length=20, beta=0.04), c, specs, "ddp", 1)
    assert grpo == {"reference": real, "kv_cache": kv}
    assert M.stage_bytes(M.StageMemory("grpo", 3, 2, 20, beta=0.0), c, specs, "ddp", 1)["reference"] == 0
    assert M.stage_bytes(M.StageMemory("dpo"), c, specs, "ddp", 1) == {"reference": real, "kv_cache": 0.0}
    assert M.stage_bytes(M.StageMemory("simpo"), c, specs, "ddp", 1) == {"reference": 0.0, "kv_cache": 0.0}


def test_plan_cli_adds_the_stage_terms(capsys):
    base = ["plan", "--model", "llama-1b", "--gpus", "1xh200", "--json", "--optim", "adamw", "--strategy", "ddp",
            "--ac", "full"]

    def plan(*extra):
        assert banyan(base + list(extra)) in (0, 1)
        return json.loads(capsys.readouterr().out)["rows"][0]["mem_gb"]

    pre, dpo = plan(), plan("--stage", "dpo")
    g = plan("--stage", "grpo", "--group_size", "16", "--prompts", "2", "--beta", "0.04")
    assert "reference" not in pre and dpo["kv_cache"] == 0
    assert dpo["reference"] == pytest.approx(pre["params"])  # fp32 weights, replicated under ddp
    recipe = load_config(RunConfig, file=str(preset_path("llama-1b")))
    kv = M.kv_cache_bytes(recipe.model.finalize(), 16 * 2, recipe.train.seq_len)  # G x prompts rows at seq
    assert g["kv_cache"] == pytest.approx(kv / M.GiB) and g["reference"] == pytest.approx(pre["params"])
    assert g["total"] == pytest.approx(dpo["total"] + kv / M.GiB)
    with pytest.raises(SystemExit):
        banyan(base + ["--stage", "ppo"])
    assert banyan(base + ["--stage", "grpo", "--group_size", "0"]) == 2
    assert "--group_size and --prompts must be >= 1" in capsys.readouterr().err
