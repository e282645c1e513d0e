"""`make gpu-check` (python -m banyan.bench.gpu_check): prove the GPU path in one command, under 8 minutes.

Parts, each in its own process with a time cap (seconds, `--cap PART=S` changes one); a part that
fails or runs out of time is recorded (status, exit code, the tail of its log) and the next runs:

    env       20   versions, device
    pytest   135   `pytest -m gpu tests/gpu` (bf16 vs fp32, fused AdamW, compile, SDPA kernels, NCCL
                   DDP/FSDP2 at world size 1, 8-bit AdamW state, KV cache, chunked loss)
    bench    175   `banyan bench train` x HF transformers at the same shapes (banyan.bench.gpu_parts)
    validate  75   `plan --calibrate`, `plan --validate` llama-125m / llama-500m
    comm      40   `banyan bench comm --nproc 1` (NCCL and the P2P report start and answer)

That is 445 s, leaving ~35 s for the install (scripts/gpu_check.sh) inside 8 minutes. Results:
OUT/gpu-check.json (everything), OUT/gpu-check.md (a summary with the targets of issue 15) and
OUT/gpu-check.log (every part's output), with OUT = $OUT, else ./gpu-check. `--cpu` runs the same
parts on the CPU with tiny shapes (the gpu tests then skip): the orchestration's own test.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path

from banyan.io import atomic_write_json, atomic_write_text

CAPS = {"env": 20, "pytest": 135, "bench": 175, "validate": 75, "comm": 40}
CPU_CAPS = {"env": 60, "pytest": 120, "bench": 120, "validate": 120, "comm": 90}
REPO = Path(__file__).resolve().parents[2]


def part_command(part: str, work: Path, cpu: bool) -> list[str]:
    py = sys.executable
    if part == "pytest":
        return [py, "-m", "pytest", "-q", "-m", "gpu", str(REPO / "tests" / "gpu"), "-p", "no:cacheprovider",
                "-o", "addopts=", "--junitxml", str(work / "junit.xml")]
    if part == "comm":
        return [py, "-m", "banyan", "bench", "comm", "--nproc", "1", "--max_mb", "4" if cpu else "64",
                "--timeout_s", "20", "--time_budget_s", "0.2", "--out", str(work / "comm"), "--device", "cpu" if cpu else "auto"]
    return [py, "-m", "banyan.bench.gpu_check", "--worker", part, "--out", str(work / f"{part}.json")] + \
        (["--cpu"] if cpu else [])


def run_capped(cmd: list[str], cap: float, log: Path, env: dict | None = None) -> tuple[str, int | None, float]:
    """Run `cmd` in its own process group for at most `cap` seconds; (status, exit code, seconds)."""
    t0 = time.perf_counter()
    with open(log, "wb") as f:
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, start_new_session=True, env=env,
                                cwd=str(REPO))
        try:
            rc = proc.wait(timeout=cap)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # the part and whatever it started (torchrun ranks)
            proc.wait()
            return "timeout", None, time.perf_counter() - t0
    return ("ok" if rc == 0 else "failed"), rc, time.perf_counter() - t0


def parse_junit(path: Path) -> dict:
    """Outcome counts and one row per test from pytest's JUnit XML."""
    if not path.is_file():
        return {}
    tests = []
    for case in ET.parse(path).getroot().iter("testcase"):
        outcome, message = "passed", ""
        for tag in ("failure", "error", "skipped"):
            el = case.find(tag)
            if el is not None:
                outcome = {"failure": "failed", "error": "error", "skipped": "skipped"}[tag]
                message = (el.get("message") or "").splitlines()[0][:300] if el.get("message") else ""
        tests.append({"test": f"{case.get('classname', '').rsplit('.', 1)[-1]}::{case.get('name')}",
                      "outcome": outcome, "seconds": float(case.get("time") or 0), "message": message})
    counts = {k: sum(t["outcome"] == k for t in tests) for k in ("passed", "failed", "error", "skipped")}
    return {"counts": counts, "tests": tests}


def collect(part: str, work: Path) -> object:
    from banyan.bench.gpu_parts import read_json

    if part == "pytest":
        return parse_junit(work / "junit.xml")
    if part == "comm":
        return read_json(work / "comm" / "comm.json")
    return read_json(work / f"{part}.json")


def run_all(out: Path, parts: list[str], cpu: bool, caps: dict[str, float]) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    report: dict = {"started": time.strftime("%Y-%m-%d %H:%M:%S"), "mode": "cpu" if cpu else "cuda", "parts": {}}
    logs = []
    env = dict(os.environ, PYTHONUNBUFFERED="1", PYTHONPATH=os.pathsep.join(
        [str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])]))
    t_all = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
        work = Path(tmp)
        for part in parts:
            log = work / f"{part}.log"
            cmd = part_command(part, work, cpu)
            status, rc, secs = run_capped(cmd, caps[part], log, env)
            text = log.read_text(encoding="utf-8", errors="replace")
            entry = {"status": status, "rc": rc, "seconds": round(secs, 1), "cap_s": caps[part],
                     "command": " ".join(cmd), "result": collect(part, work)}
            if status != "ok":
                entry["log_tail"] = text[-2000:]
            report["parts"][part] = entry
            logs.append(f"===== {part}: {status} (rc {rc}, {secs:.1f} s of {caps[part]} s)\n{text}")
            print(f"gpu-check: {part:<9} {status:<8} {secs:6.1f} s", flush=True)
            atomic_write_json(out / "gpu-check.json", report, indent=1, default=str)
    report["seconds"] = round(time.perf_counter() - t_all, 1)
    from banyan.bench.gpu_report import markdown

    atomic_write_json(out / "gpu-check.json", report, indent=1, default=str)
    atomic_write_text(out / "gpu-check.md", markdown(report))
    atomic_write_text(out / "gpu-check.log", "\n".join(logs))
    return report


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m banyan.bench.gpu_check", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="", help="results folder (default: $OUT, else ./gpu-check)")
    ap.add_argument("--parts", default=",".join(CAPS), help=f"comma list of {', '.join(CAPS)}")
    ap.add_argument("--cpu", action="store_true", help="tiny shapes on the CPU (tests the orchestration)")
    ap.add_argument("--cap", action="append", default=[], metavar="PART=S", help="time cap of a part, seconds")
    ap.add_argument("--worker", default="", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.worker:
        from banyan.bench.gpu_parts import run_part

        return run_part(a.worker, a.out, a.cpu)
    parts = [p.strip() for p in a.parts.split(",") if p.strip()]
    bad = [p for p in parts if p not in CAPS]
    if bad:
        ap.error(f"--parts: unknown {', '.join(bad)}; expected some of {', '.join(CAPS)}")
    caps = dict(CPU_CAPS if a.cpu else CAPS)
    for item in a.cap:
        name, _, secs = item.partition("=")
        if name not in caps or not secs.replace(".", "", 1).isdigit():
            ap.error(f"--cap '{item}': expected PART=SECONDS with PART one of {', '.join(caps)}")
        caps[name] = float(secs)
    out = Path(a.out or os.environ.get("OUT") or "gpu-check")
    report = run_all(out, parts, a.cpu, caps)
    print(f"gpu-check: {report['seconds']:.0f} s; wrote {out / 'gpu-check.md'}, gpu-check.json, gpu-check.log")
    print(json.dumps({p: e["status"] for p, e in report["parts"].items()}))
    return 0 if all(e["status"] == "ok" for e in report["parts"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
