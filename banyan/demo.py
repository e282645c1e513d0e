"""`make demo`: prepare the embedded Shakespeare corpus, pretrain the default tiny Llama on CPU,
print val loss / bits per byte, write plots and print a sample. `--quick` is the CI-sized version."""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path

from banyan.config import RunConfig, load_config


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="banyan-demo", description=__doc__)
    ap.add_argument("--quick", action="store_true", help="a ~1 minute version (CI)")
    ap.add_argument("--data", default="data/shakespeare", help="prepared data folder (made if missing)")
    ap.add_argument("--out", default="", help="run folder (default runs/demo or runs/demo-quick; replaced)")
    args = ap.parse_args(argv)
    t0 = time.time()

    from banyan.data.prepare import PrepareConfig, prepare

    data = Path(args.data)
    wanted = PrepareConfig(out=str(data))
    if _prepared_spec(data) != wanted.tokenizer:
        print(f"[1/3] preparing the embedded Shakespeare corpus ({wanted.tokenizer}) into {data} ...")
        prepare(wanted)
    else:
        print(f"[1/3] using prepared data in {data}")

    out = Path(args.out or ("runs/demo-quick" if args.quick else "runs/demo"))
    if out.exists():
        shutil.rmtree(out)  # the demo's own folder; real runs refuse to overwrite
    overrides = {"data": {"path": str(data)}, "out": str(out)}
    if args.quick:
        overrides["train"] = {"max_steps": 40, "eval_every": 20, "eval_batches": 4, "log_every": 5}
        overrides["checkpoint"] = {"every": 20}
        overrides["optim"] = {"warmup_steps": 5}
    cfg: RunConfig = load_config(RunConfig, preset="shakespeare", overrides=overrides)
    print(f"[2/3] pretraining {cfg.model.arch} ({cfg.model.n_layer} layers, width {cfg.model.d_model}) "
          f"for {cfg.train.max_steps} steps on CPU ...")
    from banyan.train.pretrain import train

    summary = train(cfg)

    print("[3/3] sampling from the final checkpoint:")
    from banyan.parallel.env import resolve_device
    from banyan.train.sample import generate_text, load_for_inference

    device = resolve_device("cpu")
    model, tok, _ = load_for_inference(out, device)
    print("-" * 60)
    print(generate_text(model, tok, "ROMEO:", 160, 0.8, 50, 1.0, 1337, device))
    print("-" * 60)
    print(f"val loss {summary['val_loss']:.4f} nats/token, val bpb {summary['val_bpb']:.4f} bits/byte; "
          f"plots: {out / 'plots'}; total {time.time() - t0:.0f}s")
    return 0


def _prepared_spec(data: Path) -> str | None:
    """The tokenizer spec a prepared folder was made with (None when not prepared)."""
    import json

    try:
        return json.loads((data / "meta.json").read_text())["tokenizer"]["spec"]
    except (OSError, ValueError, KeyError):
        return None


if __name__ == "__main__":
    raise SystemExit(main())
