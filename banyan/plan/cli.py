"""`banyan plan`: its config (PlanConfig, parsed by parse_cli) and output (rich table or --json).

Flags follow every verb's convention (dataclass fields, underscores; tyro also accepts hyphens,
so `--global_batch_tokens` and `--global-batch-tokens` agree). `--model` and `--config` name the
training recipe to plan (a preset, a TOML recipe or a run's config.toml), as `banyan pretrain
--preset/--config` would take it.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Literal

from banyan.configlib import check_ranges
from banyan.config import ConfigError, RunConfig, load_config, parse_cli, preset_path, read_saved_config, read_toml
from banyan.errors import BanyanError

EXAMPLES = """examples:
  banyan plan --model llama-1b --gpus 4x4090 --interconnect pcie4 --p2p off
  banyan plan --model llama-500m --gpus 8xh100 --interconnect nvlink4 --nodes 2 --network 400gb-ib
  banyan plan --model my.toml --gpus 2xcustom --gpu_tflops 100 --gpu_mem_gb 48 --bandwidth_gbs 20 --json
  banyan plan --model shakespeare --validate --steps 5

GPUs: rtx3090 rtx4090 a100-40gb a100-80gb h100 h100-pcie h200 (or 'custom');
interconnects: pcie3 pcie4 pcie5 nvlink3 nvlink4; networks: 10gbe 25gbe 100gbe 200gb-ib 400gb-ib."""


@dataclass
class PlanConfig:
    """Predict memory per GPU and step time of ddp and zero1-3 x optimizer x activation checkpointing; recommend one."""

    takes_config_file: ClassVar[bool] = False  # parse_cli: --config is the recipe to plan (the `config` field)
    model: str = ""
    """Preset name (llama-1b, ...) or a TOML recipe file."""
    config: str = ""
    """A TOML recipe (or a run's config.toml); same as --model FILE."""
    gpus: str = ""
    """GPUs per node, e.g. 4x4090, 8xh100, 1xa100-80gb, 2xcustom."""
    interconnect: str = "pcie4"
    """Link between the GPUs of a node: pcie3, pcie4, pcie5, nvlink3, nvlink4."""
    p2p: Literal["auto", "on", "off"] = "auto"
    """PCIe peer-to-peer (off: staged through host memory; auto: off on GeForce RTX 4090s, whose stock driver
    has no P2P, on elsewhere)."""
    nodes: int = 1
    """Number of machines."""
    network: str = ""
    """Network between nodes: 10gbe, 25gbe, 100gbe, 200gb-ib, 400gb-ib."""
    bandwidth_gbs: float | None = None
    """Measured intra-node bus bandwidth, GB/s (overrides the interconnect preset)."""
    network_gbs: float | None = None
    """Measured inter-node bandwidth, GB/s."""
    gpu_tflops: float | None = None
    """Custom peak dense bf16 TFLOP/s."""
    gpu_mem_gb: float | None = None
    """Custom GPU memory, GB."""
    gpu_mem_bw_gbs: float | None = None
    """Custom GPU memory bandwidth, GB/s."""
    seq: int | None = None
    """Sequence length (None: the recipe's train.seq_len)."""
    global_batch_tokens: int = 0
    """Tokens per optimizer step (0: the recipe's)."""
    mfu: float | None = None
    """Assumed model FLOPs utilisation of peak (None: the per-operation speed model, speed.py)."""
    optim: str = "adamw,adamw8bit"
    """Comma list of adamw, adamw8bit, adamw8bit-torchao, muon."""
    strategy: str = ""
    """Comma list of ddp, zero1, zero2, zero3 (empty: all)."""
    ac: str = "none,selective,full"
    """Comma list of activation checkpointing modes."""
    chunked_loss: int | None = None
    """Cross-entropy chunk, positions (None: the recipe's train.chunked_loss)."""
    reduce_dtype: Literal["fp32", "bf16"] = "fp32"
    """Gradient reduction dtype."""
    vocab_size: int | None = None
    """Vocabulary size when the recipe says 0 (None: from the data's meta.json)."""
    json: bool = False
    """Print JSON instead of a table."""
    validate: bool = False
    """Run real train steps here and compare them with the prediction."""
    steps: int = 3
    """--validate: train steps."""
    micro_batch: int = 0
    """--validate: sequences per step (0: the recipe's, at most 8)."""
    device: str = "auto"
    """--validate: auto, cpu, cuda, cuda:1."""
    lora_rank: int | None = None
    """LoRA adapter rank to plan for (None: the recipe's lora.rank; 0: full training)."""
    stage: Literal["pretrain", "sft", "dpo", "simpo", "reward", "grpo"] = "pretrain"
    """Stage to plan: dpo and grpo (with --beta > 0) add a frozen reference model; grpo adds the rollout KV cache."""
    group_size: int = 8
    """--stage grpo: completions per prompt (G); the KV cache holds G x --prompts rows at --seq positions."""
    prompts: int = 1
    """--stage grpo: prompts per rollout on each GPU."""
    beta: float = 0.04
    """--stage grpo: KL weight (0: no reference model)."""
    calibrate: bool = False
    """Measure this device's matmul rate, memory and bus bandwidth and store them (--calibration)."""
    calibration: str = ""
    """Calibration file (empty: ~/.cache/banyan/calibration.json)."""
    shapes: str = ""
    """--validate: comma list of MICROxSEQ shapes to measure (e.g. 1x128,4x256); empty: --micro_batch x --seq."""
    budget: str = ""
    """Which model for this budget: 14d, 36h, 5000gpuh (GPU-hours over all --gpus)."""
    sizes: str = ""
    """--budget: comma list of presets / ladder widths to sweep (empty: presets plus the built-in ladder)."""
    plot: str = ""
    """--budget: PNG of expected loss vs size (empty: plan-budget.png in the current folder; 'none': no plot)."""

    # allowed values, checked when flags are parsed (banyan.configlib.check_ranges); None = unbounded
    ranges = {"nodes": (1, None), "seq": (1, None), "global_batch_tokens": (0, None), "mfu": (1e-6, 1.0),
              "chunked_loss": (0, None), "vocab_size": (1, None), "steps": (1, None), "micro_batch": (0, None),
              "lora_rank": (0, None), "bandwidth_gbs": (1e-9, None), "network_gbs": (1e-9, None),
              "gpu_tflops": (1e-9, None), "gpu_mem_gb": (1e-9, None), "gpu_mem_bw_gbs": (1e-9, None)}


def load_run_config(model: str | None, config: str | None, vocab_size: int | None,
                    for_validate: bool) -> tuple[RunConfig, str, list[str]]:
    """Recipe from --model/--config, with vocab_size resolved; returns (cfg, display name, notes)."""
    src = config or model
    if not src:
        raise BanyanError("give --model PRESET_OR_TOML (or --config FILE)")
    path = preset_path(src)
    data = read_toml(path)
    cfg = read_saved_config(RunConfig, path) if "git_commit" in data else load_config(RunConfig, file=str(path))
    try:  # a recipe's numbers obey the same ranges as `banyan pretrain --config` would apply
        check_ranges(cfg, RunConfig.ranges)
    except ConfigError as e:
        raise BanyanError(f"{path}: {e}") from None
    notes = []
    if vocab_size is not None:
        if vocab_size <= 0:
            raise BanyanError(f"--vocab_size must be > 0, got {vocab_size}")
        cfg.model.vocab_size = vocab_size
    if cfg.model.vocab_size == 0:
        meta = Path(cfg.data.path) / "meta.json"
        if meta.is_file():
            cfg.model.vocab_size = int(json.loads(meta.read_text(encoding="utf-8"))["vocab_size"])
            notes.append(f"vocab_size {cfg.model.vocab_size} from {meta}")
        elif for_validate:
            cfg.model.vocab_size = 2048
            notes.append(f"vocab_size is 0 in {path.name} and {meta} does not exist: using 2048 (set --vocab_size)")
        else:
            raise BanyanError(f"{path}: model.vocab_size is 0 (taken from prepared data) and {meta} does not exist; "
                              "pass --vocab_size N")
    try:
        cfg.model.finalize()
    except ConfigError as e:
        raise BanyanError(f"{path}: {e}") from None
    return cfg, Path(src).stem if Path(src).suffix == ".toml" else src, notes


def _split(s: str) -> list[str]:
    return [x.strip() for x in s.split(",") if x.strip()]


def _gb(x: float) -> str:
    return f"{x:.1f}"


def recipe_flag(src: str) -> str:
    """How `banyan pretrain` is told the recipe: `--config FILE` for a TOML file, `--preset NAME` for a preset."""
    is_file = Path(src).suffix == ".toml" or Path(src).is_file()  # the rule of configlib.preset_path
    return f"--config {src}" if is_file else f"--preset {src}"


def render(d: dict, plan_rows, hw_note: str, recipe: str) -> None:
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    con = Console(width=max(170, Console().width))
    m, h, w = d["model"], d["hardware"], d["workload"]
    con.print(f"[bold]{m['name']}[/]: {m['arch']}, {m['params'] / 1e6:,.0f}M params, {m['n_layer']} layers x "
              f"{m['d_model']}, vocab {m['vocab_size']}; seq {w['seq']}, {w['global_batch_tokens']:,} tokens/step; "
              + (f"assumed MFU {w['mfu']:g}" if w["mfu"] is not None else f"speed model: {d['speed_model']['source']}"))
    g = h["gpu"]
    con.print(f"{h['world']} x {g['name']} ({g['tflops']:g} TFLOP/s bf16, {g['mem_gb']:g} GB) on {h['nodes']} "
              f"node(s); {hw_note}")
    t = Table(show_lines=False, header_style="bold")
    for col in ("strategy", "optim", "AC", "mb x acc", "params", "grads", "optim st", "activ", "buffers", "total GB",
                "fits", "compute s", "comm s", "step s", "tok/s", "MFU"):
        t.add_column(col, justify="left" if col in ("strategy", "optim", "AC", "fits") else "right")
    for r in plan_rows:
        mg = r.mem_gb
        t.add_row(r.strategy, r.optim, r.ac, f"{r.micro_batch} x {r.accum}" if r.fits else "-",
                  _gb(mg["params"]), _gb(mg["grads"]), _gb(mg["optim"]), _gb(mg["activations"]), _gb(mg["buffers"]),
                  _gb(mg["total"]), "yes" if r.fits else "[red]no[/]",
                  *((f"{r.compute_s:.2f}", f"{r.comm_s:.2f}", f"{r.step_s:.2f}", f"{r.tokens_per_s:,.0f}",
                     f"{r.mfu:.2f}") if r.fits else ("-",) * 5))
    con.print(t)
    con.print("memory per GPU in GB (2^30 B); not-fitting rows show micro-batch 1. 'comm s' is communication "
              "not hidden behind compute; 'buffers' include bf16 weight copies and logits; total adds 1 GB CUDA "
              "context + 5% fragmentation; zero2/zero3 assume FSDP mixed precision (bf16 gathers).", style="dim")
    extra = [(k, plan_rows[0].mem_gb[k]) for k in ("reference", "kv_cache") if plan_rows and k in plan_rows[0].mem_gb]
    if extra:
        con.print("total includes " + ", ".join(f"{k.replace('_', ' ')} {v:.2f} GB" for k, v in extra)
                  + f" per GPU ({plan_rows[0].strategy}; zero2/zero3 shard the reference)", style="dim")
    rec = d["recommendation"]
    if rec:
        con.print(f"[bold green]Recommendation:[/] {escape(rec['why'])}")
        con.print(f"  train it with: banyan pretrain {escape(recipe)} --train.global_batch_tokens "
                  f"{w['global_batch_tokens']} {escape(' '.join(rec['pretrain_flags']))}", soft_wrap=True)
    else:
        con.print(f"[bold red]{m['name']} does not fit on {h['world']} x {g['name']} with any strategy.[/]")
        for a in d["advice"]:
            con.print(f"  - {escape(a)}")


def render_validate(res: dict, name: str) -> None:
    model = f"assumed MFU {res['mfu']:g}" if res["mfu"] is not None else f"speed model {res['speed_model']}"
    print(f"banyan plan --validate: {name} on {res['device']} ({res['accelerator']}, {res['peak_tflops']:.3g} "
          f"TFLOP/s peak, {model}), optim {res['optim']}, AC {res['ac']}, micro-batch "
          f"{res['micro_batch']} x seq {res['seq']}, {res['steps']} steps, final loss {res['final_loss']:.3f}")
    print(f"{'quantity':<22}{'predicted':>16}{'measured':>16}{'ratio':>8}")
    for q, pred, meas, unit in res["rows"]:
        if unit == "B":
            ps, ms = f"{pred / 2**20:,.3f} MiB", f"{meas / 2**20:,.3f} MiB"
        else:
            ps, ms = f"{pred * 1e3:,.1f} ms", f"{meas * 1e3:,.1f} ms"
        ratio = f"{meas / pred:.3f}" if pred else "-"
        print(f"{q:<22}{ps:>16}{ms:>16}{ratio:>8}")


def main(argv: list[str] | None = None) -> int:
    from banyan.plan import memory as M
    from banyan.plan.planner import Workload, make_plan, plan_dict, resolve_hardware

    args = parse_cli(PlanConfig, argv, prog="banyan plan", description=PlanConfig.__doc__ + "\n\n" + EXAMPLES)
    if args.calibrate:
        return main_calibrate(args)
    if args.budget:
        return main_budget(args)
    cfg, name, notes = load_run_config(args.model, args.config, args.vocab_size, args.validate)
    seq = cfg.train.seq_len if args.seq is None else args.seq
    if seq < 1 or seq > cfg.model.max_seq_len:
        raise BanyanError(f"--seq {seq} must be in [1, model.max_seq_len = {cfg.model.max_seq_len}]")
    chunk = cfg.train.chunked_loss if args.chunked_loss is None else args.chunked_loss
    if chunk < 0:
        raise BanyanError(f"--chunked_loss must be >= 0, got {chunk}")
    if args.mfu is not None and not 0 < args.mfu <= 1:
        raise BanyanError(f"--mfu must be in (0, 1], got {args.mfu}")
    for note in notes:
        print(f"note: {note}")
    if args.validate:
        return main_validate(args, cfg, name, seq, chunk)
    if not args.gpus:
        raise BanyanError("give --gpus, e.g. --gpus 4x4090 (or --validate to measure on this machine)")
    hw = resolve_hardware(args.gpus, args.interconnect, p2p_on(args), args.nodes, args.network or None,
                          args.gpu_tflops, args.gpu_mem_gb, args.gpu_mem_bw_gbs, args.bandwidth_gbs, args.network_gbs)
    gbt = args.global_batch_tokens or cfg.train.global_batch_tokens or cfg.train.micro_batch * seq * hw.world
    rank = cfg.lora.rank if args.lora_rank is None else args.lora_rank
    if args.group_size < 1 or args.prompts < 1 or args.beta < 0:
        raise BanyanError(f"--group_size and --prompts must be >= 1 and --beta >= 0, got {args.group_size}, "
                          f"{args.prompts}, {args.beta}")
    stage = M.StageMemory(args.stage, args.group_size, args.prompts, seq, args.beta)
    work = Workload(cfg.model, name, seq, gbt, args.mfu, chunk, 2 if args.reduce_dtype == "bf16" else 4,
                    float(cfg.parallel.bucket_mb), specs=M.param_specs(cfg.model, rank, cfg.lora.targets),
                    stage=stage if args.stage != "pretrain" else None,
                    throughput=calibrated_throughput(args, hw))
    plan = make_plan(work, hw, _split(args.optim), _split(args.strategy) if args.strategy else None, _split(args.ac))
    d = plan_dict(work, hw, plan)
    if args.json:
        print(json.dumps(d, indent=2, default=lambda o: None if isinstance(o, float) and math.isnan(o) else str(o)))
    else:
        render(d, plan.rows, hw.note, recipe_flag(args.config or args.model))
    return 0 if plan.best else 1


# --- speed model, calibration and budget (banyan.plan.calibrate / budget) -------------------------------------


def p2p_on(args: PlanConfig) -> bool:
    """--p2p auto: off for RTX 4090s (no P2P with the stock driver, REFERENCE.md) over PCIe, on otherwise."""
    if args.p2p != "auto":
        return args.p2p == "on"
    from banyan.hardware import INTERCONNECTS, gpu, parse_gpus

    name = parse_gpus(args.gpus)[1]
    link = INTERCONNECTS.get(args.interconnect.lower())
    return not (name.lower() != "custom" and gpu(name).name == "rtx4090" and link is not None and link.pcie)


def calibrated_throughput(args: PlanConfig, hw):
    """The stored calibration of a device of hw's GPU preset, or None (the preset figures)."""
    from banyan.plan.calibrate import read_calibration, throughput_for

    if args.mfu is not None or not read_calibration(args.calibration or None):
        return None
    tp = throughput_for(hw.gpu, None, args.calibration or None)
    return None if tp.source.startswith("preset") else tp


def main_calibrate(args: PlanConfig) -> int:
    """`banyan plan --calibrate`: measure and store this device's throughput."""
    from banyan.plan.calibrate import run_calibration

    res = run_calibration(args.device, args.calibration or None)
    if args.json:
        print(json.dumps(res, indent=2))
        return 0
    print(f"calibrated {res['key']} ({res['dtype']}, torch {res['torch']}, {res['threads']} threads, "
          f"load {res['load_1min']:.2f}) -> {res['path']}")
    for mm in res["matmuls"]:
        print(f"  matmul {mm['m']:>6} x {mm['n']:>6} x {mm['k']:>6}: {mm['seconds'] * 1e3:9.3f} ms "
              f"{mm['tflops']:8.3f} TFLOP/s")
    print(f"  fit: {res['matmul_tflops']:.3f} TFLOP/s at large shapes, half rate at dim {res['d0']:.0f} "
          f"(rms log error {res['fit_rms_log_error']:.2f}); layouts X W^T x{res['nt_rate']:.2f}, "
          f"dY^T X x{res['tn_rate']:.2f}; memory {res['mem_bw_gbs']:.1f} GB/s; "
          f"launch {res['launch_s'] * 1e6:.1f} us" + (f"; bus ({res['bus_kind']}) {res['bus_gbs']:.1f} GB/s"
                                                       if res["bus_gbs"] else ""))
    for a in res.get("attention", []):
        print(f"  causal SDPA fwd+bwd {a['b']}x{a['h']}x{a['t']}x{a['hd']}: {a['seconds'] * 1e3:9.3f} ms "
              f"{a['tflops']:8.3f} TFLOP/s")
    if "dispatch_s" in res:
        print(f"  SDPA fit: {res['attn_tflops']:.3f} TFLOP/s, half rate at dim {res['attn_d0']:.0f}; elementwise "
              f"{res['elem_bw_gbs']:.1f} GB/s; dispatch {res['dispatch_s'] * 1e6:.1f} us per aten call; GELU fwd+bwd "
              f"{res['gelu_s'] * 1e9:.2f} ns (tanh {res['gelu_tanh_s'] * 1e9:.2f}) per value; page faults "
              f"{res['page_fault_s'] * 2**30:.2f} s per fresh GiB")
    return 0


def _shapes(args: PlanConfig, cfg: RunConfig, seq: int) -> list[tuple[int, int]]:
    if not args.shapes:
        return [(args.micro_batch or min(cfg.train.micro_batch, 8), seq)]
    out = []
    for item in _split(args.shapes):
        parts = item.lower().split("x")
        if len(parts) != 2 or not all(p.strip().isdigit() and int(p) > 0 for p in parts):
            raise BanyanError(f"--shapes: '{item}' is not MICROxSEQ (e.g. 4x256)")
        b, t = int(parts[0]), int(parts[1])
        if t > cfg.model.max_seq_len:
            raise BanyanError(f"--shapes: seq {t} in '{item}' exceeds model.max_seq_len = {cfg.model.max_seq_len}")
        out.append((b, t))
    return out


def main_validate(args: PlanConfig, cfg: RunConfig, name: str, seq: int, chunk: int) -> int:
    """`--validate` at one shape, or at each of --shapes with a summary of step-time ratios."""
    from banyan.plan.validate import validate

    optims, acs = _split(args.optim), _split(args.ac)
    results = [validate(cfg, optims[0], args.steps, b, t, acs[0], chunk, args.device, args.mfu, args.calibration)
               for b, t in _shapes(args, cfg, seq)]
    if args.json:
        print(json.dumps(results[0] if len(results) == 1 else results, indent=2))
        return 0
    for res in results:
        render_validate(res, name)
    if len(results) > 1:
        print(f"{'shape':<14}{'predicted ms':>14}{'measured ms':>14}{'ratio':>8}")
        for res in results:
            _, pred, meas, _ = next(r for r in res["rows"] if r[0] == "step time")
            print(f"{res['micro_batch']}x{res['seq']:<12}{pred * 1e3:>14.1f}{meas * 1e3:>14.1f}{meas / pred:>8.3f}")
    return 0


def main_budget(args: PlanConfig) -> int:
    """`--budget`: sweep sizes on --gpus and recommend the lowest expected loss (banyan.plan.budget)."""
    from banyan.plan import budget as B
    from banyan.plan.planner import resolve_hardware

    if not args.gpus:
        raise BanyanError("--budget needs --gpus, e.g. --gpus 4x4090 --interconnect pcie4 --p2p off --budget 14d")
    hw = resolve_hardware(args.gpus, args.interconnect, p2p_on(args), args.nodes, args.network or None,
                          args.gpu_tflops, args.gpu_mem_gb, args.gpu_mem_bw_gbs, args.bandwidth_gbs, args.network_gbs)
    wall_s, desc = B.parse_budget(args.budget, hw.world)
    results = B.sweep(hw, wall_s, _split(args.sizes) or None, args.global_batch_tokens,
                      calibrated_throughput(args, hw), tuple(_split(args.optim)))
    d = B.budget_dict(results, hw, wall_s, desc)
    if args.plot != "none":
        d["plot"] = B.plot(results, args.plot or "plan-budget.png",
                           f"{hw.world}x{hw.gpu.name}, {args.budget}: expected loss vs size")
    if args.json:
        print(json.dumps(d, indent=2))
    else:
        B.render(d)
    return 0 if d["recommendation"] else 1
