"""`banyan plan --gpus 4x4090 --budget 14d`: which model size gives the lowest expected loss on this rig.

For each size (the Llama presets plus a ladder of Llama shapes): the fastest configuration that fits
(strategy x optimizer x activation checkpointing x micro-batch, planner.make_plan with the speed
model), the tokens D it trains within the wall-clock budget (tokens/s x seconds), and the expected
loss from the Chinchilla parametric fit, approach 3 of Hoffmann et al. 2022, "Training Compute-
Optimal Large Language Models" (arXiv:2203.15556, eq. 10 and sec. 3.3):

    L(N, D) = E + A / N^alpha + B / D^beta,  E = 1.69, A = 406.4, B = 410.7, alpha = 0.34, beta = 0.28

N counts all parameters, embeddings included (Chinchilla's convention; Pearce & Song 2024,
"Reconciling Kaplan and Chinchilla scaling laws"). The figures are nats per token on the law's own
data (MassiveText, its tokenizer): an estimate for ranking sizes against each other at one budget,
not a promise for the user's data, tokenizer or recipe. The recommended size is the one with the
lowest expected loss; a faster small model wins when the bigger one's tokens/s (small micro-
batches, exposed communication over a slow bus) leaves it data-starved.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from banyan.errors import BanyanError
from banyan.model.config import ModelConfig

CHINCHILLA = {"E": 1.69, "A": 406.4, "B": 410.7, "alpha": 0.34, "beta": 0.28}
PRESETS = ("gpt2-124m", "llama-125m", "llama-500m", "llama-1b")
# (name, n_layer, d_model, n_head, n_kv_head): Llama shapes between and beyond the presets
LADDER = (("llama-60m", 8, 512, 8, 4), ("llama-250m", 16, 1024, 16, 4), ("llama-350m", 20, 1152, 18, 6),
          ("llama-750m", 24, 1536, 24, 8), ("llama-1.2b", 24, 2048, 32, 8), ("llama-2b", 28, 2560, 40, 8))
VOCAB, SEQ = 32000, 2048


def chinchilla_loss(n_params: float, tokens: float) -> float:
    """Hoffmann et al. 2022 approach 3: expected loss (nats/token on their data) of N params trained on D tokens."""
    c = CHINCHILLA
    if n_params <= 0 or tokens <= 0:
        return float("inf")
    return c["E"] + c["A"] / n_params ** c["alpha"] + c["B"] / tokens ** c["beta"]


def parse_budget(text: str, n_gpus: int) -> tuple[float, str]:
    """'14d' / '36h' / '90m' (wall clock) or '5000gpuh' (GPU-hours over n_gpus) -> (wall seconds, description)."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(d|days?|h|hours?|m|min|gpuh|gpu-?hours?)\s*", text.lower())
    if not m:
        raise BanyanError(f"--budget '{text}': expected a number and a unit, e.g. 14d, 36h, 90m or 5000gpuh")
    x, unit = float(m.group(1)), m.group(2)
    if x <= 0:
        raise BanyanError(f"--budget '{text}' must be > 0")
    if unit.startswith("gpu"):
        return x * 3600 / n_gpus, f"{x:g} GPU-hours = {x / n_gpus / 24:.2f} days on {n_gpus} GPUs"
    sec = x * {"d": 86400, "h": 3600, "m": 60}[unit[0]]
    return sec, f"{sec / 86400:.2f} days wall clock = {sec * n_gpus / 3600:,.0f} GPU-hours"


def ladder_config(n_layer: int, d_model: int, n_head: int, n_kv_head: int) -> ModelConfig:
    cfg = ModelConfig(arch="llama", vocab_size=VOCAB, n_layer=n_layer, n_head=n_head, n_kv_head=n_kv_head,
                      d_model=d_model, max_seq_len=SEQ, tie_embeddings=False)
    cfg.finalize()
    return cfg


def size_configs(names: list[str] | None = None) -> list[tuple[str, ModelConfig]]:
    """(name, model config) of each preset and ladder size (or those named), smallest first."""
    from banyan.config import RunConfig, load_config, preset_path

    ladder = {n: (lay, d, h, kv) for n, lay, d, h, kv in LADDER}
    out = []
    for name in names or list(PRESETS) + list(ladder):
        if name in ladder:
            out.append((name, ladder_config(*ladder[name])))
            continue
        try:
            mc = load_config(RunConfig, file=str(preset_path(name))).model
        except BanyanError as e:
            raise BanyanError(f"--sizes: '{name}' is neither a preset nor a ladder size "
                              f"({', '.join(ladder)}): {e}") from None
        mc.vocab_size = mc.vocab_size or VOCAB
        mc.finalize()
        out.append((name, mc))
    from banyan.plan.memory import n_params, param_specs

    return sorted(out, key=lambda nc: n_params(param_specs(nc[1])))


@dataclass
class SizeResult:
    """One size of the sweep: its fastest fitting configuration, tokens in the budget, expected loss."""

    name: str
    params: int
    fits: bool
    config: str = ""
    micro_batch: int = 0
    accum: int = 0
    tokens_per_s: float = 0.0
    mfu: float = 0.0
    tokens: float = 0.0
    tokens_per_param: float = 0.0
    loss: float = float("inf")


def sweep(hw, wall_s: float, names: list[str] | None = None, global_tokens: int = 0, throughput=None,
          optims: tuple[str, ...] = ("adamw", "adamw8bit")) -> list[SizeResult]:
    """Each size's fastest fitting configuration on `hw`, its tokens in `wall_s` and its expected loss."""
    from banyan.plan import memory as M
    from banyan.plan.planner import Workload, make_plan

    gbt = global_tokens or max(SEQ * hw.world, 2**19 // (SEQ * hw.world) * SEQ * hw.world)  # ~0.5M tokens
    out = []
    for name, mc in size_configs(names):
        work = Workload(mc, name, SEQ, gbt, throughput=throughput)
        plan = make_plan(work, hw, list(optims))
        n = M.n_params(work.specs)
        best = plan.best
        if best is None:
            out.append(SizeResult(name, n, False))
            continue
        tokens = best.tokens_per_s * wall_s
        out.append(SizeResult(name, n, True, best.label, best.micro_batch, best.accum, best.tokens_per_s, best.mfu,
                              tokens, tokens / n, chinchilla_loss(n, tokens)))
    return out


def recommend(results: list[SizeResult]) -> SizeResult | None:
    fitting = [r for r in results if r.fits]
    return min(fitting, key=lambda r: r.loss) if fitting else None


def compare(results: list[SizeResult], a: str, b: str) -> str | None:
    """One sentence on whether size `a` beats size `b` and why (None when either is not in the sweep)."""
    ra, rb = (next((r for r in results if r.name == x), None) for x in (a, b))
    if ra is None or rb is None:
        return None
    if not rb.fits:
        return f"{b} does not fit at all; {a} does" if ra.fits else f"neither {a} nor {b} fits"
    if not ra.fits:
        return f"{a} does not fit; {b} does"
    verdict = "beats" if ra.loss < rb.loss else "loses to"
    return (f"{a} {verdict} {b}: {ra.loss:.3f} vs {rb.loss:.3f} expected loss; {a} trains "
            f"{ra.tokens / 1e9:,.1f}B tokens ({ra.tokens_per_param:.0f}/param) at {ra.tokens_per_s:,.0f} tok/s, "
            f"{b} {rb.tokens / 1e9:,.1f}B ({rb.tokens_per_param:.0f}/param) at {rb.tokens_per_s:,.0f} tok/s "
            f"(MFU {ra.mfu:.0%} vs {rb.mfu:.0%})")


def budget_dict(results: list[SizeResult], hw, wall_s: float, desc: str) -> dict:
    from dataclasses import asdict

    best = recommend(results)
    return {"budget_s": wall_s, "budget": desc, "gpus": f"{hw.world}x{hw.gpu.name}", "link": hw.note,
            "law": dict(CHINCHILLA, source="Hoffmann et al. 2022 (arXiv:2203.15556), approach 3"),
            "caveat": "expected losses are a scaling-law estimate for the law's data (MassiveText), not a promise "
                      "for yours",
            "sizes": [dict(asdict(r), loss=None if r.loss == float("inf") else r.loss) for r in results],
            "recommendation": best.name if best else None,
            "500m_vs_1b": compare(results, "llama-500m", "llama-1b")}


def plot(results: list[SizeResult], path: str, title: str) -> str:
    """PNG of expected loss vs parameters (log x), the recommended size marked; returns the path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from banyan.io import atomic_path

    fit = [r for r in results if r.fits]
    best = recommend(results)
    fig, ax = plt.subplots(figsize=(7, 4.2))
    ax.plot([r.params / 1e6 for r in fit], [r.loss for r in fit], "o-")
    for r in fit:
        ax.annotate(r.name, (r.params / 1e6, r.loss), fontsize=7, xytext=(3, 3), textcoords="offset points")
    if best:
        ax.plot([best.params / 1e6], [best.loss], "r*", markersize=14, label=f"lowest: {best.name}")
        ax.legend()
    ax.set_xscale("log")
    ax.set(xlabel="parameters (M)", ylabel="expected loss, Chinchilla fit (nats/token, its data)", title=title)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
    return path


def render(d: dict) -> None:
    """The sweep as a table, the recommendation, the 500M-vs-1B sentence and the law's caveat."""
    from rich.console import Console
    from rich.table import Table

    con = Console(width=max(150, Console().width))
    con.print(f"[bold]{d['gpus']}[/], budget {d['budget']}; {d['link']}")
    t = Table(header_style="bold")
    for col in ("size", "params", "fastest fitting config", "mb x acc", "tok/s", "MFU", "tokens", "tok/param",
                "expected loss"):
        t.add_column(col, justify="left" if col in ("size", "fastest fitting config") else "right")
    for r in d["sizes"]:
        star = " *" if r["name"] == d["recommendation"] else ""
        t.add_row(r["name"] + star, f"{r['params'] / 1e6:,.0f}M", r["config"] or "[red]does not fit[/]",
                  *((f"{r['micro_batch']} x {r['accum']}", f"{r['tokens_per_s']:,.0f}", f"{r['mfu']:.0%}",
                     f"{r['tokens'] / 1e9:,.1f}B", f"{r['tokens_per_param']:,.0f}", f"{r['loss']:.3f}")
                    if r["fits"] else ("-",) * 6))
    con.print(t)
    if d["recommendation"]:
        con.print(f"[bold green]Lowest expected loss:[/] {d['recommendation']}")
    if d["500m_vs_1b"]:
        con.print(f"500M vs 1B: {d['500m_vs_1b']}")
    con.print(f"Expected loss: L = {d['law']['E']} + {d['law']['A']}/N^{d['law']['alpha']} + "
              f"{d['law']['B']}/D^{d['law']['beta']} ({d['law']['source']}); {d['caveat']}.", style="dim")
    if d.get("plot"):
        con.print(f"plot: {d['plot']}", style="dim")
