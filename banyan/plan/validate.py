"""`banyan plan --validate`: run a few real train steps and set the planner's figures beside measurements.

On CPU (fp32) the params, grads and optimizer state are counted from the real tensors, the saved
activations with autograd saved-tensor hooks, and the step time with a wall clock. On CUDA (bf16
autocast) it also compares the allocator's peak (`torch.cuda.max_memory_allocated`) with the
predicted total minus the CUDA context (which the allocator does not see).
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import statistics
import time

import torch

from banyan.errors import BanyanError
from banyan.config import RunConfig
from banyan.plan import memory as M
from banyan.plan import speed as S
from banyan.parallel.env import resolve_device


class SavedTensorMeter:
    """Bytes autograd saves for backward inside the context, each storage once, parameters excluded."""

    def __init__(self, params: list[torch.Tensor]):
        self.skip = {p.untyped_storage().data_ptr() for p in params}
        self.seen: dict[int, int] = {}

    def _pack(self, t: torch.Tensor) -> torch.Tensor:
        s = t.untyped_storage()
        if s.data_ptr() not in self.skip:
            self.seen.setdefault(s.data_ptr(), s.nbytes())
        return t

    @contextlib.contextmanager
    def __call__(self):
        with torch.autograd.graph.saved_tensors_hooks(self._pack, lambda t: t):
            yield self

    @property
    def bytes(self) -> int:
        return sum(self.seen.values())


def _measure(model, opt, cfg: RunConfig, steps: int, micro_batch: int, seq: int, chunk: int,
             dev: torch.device) -> tuple[dict[str, float], list[float], float]:
    """Train `steps` steps on random tokens: (measured bytes by quantity, step seconds, final loss)."""
    from banyan.losses import lm_loss
    from banyan.train.optim import optimizer_state_bytes, tensor_bytes

    cuda = dev.type == "cuda"
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if cuda else contextlib.nullcontext()
    gen = torch.Generator().manual_seed(cfg.train.seed)
    params = list(model.parameters())
    meter = SavedTensorMeter(params)
    measured: dict[str, float] = {}
    times = []
    if cuda:
        torch.cuda.reset_peak_memory_stats(dev)
    for i in range(steps):
        x = torch.randint(0, cfg.model.vocab_size, (micro_batch, seq + 1), generator=gen).to(dev)
        t0 = time.perf_counter()
        with (meter() if i == 0 else contextlib.nullcontext()), autocast:
            loss = lm_loss(model.hidden_states(x[:, :-1]), model.output_weight(), x[:, 1:], chunk=chunk)
        loss.backward()
        if i == 0:
            measured["grads"] = tensor_bytes(p.grad for p in params if p.grad is not None)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if cuda:
            torch.cuda.synchronize(dev)
        times.append(time.perf_counter() - t0)
    measured.update(params=tensor_bytes(params), optim=optimizer_state_bytes(opt), activations=meter.bytes)
    return measured, times, loss.item()


def predicted_step_seconds(mc, specs, optim: str, micro_batch: int, seq: int, ac: str, chunk: int, tp, e: int,
                           mfu: float | None = None, peak_flops: float = 0.0) -> float:
    """One single-device step: the per-operation model (speed.py), or a constant MFU when `mfu` is given."""
    if mfu is not None:
        tokens = micro_batch * seq
        flops = tokens * (S.flops_per_token(mc, specs, seq) + S.recompute_flops_per_token(mc, specs, seq, ac, chunk))
        return flops / (peak_flops * mfu) + S.optimizer_seconds(mc, specs, optim, 1, tp.mem_bw_gbs, peak_flops, mfu)
    compute = S.micro_batch_seconds(mc, specs, micro_batch, seq, ac, chunk, tp, e).total
    return compute + S.optimizer_seconds(mc, specs, optim, 1, tp.mem_bw_gbs, tp.matmul_tflops * 1e12,
                                           dispatch_s=tp.dispatch_s)


def _load() -> float | None:
    import os

    try:
        return os.getloadavg()[0]
    except (OSError, AttributeError):
        return None


def validate(cfg: RunConfig, optim: str, steps: int, micro_batch: int, seq: int, ac: str, chunk: int,
             device: str = "auto", mfu: float | None = None, calibration: str = "") -> dict:
    """Train `steps` steps on random tokens; returns {"rows": [(quantity, predicted, measured, unit)], ...}.

    Step time is predicted by the per-operation model with this device's calibration (or its preset),
    unless `mfu` asks for the old constant-MFU estimate."""
    from banyan.hardware import cpu, match_device_name
    from banyan.plan.calibrate import device_key, throughput_for
    from banyan.parallel.env import DistEnv
    from banyan.train.trainer import build_parallel

    if steps < 1 or micro_batch < 1:
        raise BanyanError(f"--steps and --micro_batch must be >= 1 (got {steps}, {micro_batch})")
    dev = resolve_device(device, flag="--device")
    mc = cfg.model
    # the Trainer's own set-up (meta build, parallelize with AC, init, optimizer), on one device
    vcfg = copy.deepcopy(cfg)
    vcfg.optim.name, vcfg.parallel.strategy, vcfg.train.compile = optim, "single", False
    vcfg.train.activation_checkpointing, vcfg.train.chunked_loss = ac, chunk
    torch.manual_seed(cfg.train.seed)
    par, opt = build_parallel(vcfg, DistEnv(device=dev))
    model = par.raw
    cuda = dev.type == "cuda"
    e = 2 if cuda else 4
    measured, times, loss = _measure(model, opt, cfg, steps, micro_batch, seq, chunk, dev)

    specs = M.param_specs(mc)
    static = M.static_bytes(specs, optim)
    act = M.activation_bytes(mc, micro_batch, seq, ac, chunk, e)
    acc = (match_device_name(torch.cuda.get_device_name(dev)) if cuda else None) or cpu()
    tp = throughput_for(acc, device_key(dev), calibration or None)
    tokens = micro_batch * seq
    pred_time = predicted_step_seconds(mc, specs, optim, micro_batch, seq, ac, chunk, tp, e, mfu, acc.peak_flops)
    step_s = statistics.median(times[1:] or times)
    # hooks see what a checkpointed block keeps (its inputs) after forward, not its transient recompute
    recompute_peak = (tokens * M.layer_bytes_per_token(mc, e) if M.n_checkpointed(mc.n_layer, ac) else 0)
    rows = [("params", static["params"], measured["params"], "B"),
            ("grads", static["grads"], measured["grads"], "B"),
            ("optimizer state", static["optim"], measured["optim"], "B"),
            ("saved activations", act["total"] - recompute_peak, measured["activations"], "B"),
            ("step time", pred_time, step_s, "s")]
    if cuda:
        buf = sum(M.buffer_bytes(mc, specs, "single", ac, micro_batch, seq, chunk, e).values())
        pred_peak = static["params"] + static["grads"] + static["optim"] + act["total"] + buf
        rows.append(("peak allocated (CUDA)", pred_peak, torch.cuda.max_memory_allocated(dev), "B"))
    fpt = S.flops_per_token(mc, specs, seq)
    return {"device": str(dev), "accelerator": acc.name, "peak_tflops": acc.tflops, "mfu": mfu,
            "measured_mfu": tokens * fpt / step_s / acc.peak_flops, "speed_model": tp.source,
            "throughput": {k: v for k, v in dataclasses.asdict(tp).items() if k != "source"},
            "load_1min": _load(), "optim": optim,
            "ac": ac, "chunked_loss": chunk, "micro_batch": micro_batch, "seq": seq, "steps": steps,
            "final_loss": loss, "rows": rows}
