"""The markdown summary of `make gpu-check` (gpu-check.md): part status, tests, throughput, plan --validate,
comm, and issue 15's targets checked against the figures."""

from __future__ import annotations

TARGET_MFU, TARGET_HF_RATIO, TARGET_MEM, TARGET_TIME = 0.50, 1.10, 0.10, 0.20


def _f(x, fmt: str = ",.0f") -> str:
    return "-" if x is None else format(x, fmt)


def _parts(report: dict) -> list[str]:
    lines = ["| part | status | seconds | cap |", "|---|---|---:|---:|"]
    for name, e in report["parts"].items():
        lines.append(f"| {name} | {e['status']} | {e['seconds']} | {e['cap_s']:g} |")
    return lines


def _pytest(res) -> list[str]:
    if not res:
        return ["no test results (see gpu-check.log)"]
    c = res["counts"]
    lines = [f"{c['passed']} passed, {c['failed']} failed, {c['error']} errors, {c['skipped']} skipped", "",
             "| test | outcome | s | message |", "|---|---|---:|---|"]
    for t in res["tests"]:
        lines.append(f"| {t['test']} | {t['outcome']} | {t['seconds']:.1f} | {t['message'].replace('|', '/')} |")
    return lines


def _bench(rows) -> list[str]:
    if not rows:
        return ["no results"]
    lines = ["| model | seq | compile | micro-batch | tok/s | MFU | peak MiB | HF tok/s | HF peak MiB | banyan/HF |",
             "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        if "error" in r and "tokens_per_s" not in r:
            lines.append(f"| {r['model']} | {r['seq']} | {r['compile']} | {r['micro_batch']} | error: "
                         f"{r['error'][:120]} | | | | | |")
            continue
        hf = r.get("hf") or {}
        lines.append(f"| {r['model']} | {r['seq']} | {r['compile']} | {r['micro_batch']} | {_f(r['tokens_per_s'])} | "
                     f"{_f(r['mfu'], '.1%')} | {_f(r['peak_mem_mb'])} | {_f(hf.get('tokens_per_s'))} | "
                     f"{_f(hf.get('peak_mem_mb'))} | {_f(r.get('ratio_vs_hf'), '.2f')} |"
                     + (f" HF error: {r['error'][:80]}" if "error" in r else ""))
    return lines


def _validate(res) -> list[str]:
    if not res:
        return ["no results"]
    cal = res.get("calibration") or {}
    lines = []
    if cal:
        lines.append(f"calibration: {cal['matmul_tflops']:.3g} TFLOP/s large-GEMM rate, half rate at dim "
                     f"{cal['d0']:.0f}, memory {cal['mem_bw_gbs']:.0f} GB/s, launch {cal['launch_s'] * 1e6:.1f} us"
                     + (f", bus ({cal['bus_kind']}) {cal['bus_gbs']:.1f} GB/s" if cal.get("bus_gbs") else ""))
    elif res.get("calibration_error"):
        lines.append(f"calibration failed: {res['calibration_error']}")
    lines += ["", "| model | shape | quantity | predicted | measured | measured/predicted |", "|---|---|---|---:|---:|---:|"]
    for run in res.get("runs", []):
        shape = f"{run['micro_batch']}x{run['seq']}"
        if "error" in run:
            lines.append(f"| {run['model']} | {shape} | error: {run['error'][:120]} | | | |")
            continue
        for q in run["rows"]:
            scale, unit = (2**20, "MiB") if q["unit"] == "B" else (1e-3, "ms")
            lines.append(f"| {run['model']} | {shape} | {q['quantity']} | {q['predicted'] / scale:,.1f} {unit} | "
                         f"{q['measured'] / scale:,.1f} {unit} | {_f(q['ratio'], '.3f')} |")
        step = next(q for q in run["rows"] if q["quantity"] == "step time")
        lines.append(f"| {run['model']} | {shape} | step time, preset figures | {run['preset_step_s'] * 1e3:,.1f} ms | "
                     f"{step['measured'] * 1e3:,.1f} ms | {step['measured'] / run['preset_step_s']:.3f} |")
    return lines


def _comm(res) -> list[str]:
    if not res:
        return ["no results"]
    lines = [f"backend {res.get('backend')}, world size {res.get('world_size')}, device {res.get('device')}, "
             f"hang: {res.get('hang')}", "", "| op | MiB | ms | algbw GB/s | correct |", "|---|---:|---:|---:|---|"]
    for r in res.get("results", []):
        if "skipped" in r:
            continue
        lines.append(f"| {r['op']} | {r['size_mb']:g} | {r['time_ms']:.3f} | {r['algbw_gbs']:.1f} | {r['correct']} |")
    return lines


def targets(report: dict) -> list[str]:
    """Issue 15's H200 targets, each marked met / missed / not measured."""
    out = []
    rows = (report["parts"].get("bench") or {}).get("result") or []
    for model in ("llama-125m", "llama-500m"):
        r = next((x for x in rows if x["model"] == model and x["seq"] == 2048 and x["compile"]
                  and "tokens_per_s" in x), None)
        if r is None:
            out.append(f"- {model} seq 2048 compile: not measured")
            continue
        mfu_ok = "met" if r["mfu"] >= TARGET_MFU else "missed"
        out.append(f"- {model} seq 2048 bf16 compile: MFU {r['mfu']:.1%} (target >= {TARGET_MFU:.0%}: {mfu_ok})"
                   + (f"; banyan/HF {r['ratio_vs_hf']:.2f}x (target >= {TARGET_HF_RATIO}x: "
                      f"{'met' if r['ratio_vs_hf'] >= TARGET_HF_RATIO else 'missed'})" if r.get("ratio_vs_hf") else ""))
    val = (report["parts"].get("validate") or {}).get("result") or {}
    for run in val.get("runs", []):
        if "error" in run:
            continue
        got = {q["quantity"]: q["ratio"] for q in run["rows"]}
        mem, step = got.get("peak allocated (CUDA)"), got.get("step time")
        shape = f"{run['model']} {run['micro_batch']}x{run['seq']}"
        if mem is not None:
            out.append(f"- plan --validate {shape}: peak memory measured/predicted {mem:.3f} (within "
                       f"{TARGET_MEM:.0%}: {'met' if abs(mem - 1) <= TARGET_MEM else 'missed'})")
        if step is not None:
            out.append(f"- plan --validate {shape}: step time measured/predicted {step:.3f} (within "
                       f"{TARGET_TIME:.0%}: {'met' if abs(step - 1) <= TARGET_TIME else 'missed'})")
    return out or ["- nothing measured"]


def markdown(report: dict) -> str:
    p = report["parts"]
    env = (p.get("env") or {}).get("result") or {}
    head = [f"# banyan gpu-check ({report['mode']}), {report['started']}, {report.get('seconds', 0):.0f} s", "",
            f"torch {env.get('torch')} (CUDA {env.get('cuda')}), Python {env.get('python')}, device "
            f"{env.get('device', 'cpu')}, transformers {env.get('transformers')}, bitsandbytes "
            f"{env.get('bitsandbytes')}, torchao {env.get('torchao')}", ""]
    body = head + _parts(report) + ["", "## Targets (issue 15)"] + targets(report)
    for name, title, fn in (("pytest", "pytest -m gpu", _pytest), ("bench", "bench train vs HF transformers", _bench),
                            ("validate", "plan --calibrate / --validate", _validate), ("comm", "bench comm", _comm)):
        if name in p:
            body += ["", f"## {title}"] + fn(p[name]["result"])
            if p[name]["status"] != "ok":
                body += ["", f"{name} {p[name]['status']} (rc {p[name]['rc']}); last lines:", "```",
                         p[name].get("log_tail", "")[-1200:], "```"]
    return "\n".join(body) + "\n"
