"""Enumerate strategy x optimizer x activation checkpointing, size each, pick the best that fits.

For every configuration: memory per GPU (memory.py) at the largest micro-batch that fits and
divides the per-GPU sequences of a step, then the step time (speed.py) at that micro-batch.
The recommendation is the feasible configuration with the most tokens/s (ties: less memory).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from banyan.errors import BanyanError
from banyan.model.config import ModelConfig
from banyan.hardware import P2P_OFF_FACTOR, Accelerator, custom_gpu, gpu, interconnect, network, parse_gpus
from banyan.plan import memory as M
from banyan.plan import speed as S

STRATEGIES = ("ddp", "zero1", "zero2", "zero3")
AC_MODES = ("none", "selective", "full")
# Muon orthogonalises whole matrices; ZeRO/FSDP shards each matrix across ranks.
SUPPORTED = {"muon": ("single", "ddp")}


@dataclass
class Hardware:
    gpu: Accelerator
    per_node: int
    nodes: int
    bw_gbs: float        # effective bus bandwidth of the slowest link a ring crosses, GB/s
    link: str
    note: str

    @property
    def world(self) -> int:
        return self.per_node * self.nodes


def resolve_hardware(gpus: str, link: str = "pcie4", p2p: bool = True, nodes: int = 1, net: str | None = None,
                     gpu_tflops: float | None = None, gpu_mem_gb: float | None = None,
                     gpu_mem_bw_gbs: float | None = None, bandwidth_gbs: float | None = None,
                     network_gbs: float | None = None) -> Hardware:
    """Presets + custom figures -> Hardware. `bandwidth_gbs`/`network_gbs` are measured bus bandwidths, used as is."""
    count, name = parse_gpus(gpus)
    base = None if name.lower() == "custom" else gpu(name)
    acc = custom_gpu(base, gpu_tflops, gpu_mem_gb, gpu_mem_bw_gbs) if (base is None or gpu_tflops or gpu_mem_gb
                                                                        or gpu_mem_bw_gbs) else base
    if nodes < 1:
        raise BanyanError(f"--nodes must be >= 1, got {nodes}")
    if bandwidth_gbs is not None:
        if bandwidth_gbs <= 0:
            raise BanyanError(f"--bandwidth_gbs must be > 0, got {bandwidth_gbs}")
        intra, note = bandwidth_gbs, f"intra-node {bandwidth_gbs:g} GB/s (given)"
    else:
        lk = interconnect(link)
        if not p2p and not lk.pcie:
            raise BanyanError(f"--p2p off applies to PCIe only; {lk.name} is a peer-to-peer link")
        intra = lk.gbs * S.LINK_EFFICIENCY * (1.0 if p2p else P2P_OFF_FACTOR)
        note = (f"{lk.name} {lk.gbs:g} GB/s x {S.LINK_EFFICIENCY} efficiency"
                + ("" if p2p else f" x {P2P_OFF_FACTOR} (P2P off: staged through host memory)")
                + f" = {intra:.1f} GB/s")
    bw = intra
    if nodes > 1:
        if network_gbs is not None:
            inter = network_gbs
        elif net:
            inter = network(net).gbs * S.LINK_EFFICIENCY
        else:
            raise BanyanError(f"--nodes {nodes} needs --network (10gbe, 25gbe, 100gbe, 200gb-ib, 400gb-ib) "
                              "or --network_gbs")
        bw = min(intra, inter)
        note += f"; network {inter:.2f} GB/s; ring bottleneck {bw:.2f} GB/s"
    elif net or network_gbs:
        raise BanyanError("--network/--network_gbs need --nodes > 1")
    return Hardware(acc, count, nodes, bw, link, note)


@dataclass
class Workload:
    cfg: ModelConfig
    name: str
    seq: int
    global_tokens: int
    mfu: float | None = None  # None: the per-operation speed model; a number: the old constant-MFU estimate
    chunk: int = 0
    reduce_bytes: int = 4
    bucket_mb: float = 25.0
    compute_bytes: int = 2  # 2: bf16 autocast (GPU); 4: fp32 (CPU)
    specs: list[M.ParamSpec] = field(default_factory=list)
    stage: M.StageMemory | None = None  # post-training extras: reference model, rollout KV cache
    throughput: S.Throughput | None = None  # calibrated figures (None: hw.gpu's preset, banyan.plan.calibrate)

    def __post_init__(self):
        if not self.specs:
            self.specs = M.param_specs(self.cfg)


@dataclass
class Row:
    strategy: str
    optim: str
    ac: str
    micro_batch: int
    accum: int
    mem_gb: dict[str, float]
    fits: bool
    compute_s: float = 0.0
    optim_s: float = 0.0
    comm_s: float = 0.0          # exposed communication
    comm_total_s: float = 0.0    # all communication, hidden or not
    step_s: float = 0.0
    tokens_per_s: float = 0.0
    mfu: float = 0.0

    @property
    def label(self) -> str:
        return f"{self.strategy} + {self.optim}, AC {self.ac}"


def memory_bytes(work: Workload, strategy: str, optim: str, ac: str, mb: int, n: int, accum: int = 1,
                 cuda: bool = True) -> dict:
    """Bytes per GPU by category (params, grads, optim, activations, buffers, overhead, total); memory.py."""
    st = M.static_bytes(work.specs, optim)
    fsdp = strategy in ("zero2", "zero3")
    shard_o = n if strategy in ("zero1", "zero2", "zero3") else 1
    # FSDP accumulates unsharded grads (reduce dtype) while the trainer skips reduce-scatters
    unsharded = work.reduce_bytes * M.n_params(M.trainable(work.specs)) if fsdp and accum > 1 else 0
    act = M.activation_bytes(work.cfg, mb, work.seq, ac, work.chunk, work.compute_bytes)["total"]
    buf = sum(M.buffer_bytes(work.cfg, work.specs, strategy, ac, mb, work.seq, work.chunk,
                             work.compute_bytes).values())
    out = {"params": st["params"] / (n if fsdp else 1), "grads": st["grads"] / (n if fsdp else 1) + unsharded,
           "optim": st["optim"] / shard_o, "activations": act, "buffers": buf,
           **(M.stage_bytes(work.stage, work.cfg, work.specs, strategy, n) if work.stage else {}),
           "overhead": (M.CUDA_FIXED_BYTES + M.FRAGMENTATION * (act + buf)) if cuda else 0.0}
    out["total"] = sum(out.values())
    return out


def seqs_per_gpu(work: Workload, world: int) -> int:
    per = work.seq * world
    if work.global_tokens <= 0 or work.global_tokens % per:
        raise BanyanError(f"--global_batch_tokens ({work.global_tokens}) must be a positive multiple of "
                          f"seq * GPUs = {work.seq} * {world} = {per}")
    return work.global_tokens // per


def throughput(work: Workload, hw: Hardware) -> S.Throughput:
    """The device's figures: calibrated if given, the preset's, or (with --mfu) peak x mfu at every shape."""
    from banyan.plan.calibrate import preset_throughput

    if work.mfu is not None:  # constant MFU: every matmul at peak x mfu, no small-shape falloff
        return S.Throughput(hw.gpu.tflops * work.mfu, 0.0, hw.gpu.mem_bw_gbs, 0.0, f"assumed MFU {work.mfu:g}")
    return work.throughput or preset_throughput(hw.gpu)


def micro_batch_times(work: Workload, hw: Hardware, ac: str, mb: int) -> tuple[float, float, S.Throughput]:
    """(forward s, backward s incl. recompute, throughput used) of one micro-batch of `mb` sequences."""
    cfg, specs, tp = work.cfg, work.specs, throughput(work, hw)
    if work.mfu is not None:
        rate = tp.matmul_tflops * 1e12
        fpt = S.flops_per_token(cfg, specs, work.seq)
        rfpt = S.recompute_flops_per_token(cfg, specs, work.seq, ac, work.chunk)
        tokens = mb * work.seq
        return tokens * fpt / 3 / rate, tokens * (2 * fpt / 3 + rfpt) / rate, tp
    st = S.micro_batch_seconds(cfg, specs, mb, work.seq, ac, work.chunk, tp, work.compute_bytes)
    return st.fwd, st.bwd, tp


def evaluate(work: Workload, hw: Hardware, strategy: str, optim: str, ac: str) -> Row:
    """Size one configuration: largest fitting micro-batch, memory there, step time."""
    n, cap = hw.world, hw.gpu.mem_gb * M.GiB
    per_gpu = seqs_per_gpu(work, n)
    divisors = [d for d in range(per_gpu, 0, -1) if per_gpu % d == 0]
    mb = next((d for d in divisors if memory_bytes(work, strategy, optim, ac, d, n, per_gpu // d)["total"] <= cap),
              None)
    fits = mb is not None
    mb = mb or 1
    mem = memory_bytes(work, strategy, optim, ac, mb, n, per_gpu // mb)
    row = Row(strategy, optim, ac, mb, per_gpu // mb, {k: v / M.GiB for k, v in mem.items()}, fits)
    if not fits:
        return row
    cfg, specs = work.cfg, work.specs
    fwd_s, bwd_s, tp = micro_batch_times(work, hw, ac, mb)
    row.compute_s = row.accum * (fwd_s + bwd_s)
    shard = n if strategy != "ddp" else 1
    row.optim_s = S.optimizer_seconds(cfg, specs, optim, shard, tp.mem_bw_gbs, tp.matmul_tflops * 1e12,
                                      dispatch_s=tp.dispatch_s)
    block = sum(s.numel for s in specs if s.kind == "matrix") // cfg.n_layer
    comm = S.comm_seconds(strategy, n, M.n_params(specs), block, cfg.n_layer, row.accum, fwd_s, bwd_s, hw.bw_gbs,
                          work.bucket_mb, work.reduce_bytes)
    row.comm_s, row.comm_total_s = comm.exposed_s, comm.total_s
    row.step_s = row.compute_s + row.optim_s + row.comm_s
    row.tokens_per_s = work.global_tokens / row.step_s
    row.mfu = work.global_tokens * S.flops_per_token(cfg, specs, work.seq) / (row.step_s * n * hw.gpu.peak_flops)
    return row


def check_support(optims: list[str], strategies: list[str], explicit_strategies: bool) -> list[str]:
    """Validate names; returns the strategies to evaluate (muon drops the ZeRO ones unless asked for)."""
    for o in optims:
        if o not in M.OPTIMIZERS:
            raise BanyanError(f"unknown optimizer '{o}' for --optim; expected one of {', '.join(M.OPTIMIZERS)}")
    for s in strategies:
        if s not in STRATEGIES + ("single",):
            raise BanyanError(f"unknown strategy '{s}' for --strategy; expected one of {', '.join(STRATEGIES)}")
    for o in optims:
        bad = [s for s in strategies if s not in SUPPORTED.get(o, STRATEGIES + ("single",))]
        if bad and explicit_strategies:
            raise BanyanError(f"optimizer '{o}' does not support strategy {', '.join(bad)}: Muon orthogonalises "
                              f"whole weight matrices and ZeRO shards them; use {' or '.join(SUPPORTED[o])}, "
                              "or another optimizer")
    return strategies


@dataclass
class Plan:
    rows: list[Row]
    best: Row | None
    why: str
    advice: list[str]


def _why(best: Row, rows: list[Row], cap_gb: float) -> str:
    fsdp = " (with parallel.mixed_precision = true)" if best.strategy in ("zero2", "zero3") else ""
    head = (f"{best.label}{fsdp} is the fastest configuration that fits: {best.tokens_per_s:,.0f} tok/s using "
            f"{best.mem_gb['total']:.1f} of {cap_gb:g} GB at micro-batch {best.micro_batch} x {best.accum} "
            "accumulation")
    others = [r for r in rows if r.fits and (r.strategy, r.ac) != (best.strategy, best.ac)]
    if not others:
        return head + "."
    nxt = max(others, key=lambda r: r.tokens_per_s)
    gap = 1 - nxt.tokens_per_s / best.tokens_per_s
    if gap < 0.01:
        return head + (f"; {nxt.label} is within 1% ({nxt.tokens_per_s:,.0f} tok/s, "
                       f"{nxt.mem_gb['total']:.1f} GB): take it if you want more memory headroom.")
    diffs = {"activation recompute and compute": nxt.compute_s - best.compute_s,
             "exposed communication": nxt.comm_s - best.comm_s, "the optimizer step": nxt.optim_s - best.optim_s}
    cause, lost = max(diffs.items(), key=lambda kv: kv[1])
    return head + (f"; the next best, {nxt.label} ({nxt.tokens_per_s:,.0f} tok/s), loses {lost:.2f} s per step "
                   f"to {cause}.")


def _advice(work: Workload, hw: Hardware, optims: list[str]) -> list[str]:
    """What would make the model fit: more GPUs, fewer parameters, offload, a shorter sequence."""
    optim = "adamw8bit" if "adamw8bit" in optims else optims[0]
    can_shard = "zero3" in SUPPORTED.get(optim, STRATEGIES)
    cap, n = hw.gpu.mem_gb * M.GiB, hw.world
    strat = "single" if n == 1 else ("zero3" if can_shard else "ddp")
    mem = memory_bytes(work, strat, optim, "full", 1, n, seqs_per_gpu(work, n))
    static = mem["params"] + mem["grads"] + mem["optim"]
    out = [f"smallest footprint ({strat} + {optim}, full AC, micro-batch 1) needs {mem['total'] / M.GiB:.1f} GB "
           f"per GPU; a {hw.gpu.name} has {hw.gpu.mem_gb:g} GB"]
    if can_shard:
        def fits_on(k: int) -> bool:
            if work.global_tokens % (work.seq * k):
                return False
            return memory_bytes(work, "zero3", optim, "full", 1, k, seqs_per_gpu(work, k))["total"] <= cap

        k = next((k for k in range(max(n + 1, 2), 4097) if fits_on(k)), None)
        out.append(f"more GPUs: it fits on {k} of them with ZeRO-3 (shards params, grads and optimizer state)" if k
                   else "more GPUs alone will not do: activations and buffers exceed one GPU's memory")
    room = cap - (mem["total"] - static)
    if room > 0:
        params = M.n_params(work.specs) * room / static
        out.append(f"fewer parameters: about {params / 1e6:,.0f}M would fit this way")
    out.append(f"offload: parallel.cpu_offload keeps params, grads and optimizer state ({static / M.GiB:.1f} GB per "
               "GPU here) in host memory, at the cost of PCIe traffic every step")
    if work.chunk == 0:
        out.append("chunked loss (--chunked_loss 4096) avoids materialising the full [tokens, vocab] logits")
    return out


def make_plan(work: Workload, hw: Hardware, optims: list[str], strategies: list[str] | None = None,
              acs: list[str] | None = None) -> Plan:
    explicit = strategies is not None
    strategies = check_support(optims, list(strategies or STRATEGIES), explicit)
    acs = list(acs or AC_MODES)
    for a in acs:
        if a not in AC_MODES:
            raise BanyanError(f"unknown activation checkpointing mode '{a}' for --ac; expected none, selective, full")
    if hw.world == 1:
        strategies = ["single"]  # no data parallelism on one GPU
    rows = [evaluate(work, hw, s, o, a) for s in strategies for o in optims if s in SUPPORTED.get(o, (s,))
            for a in acs]
    feasible = [r for r in rows if r.fits]
    if not feasible:
        return Plan(rows, None, "", _advice(work, hw, optims))
    best = max(feasible, key=lambda r: (round(r.tokens_per_s, 6), -r.mem_gb["total"]))
    return Plan(rows, best, _why(best, rows, hw.gpu.mem_gb), [])


def pretrain_flags(work: Workload, row: Row) -> list[str]:
    """`banyan pretrain` flags that select `row`'s configuration."""
    flags = ["--parallel.strategy", row.strategy, "--optim.name", row.optim, "--train.micro_batch",
             str(row.micro_batch), "--train.seq_len", str(work.seq), "--train.activation_checkpointing", row.ac]
    if row.strategy in ("zero2", "zero3"):
        flags.append("--parallel.mixed_precision")
    if work.chunk:
        flags += ["--train.chunked_loss", str(work.chunk)]
    return flags


def plan_dict(work: Workload, hw: Hardware, plan: Plan) -> dict:
    """JSON-ready summary."""
    cfg = work.cfg
    return {
        "model": {"name": work.name, "arch": cfg.arch, "params": M.n_params(work.specs), "n_layer": cfg.n_layer,
                  "d_model": cfg.d_model, "vocab_size": cfg.vocab_size,
                  "flops_per_token": S.flops_per_token(cfg, work.specs, work.seq)},
        "hardware": {"gpu": asdict(hw.gpu), "gpus_per_node": hw.per_node, "nodes": hw.nodes, "world": hw.world,
                     "bus_bandwidth_gbs": hw.bw_gbs, "link": hw.note},
        "speed_model": asdict(throughput(work, hw)),
        "workload": {"seq": work.seq, "global_batch_tokens": work.global_tokens, "mfu": work.mfu,
                     "chunked_loss": work.chunk, "reduce_bytes": work.reduce_bytes},
        "rows": [asdict(r) for r in plan.rows],
        "recommendation": (dict(asdict(plan.best), why=plan.why, pretrain_flags=pretrain_flags(work, plan.best))
                           if plan.best else None),
        "advice": plan.advice,
    }


__all__ = ["AC_MODES", "Hardware", "Plan", "Row", "STRATEGIES", "Workload", "evaluate", "make_plan",
           "memory_bytes", "plan_dict", "resolve_hardware"]
