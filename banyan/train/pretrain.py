"""`banyan pretrain`: train a Llama or GPT-2 model from scratch on prepared token shards.

    cfg      <- defaults < preset < --config < flags          (banyan.config)
    model    <- build_model(cfg.model); parallelize(...)     (AC, compile, DDP/FSDP from outside)
    for step in start..max_steps:
        lr = schedule(step)
        train_step(micro-batches from TokenLoader.batch(step, micro))   (skip on nan/inf)
        log / validate (val loss + bits per byte) / sample / checkpoint
        on SIGTERM or SIGINT: checkpoint and exit cleanly
    final validation, checkpoint, plots, one-line summary

Resume is exact on CPU: the data position is a pure function of the step, the schedule is a pure
function of the step, and weights, optimizer and RNG states come from the checkpoint.
"""

from __future__ import annotations

import json
import math
import os
import signal
import sys
import time
from pathlib import Path

import torch

from banyan.errors import BanyanError, TrainingDiverged
from banyan.config import ConfigError, RunConfig, parse_cli, to_dict, write_config
from banyan.parallel.env import DistEnv, agree_on_errors, check_same_config
from banyan.parallel.wrap import parallelize
from banyan.train import checkpoint as ckpt
from banyan.train import dist_checkpoint as dist_ckpt
from banyan.train import faults
from banyan.train.metrics import MetricsLogger, peak_flops_for, peak_memory_mb
from banyan.train.schedule import lr_factor, set_lr
from banyan.train.step import autocast_for, causal_lm_loss, train_step


def main(argv: list[str]) -> int:
    from banyan.parallel.launch import alias_nproc, launch_torchrun

    argv = alias_nproc(argv)  # `--nproc N` is short for `--parallel.nproc N`
    cfg = parse_cli(RunConfig, argv, prog="banyan pretrain", default_preset="shakespeare")
    if cfg.parallel.nproc > 0 and "LOCAL_RANK" not in os.environ:
        return launch_torchrun(cfg.parallel.nproc, ["pretrain", *argv])
    train(cfg)
    return 0


# ----------------------------------------------------------------------------- pieces
class StopFlag:
    """SIGTERM/SIGINT set a flag; the loop finishes its step, checkpoints and exits (a second ^C aborts)."""

    def __init__(self):
        self.signal: int | None = None
        self._old = {}

    def __enter__(self):
        for sig in (signal.SIGTERM, signal.SIGINT):
            self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.signal is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signal = signum

    def __exit__(self, *exc):
        for sig, handler in self._old.items():
            signal.signal(sig, handler)


def open_data(cfg: RunConfig, env: DistEnv):
    """Train/val loaders + tokenizer; fills model.vocab_size from the data when it is 0."""
    from banyan.data.loader import TokenLoader
    from banyan.data.tokenizer import load_tokenizer

    path = Path(cfg.data.path)
    if not (path / "meta.json").is_file():
        raise BanyanError(f"data folder '{path}' is missing or not prepared (no meta.json); "
                          f"run: banyan data prepare --out {path}")
    tok = load_tokenizer(path)
    if cfg.model.vocab_size == 0:
        cfg.model.vocab_size = tok.vocab_size
    elif cfg.model.vocab_size < tok.vocab_size:
        raise BanyanError(f"model.vocab_size {cfg.model.vocab_size} is smaller than the tokenizer's "
                          f"{tok.vocab_size} in '{path}' (data made for another tokenizer?)")
    common = dict(seq_len=cfg.train.seq_len, micro_batch=cfg.train.micro_batch, seed=cfg.train.seed,
                  rank=env.rank, world_size=env.world_size, expect_vocab=tok.vocab_size)
    train = TokenLoader(path, "train", **common)
    val = TokenLoader(path, "val", **common)
    return train, val, tok


@torch.no_grad()
def evaluate(model, loader, n_batches: int, token_bytes: torch.Tensor, autocast, par) -> tuple[float, float]:
    """Mean val loss (nats/token) and bits per byte over a fixed set of windows (all ranks summed)."""
    model.eval()
    nats = torch.zeros((), dtype=torch.float64)
    n_tok = torch.zeros((), dtype=torch.float64)
    n_bytes = torch.zeros((), dtype=torch.float64)
    device = token_bytes.device
    for x, y in loader.val_batches(n_batches):
        x, y = x.to(device), y.to(device)
        with autocast:
            logits = model(x)
        loss = torch.nn.functional.cross_entropy(logits.float().flatten(0, 1), y.flatten(), reduction="sum")
        nats += loss.double().cpu()
        n_tok += y.numel()
        n_bytes += token_bytes[y].sum().double().cpu()
    model.train()
    stats = torch.stack([nats, n_tok, n_bytes])
    if par.strategy != "single":
        import torch.distributed as dist

        stats = stats.to(device)
        dist.all_reduce(stats)
        stats = stats.cpu()
    nats, n_tok, n_bytes = stats.tolist()
    return nats / max(n_tok, 1), nats / (math.log(2) * max(n_bytes, 1))


def sample_text(raw_model, tok, prompt: str, n_tokens: int, seed: int, device) -> str:
    """A sample with its own generator, so sampling never shifts the training RNG."""
    g = torch.Generator(device=device).manual_seed(seed)
    ids = torch.tensor([tok.encode(prompt)], dtype=torch.long, device=device)
    n = min(n_tokens, raw_model.config.max_seq_len - ids.shape[1])
    out = raw_model.generate(ids, max_new_tokens=n, temperature=0.8, top_k=50, generator=g)
    return tok.decode(out[0].tolist())


def prepare_out_dir(cfg: RunConfig, env: DistEnv) -> tuple[Path, Path | None]:
    """Refuse to overwrite a previous run; find the checkpoint to resume from."""
    out = Path(cfg.out)
    resume_from = None
    if int(os.environ.get("TORCHELASTIC_RESTART_COUNT", 0)) > 0:
        # torchrun --max-restarts re-ran this command after a rank died: continue from the latest
        # complete checkpoint (or start over if the first one was never written)
        resume_from = ckpt.latest_checkpoint(out)
    elif cfg.resume:
        resume_from = ckpt.latest_checkpoint(out)
        if resume_from is None:
            raise BanyanError(f"--resume: no complete checkpoint in '{out}/checkpoints'")
    elif (out / "config.toml").exists() or ckpt.list_checkpoints(out):
        raise BanyanError(f"output folder '{out}' already holds a run; pass --resume to continue it "
                          f"or choose another --out")
    if env.is_main:
        out.mkdir(parents=True, exist_ok=True)
    return out, resume_from


def trim_metrics(path: Path, upto_step: int) -> None:
    """On resume, drop records a killed run wrote after its last checkpoint (atomic rewrite)."""
    if not path.is_file():
        return
    keep = [ln for ln in path.read_text().splitlines() if ln.strip() and json.loads(ln).get("step", 0) <= upto_step]
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(ln + "\n" for ln in keep))
    os.replace(tmp, path)


# ----------------------------------------------------------------------------- the loop
def train(cfg: RunConfig) -> dict:
    """Run (or resume) a pretraining job; returns the final summary dict."""
    from banyan.model import build_model
    from banyan.train.optim import build_optimizer

    env = DistEnv.from_env(cfg.train.device)
    with agree_on_errors(env):  # a bad flag on any rank: one message from rank 0, every rank exits
        out, resume_from = prepare_out_dir(cfg, env)
        train_loader, val_loader, tok = open_data(cfg, env)
        cfg.finalize()
        n_micro = cfg.grad_accum(env.world_size)
        check_same_config(to_dict(cfg), env)

    torch.manual_seed(cfg.train.seed)
    model = build_model(cfg.model).to(env.device)
    with agree_on_errors(env):
        par = parallelize(model, cfg, env)
    optimizer = par.shard_optimizer(build_optimizer(par.raw, cfg.optim, env.device.type))
    loss_fn = causal_lm_loss(cfg.train.chunked_loss)
    nan_at = faults.nan_from_step()
    if nan_at is not None:
        loss_fn = _poisoned(loss_fn, lambda: step >= nan_at)
    autocast = autocast_for(env.device, cfg.train.dtype)
    token_bytes = torch.as_tensor(tok.token_bytes(), dtype=torch.long, device=env.device)
    tokens_per_step = n_micro * cfg.train.micro_batch * cfg.train.seq_len * env.world_size
    flops_per_token = par.raw.flops_per_token(cfg.train.seq_len)
    peak = peak_flops_for(env.device, cfg.train.dtype) * env.world_size

    state = {"tokens": 0, "bad_in_row": 0, "elapsed_s": 0.0}
    start = 0
    if resume_from is not None:
        with agree_on_errors(env):
            state.update(dist_ckpt.load(resume_from, par, optimizer, cfg, env))
        start = state.pop("step")
        trim_metrics(out / "metrics.jsonl", start) if env.is_main else None
    if env.is_main:
        write_config(cfg, out / "config.toml", extra={"world_size": env.world_size, "grad_accum": n_micro})
    logger = MetricsLogger(out, cfg.log, cfg, enabled=env.is_main, resume=resume_from is not None)
    if env.is_main:
        print(f"banyan pretrain: {cfg.model.arch} {par.raw.num_params() / 1e6:.2f}M params, "
              f"{tokens_per_step} tokens/step ({n_micro} micro-steps x {env.world_size} ranks), "
              f"{par.notes[0]}, device {env.device}" + (f", resuming at step {start}" if start else ""))

    def save(step: int) -> Path | None:
        trainer_state = {**state, "data_position": {"next_step": step, "seed": cfg.train.seed}}
        # every rank takes part (sharded DCP checkpoint when distributed, safetensors otherwise)
        return dist_ckpt.save(out, step, par, optimizer, trainer_state, cfg, Path(cfg.data.path) / "tokenizer.json",
                              cfg.checkpoint.keep_last, env)

    last_val = (math.nan, math.nan)
    bar = _progress(cfg, start, env)
    t_last, tok_last = time.perf_counter(), state["tokens"]
    run_t0 = time.perf_counter() - state["elapsed_s"]
    step = start
    with StopFlag() as stop:
        while step < cfg.train.max_steps:
            lr = set_lr(optimizer, lr_factor(step, cfg.train.max_steps, cfg.optim))
            batches = (tuple(t.to(env.device) for t in train_loader.batch(step, m)) for m in range(n_micro))
            res = train_step(par.model, optimizer, batches, n_micro, loss_fn, cfg.train.grad_clip, autocast,
                             par.no_sync, par.all_reduce_mean)
            step += 1
            state["tokens"] += tokens_per_step
            state["elapsed_s"] = time.perf_counter() - run_t0
            if not res.finite:
                state["bad_in_row"] += 1
                logger.log({"step": step, "tokens": state["tokens"], "loss": res.loss, "lr": lr, "skipped": True})
                if env.is_main:
                    print(f"step {step}: non-finite loss/grad ({res.loss}); update skipped "
                          f"({state['bad_in_row']}/{cfg.train.max_bad_steps} in a row)", file=sys.stderr)
                if state["bad_in_row"] >= cfg.train.max_bad_steps:
                    logger.close()
                    raise TrainingDiverged(f"{state['bad_in_row']} non-finite losses in a row at step {step}; "
                                           f"lower optim.lr or check the data (last checkpoint kept)")
                continue
            state["bad_in_row"] = 0
            bar.update(1)
            bar.set_postfix(loss=f"{res.loss:.3f}", lr=f"{lr:.2e}", refresh=False)
            is_last = step == cfg.train.max_steps
            record = None
            if step % cfg.train.log_every == 0 or is_last or step == start + 1:
                now = time.perf_counter()
                tps = (state["tokens"] - tok_last) / max(now - t_last, 1e-9)
                t_last, tok_last = now, state["tokens"]
                record = {"step": step, "tokens": state["tokens"], "loss": res.loss, "lr": lr,
                          "grad_norm": res.grad_norm, "tokens_per_s": tps,
                          "mfu": flops_per_token * tps / peak if peak == peak else None,
                          "peak_mem_mb": peak_memory_mb(env.device)}
            if (cfg.train.eval_every and step % cfg.train.eval_every == 0) or is_last:
                last_val = evaluate(par.model, val_loader, cfg.train.eval_batches, token_bytes, autocast, par)
                record = {**(record or {"step": step, "tokens": state["tokens"]}),
                          "val_loss": last_val[0], "val_bpb": last_val[1]}
                bar.write(f"step {step}: val loss {last_val[0]:.4f}, val bpb {last_val[1]:.4f}") if env.is_main else None
                t_last = time.perf_counter()  # keep eval time out of tokens/s
            if record:
                logger.log(record)
            if env.is_main and cfg.train.sample_every and step % cfg.train.sample_every == 0 and par.full_model_on_each_rank:
                text = sample_text(par.raw, tok, cfg.train.sample_prompt, cfg.train.sample_tokens, cfg.train.seed, env.device)
                bar.write(f"--- sample at step {step} ---\n{text}\n---")
                logger.text("sample", text, step)
            # ranks may see a SIGTERM at different steps: agree, so all of them save and stop together
            stopping = env.any_rank(stop.signal is not None)
            if (cfg.checkpoint.every and step % cfg.checkpoint.every == 0) or is_last:
                save(step)
            elif stopping:
                save(step)
            faults.maybe_kill(step, env.rank, out)
            if stopping:
                if env.is_main:
                    name = signal.Signals(stop.signal or signal.SIGTERM).name  # another rank may have got it
                    bar.write(f"received {name}: checkpoint written at step {step}; "
                              f"resume with --resume", file=sys.stderr)
                break
    bar.close()
    logger.close()
    summary = {"step": step, "tokens": state["tokens"], "val_loss": last_val[0], "val_bpb": last_val[1],
               "wall_s": round(time.perf_counter() - run_t0, 1), "out": str(out),
               "stopped_by_signal": stop.signal is not None}
    if env.is_main:
        if cfg.log.plots and step == cfg.train.max_steps:
            from banyan.train.plots import plot_run

            summary["plots"] = [str(p) for p in plot_run(out)]
        (out / "summary.json").write_text(json.dumps(summary, indent=1))
        print(f"done: {step} steps, {state['tokens']:,} tokens in {summary['wall_s']}s; "
              f"val loss {last_val[0]:.4f}, val bpb {last_val[1]:.4f}; outputs in {out}")
    env.close()
    return summary


def _poisoned(loss_fn, active):
    """Fault injection (BANYAN_FAULT=nan@N): the loss becomes nan from step N on."""

    def fn(model, x, y):
        loss = loss_fn(model, x, y)
        return loss * float("nan") if active() else loss

    return fn


def _progress(cfg: RunConfig, start: int, env: DistEnv):
    from tqdm import tqdm

    # in a log file (not a terminal) redraw rarely, so CI logs are not flooded with bar updates
    return tqdm(total=cfg.train.max_steps, initial=start, desc="pretrain", unit="step", dynamic_ncols=True,
                mininterval=0.5 if sys.stderr.isatty() else 30, disable=not (cfg.log.progress and env.is_main),
                file=sys.stderr)
