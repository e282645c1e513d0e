"""Trainer checks that run inside the spawned 2-rank worker (dist_helpers.worker):

token_weighted  masked micro-batches whose trained-token counts differ per micro-step and per rank give
                the gradients of one process on the concatenated batch (<= 1e-6 relative), for ddp, zero2
                and zero3 with 2 accumulation micro-steps; the usual mean-of-means would not
hf_zero3        --init hf:DIR under zero3 loads the HF weights (vocabulary grown) into the shards exactly
meta_zero3      a zero3 set-up built on the meta device never allocates a full parameter on a rank (every
                tensor created during set-up is counted), keeps only shards, and its weights are
                bit-identical to a one-process build_model with the same seed
"""

from __future__ import annotations

import torch
from torch.utils._python_dispatch import TorchDispatchMode

V, B, T, N_MICRO = 61, 2, 16, 2
# trained positions kept per (rank, micro-step, row): uneven on purpose, one row fully masked
KEEP = {(0, 0): (3, 16), (0, 1): (0, 9), (1, 0): (16, 16), (1, 1): (1, 5)}


def _cfg(strategy: str):
    from banyan.config import RunConfig, load_config

    return load_config(RunConfig, overrides={
        "model": {"arch": "llama", "n_layer": 2, "n_head": 2, "n_kv_head": 1, "d_model": 32, "max_seq_len": 64,
                  "vocab_size": V, "tie_embeddings": False},
        "train": {"device": "cpu", "seq_len": T, "micro_batch": B}, "parallel": {"strategy": strategy},
        "optim": {"name": "adamw"}}).finalize()


def _batches(world: int) -> dict[tuple[int, int], dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(7)
    out = {}
    for r in range(world):
        for m in range(N_MICRO):
            x = torch.randint(0, V, (B, T + 1), generator=g)
            labels = x[:, 1:].clone()
            for row, keep in enumerate(KEEP[(r, m)]):
                labels[row, keep:] = -100
            out[r, m] = {"input_ids": x[:, :-1], "labels": labels}
    return out


def _full_grads(model) -> dict[str, torch.Tensor]:
    grads = {}
    for name, p in model.named_parameters():
        g = p.grad
        grads[name] = (g.full_tensor() if hasattr(g, "full_tensor") else g).detach().clone()
    return grads


def _reference_grads(batches, world: int, mean_of_means: bool = False) -> dict[str, torch.Tensor]:
    from banyan.model import build_model
    from banyan.train.lm import causal_lm_loss

    torch.manual_seed(0)
    model = build_model(_cfg("single").model)
    total = sum(int((b["labels"] != -100).sum()) for b in batches.values())
    for (r, m), b in batches.items():
        loss_sum, count, _ = causal_lm_loss(model, b)
        (loss_sum / (count * N_MICRO * world) if mean_of_means else loss_sum / total).backward()
    return {n: p.grad for n, p in model.named_parameters()}


def _rel(a: dict, b: dict) -> float:
    return max(float((a[k] - b[k]).norm() / b[k].norm()) for k in b)


def token_weighted(rank: int, world: int) -> None:
    from banyan.parallel.env import DistEnv
    from banyan.train.lm import causal_lm_loss
    from banyan.train.step import backward_step
    from banyan.train.task import labelled_count
    from banyan.train.trainer import build_parallel

    batches = _batches(world)
    want = _reference_grads(batches, world)
    naive = _reference_grads(batches, world, mean_of_means=True)
    assert _rel(naive, want) > 1e-2, "the uneven masks must make mean-of-means differ"
    for strategy in ("ddp", "zero2", "zero3"):
        torch.manual_seed(0)
        par, _ = build_parallel(_cfg(strategy), DistEnv.from_env("cpu"))
        mine = [batches[rank, m] for m in range(N_MICRO)]
        _, n, _ = backward_step(par.model, mine, causal_lm_loss, labelled_count, None, par.no_sync)
        assert int(n) == sum(int((b["labels"] != -100).sum()) for b in batches.values())
        err = _rel(_full_grads(par.raw), want)
        assert err <= 1e-6, f"{strategy}: gradient differs from one process by {err:.2e} (relative)"


class AllocationMeter(TorchDispatchMode):
    """The largest tensor (bytes) any op creates with real storage while the mode is on."""

    def __init__(self):
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            t = getattr(t, "_local_tensor", t)  # a DTensor: what this rank allocates is its local shard
            if isinstance(t, torch.Tensor) and t.device.type != "meta":
                self.largest = max(self.largest, t.numel() * t.element_size())
        return out


def meta_zero3(rank: int, world: int) -> None:
    from banyan.model import build_model
    from banyan.parallel import materialize
    from banyan.parallel.env import DistEnv
    from banyan.train.trainer import build_parallel

    cfg = _cfg("zero3")
    old = materialize.INIT_CHUNK
    materialize.INIT_CHUNK = 64  # pieces far smaller than any weight matrix, so a full one would show
    try:
        torch.manual_seed(0)
        with AllocationMeter() as meter:
            par, _ = build_parallel(cfg, DistEnv.from_env("cpu"))
    finally:
        materialize.INIT_CHUNK = old
    rows = {name: -(-p.shape[0] // world) for name, p in par.raw.named_parameters()}  # FSDP2: ceil(rows / world)
    shard_bytes = {name: rows[name] * (p.numel() // p.shape[0]) * 4 for name, p in par.raw.named_parameters()}
    full_bytes = max(p.numel() * 4 for p in par.raw.parameters())
    # nothing created during set-up is bigger than one rank's shard of the biggest parameter (half of it here)
    assert meter.largest <= max(shard_bytes.values()) < full_bytes, (meter.largest, shard_bytes, full_bytes)
    for name, p in par.raw.named_parameters():
        local = p.to_local()
        assert local.shape[0] <= rows[name] and local.untyped_storage().nbytes() <= shard_bytes[name], name
    torch.manual_seed(0)
    ref = build_model(cfg.model)
    for (name, p), want in zip(par.raw.named_parameters(), ref.parameters()):
        assert torch.equal(p.full_tensor(), want), f"{name}: sharded init differs from one-process init"


def hf_zero3(rank: int, world: int, root: str) -> None:
    """--init hf:DIR under zero3: a HF Llama folder (GQA, untied, foreign tokenizer -> 7 grown rows) loads
    through the full-state-dict path into FSDP shards; every full tensor equals the one-process hf_model."""
    import json
    from pathlib import Path

    from safetensors.torch import save_file
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    from banyan.data.tokenizer import byte_level_alphabet
    from banyan.model import build_model, config_from_hf
    from banyan.parallel.env import DistEnv
    from banyan.train.init_from import apply_init_model, hf_model, load_init_weights
    from banyan.train.trainer import build_parallel

    # a HF Llama folder written without importing transformers (slow in spawned ranks): Llama's HF
    # tensor names are banyan's, config.json carries the fields config_from_hf reads
    folder = Path(root) / f"hf_rank{rank}"  # one folder per rank: no cross-rank file races
    folder.mkdir(exist_ok=True)
    hf_cfg = {"model_type": "llama", "architectures": ["LlamaForCausalLM"], "vocab_size": 256, "hidden_size": 32,
              "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
              "max_position_embeddings": 64, "rms_norm_eps": 1e-5, "tie_word_embeddings": False, "rope_theta": 1e4}
    (folder / "config.json").write_text(json.dumps(hf_cfg))
    g = torch.Generator().manual_seed(0)
    shapes = build_model(config_from_hf(hf_cfg), device="meta").state_dict()
    save_file({k: torch.randn(v.shape, generator=g) for k, v in shapes.items()}, str(folder / "model.safetensors"))
    tok = Tokenizer(models.BPE(vocab={c: i for i, c in enumerate(byte_level_alphabet().values())}, merges=[]))
    tok.pre_tokenizer, tok.decoder = pre_tokenizers.ByteLevel(add_prefix_space=False), decoders.ByteLevel()
    tok.save(str(folder / "tokenizer.json"))
    cfg = _cfg("zero3")
    cfg.init = f"hf:{folder}"
    ck = apply_init_model(cfg)
    cfg.finalize()
    env = DistEnv.from_env("cpu")
    par, _ = build_parallel(cfg, env, init=False)
    load_init_weights(ck, par, cfg, env)
    want = hf_model(folder).state_dict()
    assert par.raw.config.vocab_size == 263
    for name, p in par.raw.named_parameters():
        assert hasattr(p, "full_tensor") and p.to_local().shape[0] < p.shape[0], f"{name} is not sharded"
        assert torch.equal(p.full_tensor(), want[name]), f"{name}: sharded HF init differs"
