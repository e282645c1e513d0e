"""`make demo`: prepare the embedded Shakespeare corpus, pretrain the default tiny Llama on CPU,
print val loss / bits per byte, write plots and print a sample, then chat-tune it (SFT on the
embedded shakespeare-dialogue conversations), check it against the pretrained model on held-out
plays and print a two-turn chat, align it with DPO on preference pairs from the plays, export it for
transformers and score it. `--quick` is the CI-sized version."""

from __future__ import annotations

import argparse
import copy
import shutil
import time
from pathlib import Path

from banyan.config import RunConfig, load_config


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="banyan-demo", description=__doc__)
    ap.add_argument("--quick", action="store_true", help="a ~1 minute version (CI)")
    ap.add_argument("--data", default="data/shakespeare", help="prepared data folder (made if missing)")
    ap.add_argument("--out", default="", help="run folder (default runs/demo or runs/demo-quick; replaced)")
    ap.add_argument("--train_minutes", type=float, default=5.0,
                    help="time for pretraining + SFT together; steps are fitted to this machine's measured speed")
    args = ap.parse_args(argv)
    t0 = time.time()

    from banyan.data.prepare import PrepareConfig, prepare

    data = Path(args.data)
    wanted = PrepareConfig(out=str(data), overwrite=True)  # re-made when the tokenizer spec changed
    if _prepared_spec(data) != wanted.tokenizer:
        print(f"[1/6] preparing the embedded Shakespeare corpus ({wanted.tokenizer}) into {data} ...")
        prepare(wanted)
    else:
        print(f"[1/6] using prepared data in {data}")

    out = Path(args.out or ("runs/demo-quick" if args.quick else "runs/demo"))
    if out.exists():
        shutil.rmtree(out)  # the demo's own folder; real runs refuse to overwrite
    overrides = {"data": {"path": str(data)}, "out": str(out)}
    if args.quick:
        overrides["train"] = {"max_steps": 40, "eval_every": 20, "eval_batches": 4, "log_every": 5}
        overrides["checkpoint"] = {"every": 20}
        overrides["optim"] = {"warmup_steps": 5}
    cfg: RunConfig = load_config(RunConfig, preset="shakespeare", overrides=overrides)
    sft_steps = 15
    if not args.quick:
        cfg.train.max_steps, sft_steps = fit_steps(cfg, args.train_minutes * 60)
    print(f"[2/6] pretraining {cfg.model.arch} ({cfg.model.n_layer} layers, width {cfg.model.d_model}) "
          f"for {cfg.train.max_steps} steps on CPU ...")
    from banyan.train.pretrain import train

    summary = train(cfg)

    print("[3/6] sampling from the final checkpoint:")
    from banyan.parallel.env import resolve_device
    from banyan.train.sample import generate_text, load_for_inference

    device = resolve_device("cpu")
    model, tok, _ = load_for_inference(out, device)
    print("-" * 60)
    print(generate_text(model, tok, "ROMEO:", 160, 0.8, 50, 1.0, 1337, device))
    print("-" * 60)
    print(f"val loss {summary['val_loss']:.4f} nats/token, val bpb {summary['val_bpb']:.4f} bits/byte; "
          f"plots: {out / 'plots'}")
    sft_demo(out, Path(f"{out}-sft"), args.quick, sft_steps)
    dpo_demo(Path(f"{out}-sft"), Path(f"{out}-dpo"), args.quick, 6 if args.quick else 20)
    publish_demo(Path(f"{out}-dpo"), data, args.quick)
    print(f"total {time.time() - t0:.0f}s")
    return 0


def publish_demo(run: Path, data: Path, quick: bool) -> None:
    """[6/6] export the chat model as a transformers folder, reload it with transformers, score both the same way."""
    from banyan.config import LogConfig
    from banyan.eval.run import EvalConfig, evaluate, print_table
    from banyan.export.hf import ExportHFConfig, export_hf

    hf_dir = Path(f"{run}-hf")
    print(f"[6/6] exporting {run} as a Hugging Face folder {hf_dir} and reloading it with transformers ...")
    export_hf(ExportHFConfig(src=str(run), out=str(hf_dir), overwrite=True))
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok, model = AutoTokenizer.from_pretrained(hf_dir), AutoModelForCausalLM.from_pretrained(hf_dir)
    text = tok.apply_chat_template([{"role": "user", "content": "What light through yonder window breaks?"}],
                                   add_generation_prompt=True, tokenize=False)  # the template exported with it
    ids = tok(text, return_tensors="pt", add_special_tokens=False)["input_ids"]
    out = model.generate(ids, max_new_tokens=40, do_sample=False)  # stops at <|end|> (generation_config.json)
    print(f"transformers, greedy: {tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True).strip()}")
    log = LogConfig(tensorboard=False, plots=False, progress=False)
    for name, model_path in (("banyan run", run), ("transformers folder", hf_dir)):
        results = evaluate(EvalConfig(model=str(model_path), tasks=f"bpb:{data}", limit=4 if quick else 16,
                                      device="cpu", log=log))
        print_table(results, f"banyan eval: {name} ({model_path})")


def fit_steps(cfg: RunConfig, seconds: float) -> tuple[int, int]:
    """(pretraining steps, SFT steps) that fit `seconds` on this machine: 2/3 pretraining, 1/3 SFT.

    Measured with `banyan bench train`'s own step (3 timed steps after 2 warm-ups: the first two steps
    still grow the heap: ~75k and ~20k page faults, up to 2x a settled step at the preset) because
    CPUs differ by 2-3x (bf16 units or not, core speed); at most the preset's 700 pretraining and 200 SFT
    steps."""
    import dataclasses

    from banyan.train.bench import BenchTrainConfig, bench

    probe = BenchTrainConfig(**{f.name: copy.deepcopy(getattr(cfg, f.name)) for f in dataclasses.fields(RunConfig)},
                             warmup=2, steps=3)
    probe.model.vocab_size = 4096  # the demo's BPE vocabulary
    step_s = bench(probe)["ms_per_step"] / 1000
    pre = max(100, min(cfg.train.max_steps, int(seconds * 2 / 3 / step_s) // 50 * 50))
    sft = max(50, min(200, int(seconds / 3 / (1.2 * step_s)) // 10 * 10))  # SFT windows are 256, not 128
    print(f"      this machine: {step_s:.2f} s per training step -> {pre} pretraining and {sft} SFT steps "
          f"fit --train_minutes {seconds / 60:g}")
    return pre, sft


def sft_demo(src: Path, out: Path, quick: bool, steps: int) -> None:
    """[4/6] SFT on shakespeare-dialogue from the pretrained run; compare on held-out plays; chat twice."""
    from banyan.train.sft import SFTConfig, SFTTask, train

    if out.exists():
        shutil.rmtree(out)
    cfg: SFTConfig = load_config(SFTConfig, overrides={
        "init": str(src), "out": str(out),
        "sft": {"data": "shakespeare-dialogue", "end_prompts": 0, "max_conversations": 1000 if quick else 0,
                "max_val_conversations": 200 if quick else 1000},
        "train": {"max_steps": steps, "seq_len": 256, "micro_batch": 8, "dtype": "auto", "eval_every": 0,
                  "eval_batches": 4 if quick else 16, "log_every": 5, "device": "cpu"},
        "optim": {"name": "muon", "lr": 2e-3, "muon_lr": 0.01, "warmup_steps": 5},
        "checkpoint": {"every": 0}})
    print(f"[4/6] chat-tuning (SFT) on shakespeare-dialogue for {steps} steps ...")
    t0 = time.time()
    task = SFTTask(cfg)
    train(cfg, task)
    print(f"SFT took {time.time() - t0:.0f}s")
    held_out_check(src, task, 10 if quick else 50)
    chat_demo(out)


def dpo_demo(src: Path, out: Path, quick: bool, steps: int) -> None:
    """[5/6] DPO from the SFT model on shakespeare-pairs (the real next speech against one from another
    scene); held-out preference accuracy (log p(chosen) > log p(rejected)) of the SFT and the DPO model."""
    import torch

    from banyan.train.dpo import DPOConfig, DPOTask
    from banyan.train.reference import score_pairs
    from banyan.train.sample import load_for_inference
    from banyan.train.trainer import Trainer

    if out.exists():
        shutil.rmtree(out)
    n_val = 48 if quick else 200
    cfg: DPOConfig = load_config(DPOConfig, overrides={
        "init": str(src), "out": str(out),
        "dpo": {"data": "shakespeare-pairs", "max_pairs": 400 if quick else 3000, "max_val_pairs": n_val, "beta": 0.1},
        "train": {"max_steps": steps, "seq_len": 256, "micro_batch": 8, "dtype": "auto", "eval_every": 0,
                  "eval_batches": n_val // 8, "log_every": 5, "device": "cpu"},
        "optim": {"name": "adamw", "lr": 5e-5, "warmup_steps": 3}, "checkpoint": {"every": 0}})
    print(f"[5/6] aligning (DPO) on shakespeare-pairs for {steps} steps ...")
    task = DPOTask(cfg)
    summary = Trainer(cfg, task, stage="dpo").run()
    acc = {}
    for name, run in (("SFT", src), ("DPO", out)):
        model = load_for_inference(run, task.env.device)[0]
        with torch.no_grad():
            lp = score_pairs(model, task.val_data, 8, 0, torch.autocast("cpu", enabled=False), task.env.device)
        acc[name] = (lp[:, 0] > lp[:, 1]).float().mean().item()
    print(f"held-out plays, {len(task.val_data)} pairs: the model prefers the real reply (higher log-prob) on "
          f"{acc['SFT']:.0%} (SFT) -> {acc['DPO']:.0%} (DPO); DPO implicit-reward accuracy "
          f"{summary['val_reward_accuracy']:.0%}, margin {summary['val_margin']:.3f}")


def held_out_check(src: Path, task, k: int) -> None:
    """Assistant-token val loss of the pretrained vs the SFT model on the same held-out plays (the SFT
    run's task: its encoded val conversations), and the SFT model's end-of-turn rate on k held-out prompts."""
    from banyan.eval.lm import evaluate_lm
    from banyan.train.sample import load_for_inference

    task.cfg.sft.end_tokens = 200
    losses = {}
    for name, run in (("pretrained", src), ("sft", Path(task.cfg.out))):
        model = load_for_inference(run, task.env.device)[0]
        losses[name] = evaluate_lm(model, task.val_batches(), task.loss, task.token_bytes)
    rate = task.end_rate(model, k)
    print(f"held-out plays, assistant tokens only ({losses['sft']['val_tokens']} tokens): val loss pretrained "
          f"{losses['pretrained']['val_loss']:.4f} -> SFT {losses['sft']['val_loss']:.4f}; SFT model ends its "
          f"turn with <|end|> within 200 tokens on {rate:.0%} of {k} held-out prompts")


def chat_demo(run: Path) -> None:
    """A two-turn chat with the SFT model: the chat template, KV-cache generation, stop at <|end|>."""
    import torch

    from banyan.data.chat import Turn
    from banyan.data.chat_template import END_OF_TURN, encode_prompt, load_chat_template
    from banyan.train import checkpoint as ckpt
    from banyan.train.sample import load_for_inference

    model, tok, _ = load_for_inference(run, torch.device("cpu"))
    template = load_chat_template(ckpt.resolve_checkpoint(run))
    end = tok.special_id(END_OF_TURN)
    conv = [Turn("system", "You are ROMEO in Romeo and Juliet.")]
    g = torch.Generator().manual_seed(1337)
    print("-" * 60)
    for question in ("What light through yonder window breaks?", "Wilt thou be gone? It is not yet near day."):
        conv.append(Turn("user", question))
        ids = encode_prompt(tok, template, conv)
        if len(ids) > model.config.max_seq_len - 64:  # a long history: keep the system prompt and this question
            conv = [conv[0], conv[-1]]
            ids = encode_prompt(tok, template, conv)
        new = min(120, model.config.max_seq_len - len(ids))
        out = model.generate(torch.tensor([ids]), new, temperature=0.8, top_k=50, eos_id=end, generator=g)
        answer = tok.decode([i for i in out[0, len(ids):].tolist() if i != end]).strip()
        conv.append(Turn("assistant", answer))
        print(f"user: {question}\nROMEO: {answer}\n")
    print("-" * 60)


def _prepared_spec(data: Path) -> str | None:
    """The tokenizer spec a prepared folder was made with (None when not prepared)."""
    import json

    try:
        return json.loads((data / "meta.json").read_text())["tokenizer"]["spec"]
    except (OSError, ValueError, KeyError):
        return None


if __name__ == "__main__":
    raise SystemExit(main())
