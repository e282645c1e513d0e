"""The one Trainer every stage runs on: set-up, the loop, checkpoints, logging, teardown.

    setup     process env -> output folder (or the checkpoint to resume) -> task.setup (data)
              -> model built on the meta device -> parallelize() (AC, compile, DDP/FSDP) -> storage and
              init (or the checkpoint's weights: a zero3 rank only ever holds its shards) -> optimizer
    loop      lr schedule -> micro-batches task.batch(step, m) -> token-weighted train_step
              -> non-finite guard -> metrics -> task.evaluate / task.sample -> checkpoint -> SIGTERM/SIGINT
    teardown  plots, summary.json, one-line summary

A stage is a Task (banyan/train/task.py); nothing here knows what a token, a pair or a rollout is.
Resume is exact: micro-batches are a pure function of the step, the schedule is a function of the
step, and weights, optimizer, RNG and task state come from the checkpoint. Under torchrun
--max-restarts a restarted job continues from the latest complete checkpoint (elastic restart).
"""

from __future__ import annotations

import math
import os
import signal
import sys
import time
from pathlib import Path

import torch

from banyan.config import RunConfig, to_dict, write_config
from banyan.errors import BanyanError, CheckpointError, TrainingDiverged
from banyan.parallel.env import DistEnv, agree_on_errors, check_same_config
from banyan.train import checkpoint as ckpt
from banyan.train import dist_checkpoint as dist_ckpt
from banyan.train import faults
from banyan.io import FolderLock, atomic_write_json, remove_stale_temps
from banyan.logger import MetricsLogger, trim_metrics
from banyan.train.metrics import peak_flops_for, peak_memory_mb
from banyan.train.init_from import apply_init_model
from banyan.train.lora_run import base_pointer, init_adapters, maybe_apply_lora, run_base
from banyan.train.schedule import lr_factor, set_lr
from banyan.train.step import StepResult, autocast_for, resolve_dtype, train_step
from banyan.train.task import Task


def build_parallel(cfg: RunConfig, env: DistEnv, init: bool = True, build=None):
    """(Parallelized, optimizer) for `cfg`: meta-device build, parallelize (storage + init), optimizer.

    The set-up shared by the Trainer, `banyan bench train` and `banyan plan --validate`.
    init=False leaves the weights uninitialised because a checkpoint is loaded next. `build(cfg)`
    (default: build_model(cfg.model) on the meta device) lets a stage wrap the model (Task.build_model)."""
    from banyan.hardware import keep_host_memory
    from banyan.model import build_model
    from banyan.parallel.wrap import parallelize
    from banyan.train.optim import build_optimizer

    if env.device.type == "cpu":
        keep_host_memory()  # no page faults for each step's activations (banyan.hardware.keep_host_memory)
    model = build(cfg) if build is not None else build_model(cfg.model, device="meta")
    maybe_apply_lora(model, cfg)  # before parallelize: FSDP shards the adapters with their blocks
    with agree_on_errors(env):
        par = parallelize(model, cfg, env, init=init)
    optimizer = par.shard_optimizer(build_optimizer(par.raw, cfg.optim, env.device.type))
    return par, optimizer


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


def prepare_out_dir(cfg: RunConfig, env: DistEnv) -> tuple[Path, Path | None, FolderLock | None]:
    """Lock the run folder (main rank), refuse to overwrite a previous run, find the checkpoint to resume from."""
    out = Path(cfg.out)
    if out.exists() and not out.is_dir():
        raise BanyanError(f"--out '{out}' is a file, not a folder")
    lock = FolderLock(out, "run folder").acquire() if env.is_main else None  # held while this run lives
    try:
        if lock is not None:  # every writer holds the lock, so a temp folder from before it is a killed one's
            remove_stale_temps(ckpt.checkpoint_root(out), "step_*", older_than=lock.acquired_at)
            remove_stale_temps(ckpt.checkpoint_root(out), ".step_*", older_than=lock.acquired_at)
        return out, _resume_point(cfg, out), lock
    except BaseException:
        if lock is not None:
            lock.release()
        raise


def _resume_point(cfg: RunConfig, out: Path) -> Path | None:
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
    return resume_from


class Trainer:
    """Runs `task` under `cfg`; `run()` returns the summary dict."""

    def __init__(self, cfg: RunConfig, task: Task, stage: str = "train"):
        self.cfg, self.task, self.stage = cfg, task, stage
        self.state = {"tokens": 0, "bad_in_row": 0, "elapsed_s": 0.0, "skipped_no_signal": 0}
        self.step = 0
        self.last_eval: dict[str, float] = {}
        self.nan_at = faults.nan_from_step()
        self.lock: FolderLock | None = None  # the run folder's lock, taken in setup  # BANYAN_FAULT=nan@N: the loss becomes nan from step N on

    # ------------------------------------------------------------------ setup
    def setup(self) -> None:
        """Everything before the first step; a failure releases the run folder's lock."""
        try:
            self._setup()
        except BaseException:
            self.release()
            raise

    def release(self) -> None:
        """Let other processes use the run folder (run() does this at the end)."""
        if getattr(self, "lock", None) is not None:
            self.lock.release()
            self.lock = None

    def _setup(self) -> None:
        cfg = self.cfg
        self.env = env = DistEnv.from_env(cfg.train.device)
        with agree_on_errors(env):  # a bad flag on any rank: one message from rank 0, every rank exits
            self.out, resume_from, self.lock = prepare_out_dir(cfg, env)
            self.init_from = apply_init_model(cfg)  # --init: the architecture is the source's
            self.task.setup(cfg, env)
            cfg.finalize()
            self.n_micro = cfg.grad_accum(env.world_size)
            check_same_config(to_dict(cfg), env)
        torch.manual_seed(cfg.train.seed)
        with agree_on_errors(env):  # LoRA resume: base (init source or seeded init) first, adapters later
            base = run_base(cfg, self.init_from, resume_from)
        self.lora_meta = base_pointer(cfg, base)
        fresh = base is None and (resume_from is None or cfg.lora.rank > 0)
        # no random init under weights to load
        self.par, self.optimizer = build_parallel(cfg, env, init=fresh, build=self.task.build_model)
        if base is not None:
            with agree_on_errors(env):
                self.task.load_init(base, self.par, cfg, env)
                if cfg.lora.rank:
                    init_adapters(self.par)
        self.autocast = autocast_for(env.device, cfg.train.dtype)
        self.flops_per_token = self.par.raw.flops_per_token(cfg.train.seq_len)
        self.peak = peak_flops_for(env.device, cfg.train.dtype) * env.world_size  # may draw random matrices
        if resume_from is not None:
            self.resume(resume_from)  # after everything that draws from the RNG: it restores the RNG state
        # the logger first: a sink that fails to start (W&B rejects the key) leaves no config.toml behind,
        # so neither a fresh run nor --resume is blocked by a run that never began
        self.logger = MetricsLogger(self.out, cfg.log, cfg, enabled=env.is_main, resume=resume_from is not None)
        if env.is_main:
            write_config(cfg, self.out / "config.toml", extra={"world_size": env.world_size, "grad_accum": self.n_micro,
                                                                "stage": self.stage})
        if env.is_main:
            print(f"banyan {self.stage}: {cfg.model.arch} {self.par.raw.num_params() / 1e6:.2f}M params, "
                  f"{self.n_micro} micro-steps x {cfg.train.micro_batch} x {env.world_size} ranks per step, "
                  f"{self.par.notes[0]}, device {env.device}, dtype {resolve_dtype(env.device, cfg.train.dtype)}"
                  + (f", resuming at step {self.step}" if self.step else "")
                  + (f", weights from {self.init_from}" if self.init_from and not self.step else ""))

    def load_resumable(self, path: Path) -> dict:
        """Trainer state from `path`, or from the newest older checkpoint that loads (torn files fall back)."""
        older = [c for c in reversed(ckpt.list_checkpoints(self.out)) if c != path]
        first_error = None
        for ck in [path, *older]:
            err = None
            try:
                state = dist_ckpt.load(ck, self.par, self.optimizer, self.cfg, self.env)
            except Exception as e:  # noqa: BLE001 - any torn or foreign file: try the previous checkpoint
                err = e
            if not self.env.any_rank(err is not None):  # every rank loaded this one
                if ck != path and self.env.is_main:
                    print(f"resuming from {ck.name} instead (the newer checkpoints do not load)", file=sys.stderr)
                return state
            reason = (f"{type(err).__name__}: {err}" if err is not None else "it failed on another rank")
            reason = (reason.strip().splitlines() or [""])[0][:300]
            first_error = first_error or reason
            if self.env.is_main:
                print(f"checkpoint {ck} is unusable ({reason}); trying an older one", file=sys.stderr)
        raise CheckpointError(f"no checkpoint in '{self.out}/checkpoints' can be resumed; the newest failed with: "
                              f"{first_error}")

    def resume(self, path: Path) -> None:
        with agree_on_errors(self.env):
            state = self.load_resumable(path)
        self.step = state.pop("step")
        self.task.load_state_dict(state.pop("task", {}))
        state.pop("data_position", None)
        self.state.update({k: state[k] for k in self.state if k in state})
        if self.env.is_main:
            trim_metrics(self.out / "metrics.jsonl", self.step)

    # ------------------------------------------------------------------ one step
    def loss(self, model, batch):
        loss_sum, count, metrics = self.task.loss(model, batch)
        if self.nan_at is not None and self.step >= self.nan_at:
            loss_sum = loss_sum * float("nan")
        return loss_sum, count, metrics

    def micro_batches(self) -> list[dict[str, torch.Tensor]]:
        dev = self.env.device
        return [{k: v.to(dev) for k, v in self.task.batch(self.step, m).items()} for m in range(self.n_micro)]

    def train_one_step(self) -> tuple[StepResult, float]:
        lr = set_lr(self.optimizer, lr_factor(self.step, self.cfg.train.max_steps, self.cfg.optim))
        batches = self.micro_batches()
        res = train_step(self.par.model, self.optimizer, batches, self.loss, self.task.count, self.cfg.train.grad_clip,
                         self.autocast, self.par.no_sync, update=self.task.has_signal(batches))  # agreed inside
        self.state["skipped_no_signal"] += int(res.finite and not res.updated)
        self.step += 1
        self.state["tokens"] += sum(self.task.positions(b) for b in batches) * self.env.world_size
        self.state["elapsed_s"] = time.perf_counter() - self.run_t0
        return res, lr

    def skipped(self, res: StepResult, lr: float) -> None:
        """A non-finite (or empty) step: log it; stop after train.max_bad_steps in a row."""
        self.state["bad_in_row"] += 1
        self.logger.log({"step": self.step, "tokens": self.state["tokens"], "loss": res.loss, "lr": lr,
                         "skipped": True})
        limit = self.cfg.train.max_bad_steps
        why = "no trained items" if res.count == 0 else f"non-finite loss/grad ({res.loss})"
        if self.env.is_main:
            print(f"step {self.step}: {why}; update skipped ({self.state['bad_in_row']}/{limit} in a row)",
                  file=sys.stderr)
        if self.state["bad_in_row"] >= limit:
            raise TrainingDiverged(f"{self.state['bad_in_row']} non-finite losses in a row at step {self.step}; "
                                   f"lower optim.lr or check the data (last checkpoint kept)")

    # ------------------------------------------------------------------ after a step
    def train_record(self, res: StepResult, lr: float) -> dict:
        now = time.perf_counter()
        tps = (self.state["tokens"] - self.tok_last) / max(now - self.t_last, 1e-9)
        self.t_last, self.tok_last = now, self.state["tokens"]
        return {"step": self.step, "tokens": self.state["tokens"], "loss": res.loss, "lr": lr,
                "grad_norm": res.grad_norm, "tokens_per_s": tps, **res.metrics,
                **({"skipped_no_signal": n} if (n := self.state["skipped_no_signal"]) else {}),
                "mfu": self.flops_per_token * tps / self.peak if self.peak == self.peak else None,
                "peak_mem_mb": peak_memory_mb(self.env.device)}

    def evaluate(self) -> dict:
        self.last_eval = self.task.evaluate(self.par.model)
        if self.env.is_main and self.last_eval:
            shown = (f"{k.replace('_', ' ')} {v:.4f}" for k, v in self.last_eval.items() if isinstance(v, float))
            self.bar.write(f"step {self.step}: " + ", ".join(shown))
        self.t_last = time.perf_counter()  # keep eval time out of tokens/s
        return self.last_eval

    def maybe_sample(self) -> None:
        every = self.cfg.train.sample_every
        if not (self.env.is_main and every and self.step % every == 0 and self.par.full_model_on_each_rank):
            return
        text = self.task.sample(self.par.raw, self.step)
        if text is not None:
            self.bar.write(f"--- sample at step {self.step} ---\n{text}\n---")
            self.logger.text("sample", text, self.step)

    def save(self) -> Path | None:
        trainer_state = {**self.state, **self.lora_meta, "task": self.task.state_dict(),
                         "data_position": {"next_step": self.step, "seed": self.cfg.train.seed}}
        files = self.task.tokenizer_files()
        # every rank takes part (sharded DCP checkpoint when distributed, safetensors otherwise)
        return dist_ckpt.save(self.out, self.step, self.par, self.optimizer, trainer_state, self.cfg,
                              files[0] if files else None, self.cfg.checkpoint.keep_last, self.env)

    def after_step(self, res: StepResult, lr: float) -> bool:
        """Metrics, evaluation, samples, checkpoint and signals; False when the loop must stop."""
        cfg, step = self.cfg, self.step
        self.state["bad_in_row"] = 0
        self.bar.update(1)
        self.bar.set_postfix(loss=f"{res.loss:.3f}", lr=f"{lr:.2e}", refresh=False)
        is_last = step == cfg.train.max_steps
        record = None
        if step % cfg.train.log_every == 0 or is_last or step == self.start + 1:
            record = self.train_record(res, lr)
        if (cfg.train.eval_every and step % cfg.train.eval_every == 0) or is_last:
            record = {**(record or {"step": step, "tokens": self.state["tokens"]}), **self.evaluate()}
        if record:
            self.logger.log(record)
        self.maybe_sample()
        # ranks may see a SIGTERM at different steps: agree, so all of them save and stop together
        stopping = self.env.any_rank(self.stop.signal is not None)
        if (cfg.checkpoint.every and step % cfg.checkpoint.every == 0) or is_last or stopping:
            self.save()
        faults.maybe_kill(step, self.env.rank, self.out)
        if stopping and self.env.is_main:
            name = signal.Signals(self.stop.signal or signal.SIGTERM).name  # another rank may have got it
            self.bar.write(f"received {name}: checkpoint written at step {step}; resume with --resume",
                           file=sys.stderr)
        return not stopping

    # ------------------------------------------------------------------ the loop
    def loop(self) -> None:
        self.start = self.step
        self.t_last, self.tok_last = time.perf_counter(), self.state["tokens"]
        while self.step < self.cfg.train.max_steps:
            res, lr = self.train_one_step()
            if not res.finite:
                self.skipped(res, lr)
                continue
            if not self.after_step(res, lr):
                break

    def run(self) -> dict:
        """Set up, train to train.max_steps (or a signal), tear down; returns the summary."""
        try:
            self.setup()
            self.bar = progress_bar(self.cfg, self.step, self.env, self.stage)
            self.run_t0 = time.perf_counter() - self.state["elapsed_s"]
            try:
                with StopFlag() as self.stop:
                    self.loop()
            finally:
                self.bar.close()
                self.logger.close()
            return self.teardown()
        finally:
            self.release()

    def teardown(self) -> dict:
        ev = self.last_eval
        summary = {"step": self.step, "tokens": self.state["tokens"], "val_loss": ev.get("val_loss", math.nan),
                   "val_bpb": ev.get("val_bpb", math.nan), **ev, "skipped_no_signal": self.state["skipped_no_signal"],
                   "wall_s": round(time.perf_counter() - self.run_t0, 1), "out": str(self.out),
                   "stopped_by_signal": self.stop.signal is not None}
        if self.env.is_main:
            if self.cfg.log.plots and self.step == self.cfg.train.max_steps:
                from banyan.train.plots import plot_run

                summary["plots"] = [str(p) for p in plot_run(self.out)]
            atomic_write_json(self.out / "summary.json", summary, indent=1)
            shown = [f"{k.replace('_', ' ')} {summary[k]:.4f}" for k in self.task.headline
                     if isinstance(summary.get(k), float) and math.isfinite(summary[k])]
            print(f"done: {self.step} steps, {self.state['tokens']:,} tokens in {summary['wall_s']}s; "
                  f"{', '.join(shown) or 'no held-out evaluation'}; outputs in {self.out}")
        self.env.close()
        return summary


def progress_bar(cfg: RunConfig, start: int, env: DistEnv, desc: str):
    from tqdm import tqdm

    # in a log file (not a terminal) redraw rarely, so CI logs are not flooded with bar updates
    return tqdm(total=cfg.train.max_steps, initial=start, desc=desc, unit="step", dynamic_ncols=True,
                mininterval=0.5 if sys.stderr.isatty() else 30, disable=not (cfg.log.progress and env.is_main),
                file=sys.stderr)
