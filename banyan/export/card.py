"""The README.md model card of an exported model: Hub front matter plus what the run knows about itself.

Front matter (YAML, read by the Hugging Face Hub): license, library_name, pipeline_tag, tags. Body:
architecture, parameter count, training data, tokens seen, validation bits per byte (from trainer.json,
summary.json, metrics.jsonl when present), the `banyan eval` results recorded for the checkpoint
(banyan.eval.record) and the checkpoint's training config as TOML.
"""

from __future__ import annotations

import json

from banyan.export.source import Source


def parameter_count(model) -> int:
    """Unique parameters (a tied embedding and head count once)."""
    return sum(p.numel() for p in model.parameters())


def _human(n: float) -> str:
    for unit, scale in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f}{unit}"
    return str(int(n))


def _front_matter(source: Source, license_id: str) -> str:
    arch = source.cfg.model.arch
    tags = ["banyan", arch, "causal-lm", "text-generation"]
    if (source.tokenizer_config or {}).get("chat_template"):
        tags.append("conversational")
    lines = ["---", f"license: {json.dumps(license_id)}", "library_name: transformers",
             "pipeline_tag: text-generation", "tags:"] + [f"- {t}" for t in tags] + ["---"]
    return "\n".join(lines)


def _facts(source: Source) -> list[tuple[str, str]]:
    m = source.cfg.model
    arch = (f"Llama (RMSNorm, RoPE theta {m.rope_theta:g}, SwiGLU)" if m.arch == "llama"
            else "GPT-2 (LayerNorm, learned positions, GELU)")
    heads = f"{m.n_head} query / {m.n_kv_head} key-value" if m.n_kv_head != m.n_head else str(m.n_head)
    rows = [("architecture", arch), ("layers", str(m.n_layer)), ("width (d_model)", str(m.d_model)),
            ("attention heads", heads), ("MLP width", str(m.d_ff)), ("vocabulary", str(m.vocab_size)),
            ("context length", str(m.max_seq_len)), ("tied embedding / head", "yes" if m.tie_embeddings else "no")]
    n = parameter_count(source.model)
    rows.append(("parameters", f"{n:,} ({_human(n)})"))
    rows.append(("training data", f"`{source.cfg.data.path}`"))
    if "step" in source.trainer:
        rows.append(("optimizer steps", f"{source.trainer['step']:,}"))
    if "tokens" in source.trainer:
        rows.append(("tokens seen", f"{source.trainer['tokens']:,} ({_human(source.trainer['tokens'])})"))
    bpb = source.val_bpb()
    if bpb is not None:
        rows.append(("validation bits per byte", f"{bpb:.4f}"))
    return rows


def eval_section(source: Source) -> str:
    """'## Evaluation' with a table of what `banyan eval` recorded for this checkpoint ('' when nothing)."""
    from banyan.eval.record import read_results

    results = read_results(source.run_dir, source.ckpt)
    rows = [f"| `{task}` | {metric} | {value:.4f} | {int(r.get('items', 0)):,} |"
            for task, r in results.items() for metric, value in r.items()
            if metric not in ("items", "limit") and isinstance(value, (int, float))]
    if not rows:
        return ""
    head = ["## Evaluation", "", f"Measured with `banyan eval` on checkpoint `{source.ckpt.name}`:", "",
            "| task | metric | value | items |", "|---|---|---|---|"]
    return "\n".join(head + rows) + "\n\n"


def model_card(source: Source, license_id: str, dtype: str) -> str:
    """The whole README.md text."""
    name = source.run_dir.name if source.run_dir else source.ckpt.name
    table = "\n".join(["| | |", "|---|---|"] + [f"| {k} | {v} |" for k, v in _facts(source)])
    config = (source.ckpt / "config.toml").read_text(encoding="utf-8").strip()
    chat = (source.tokenizer_config or {}).get("chat_template")
    usage = ("messages = [{\"role\": \"user\", \"content\": \"Hello!\"}]\n"
             "ids = tok.apply_chat_template(messages, add_generation_prompt=True, return_tensors=\"pt\")\n"
             if chat else "ids = tok(\"Once upon a time\", return_tensors=\"pt\").input_ids\n")
    return f"""{_front_matter(source, license_id)}

# {name}

A causal language model trained with banyan (`banyan-lm`, a toolkit for Llama-style LMs), exported from
checkpoint `{source.ckpt.name}` in {dtype}.

{table}

## Use

```python
from transformers import AutoModelForCausalLM, AutoTokenizer

tok = AutoTokenizer.from_pretrained("PATH")
model = AutoModelForCausalLM.from_pretrained("PATH")
{usage}print(tok.decode(model.generate(ids, max_new_tokens=50)[0]))
```

{eval_section(source)}## Training config

```toml
{config}
```
"""
