"""`banyan sft`: supervised fine-tuning on conversations, a Task on the shared Trainer.

    banyan sft --init runs/demo --sft.data shakespeare-dialogue --out runs/sft
    banyan sft --init runs/demo --sft.data chats.jsonl --sft.show 3      # see the trained mask, then exit

    setup       tokenizer + chat template from the --init checkpoint (tokenizer.json,
                tokenizer_config.json; the default template is written when the source has none),
                conversations read (banyan.data.chat) and encoded ONCE into next-token examples
                (banyan.data.packing): labels only on assistant content + the <|end|> closing each
                assistant turn; longer than seq_len: cut from the end; nothing trained left: dropped
    batch       window rows of a seeded per-epoch shuffle, packed (positions and attention reset at
                every conversation) or right-padded: a pure function of (step, micro, rank, world, seed)
    loss        summed cross-entropy over trained labels (the Trainer divides by their global count)
    evaluate    val loss / bpb on held-out conversations (assistant tokens only), val_end_rate (share of
                K held-out prompts whose generation emits <|end|> within sft.end_tokens), packing
                efficiency (trained tokens / positions served), truncated / dropped counts
    sample      the reply to a held-out prompt, rendered with the chat template, stopped at <|end|>
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch

from banyan.config import RunConfig, parse_cli
from banyan.errors import CheckpointError
from banyan.parallel.env import DistEnv
from banyan.train.lm import LMTask
from banyan.train.trainer import Trainer


@dataclass
class SFTSection:
    """Supervised fine-tuning: the conversations and how they become batches."""

    data: str = "shakespeare-dialogue"
    """Conversations: a .jsonl/.json/.parquet file or folder, hf:NAME, or shakespeare-dialogue (embedded)."""
    format: str = "auto"
    """Record format: auto (from the first record), alpaca, sharegpt, messages, prompt_completion."""
    hf_config: str = ""
    """hf: sources: the dataset config name."""
    hf_data_files: str = ""
    """hf: packaged builders (hf:json, hf:parquet): the data files."""
    split: str = "train"
    """hf: sources: the training split (shakespeare-dialogue: always its train plays)."""
    val_split: str = ""
    """Held-out conversations from the source's own split (hf split name, or a second file/folder);
    empty: shakespeare-dialogue's val plays, else `val_fraction` of the training records."""
    val_fraction: float = 0.05
    """Share of the records held out for validation when the source has no val split (seeded)."""
    max_val_conversations: int = 2000
    """At most this many held-out conversations (0: all)."""
    max_conversations: int = 0
    """Read at most this many training records (0: all); for quick runs."""
    skip_invalid: bool = False
    """Skip (and count) malformed records instead of stopping at the first one."""
    packing: bool = True
    """Pack conversations into seq_len windows (attention and positions reset per conversation);
    false: one conversation per row, right-padded."""
    system_prompt: str = ""
    """System prompt added to conversations that have none (empty: none added)."""
    show: int = 0
    """Print this many rendered training examples with the trained tokens marked, then exit."""
    end_prompts: int = 16
    """val_end_rate: held-out prompts generated from at each evaluation (0: off)."""
    end_tokens: int = 200
    """val_end_rate: a generation counts when it emits <|end|> within this many tokens."""
    temperature: float = 0.8
    """Sampling temperature for val_end_rate and samples (0: greedy)."""


@dataclass
class SFTConfig(RunConfig):
    """A supervised fine-tuning run: `banyan sft` takes this (the model comes from --init)."""

    sft: SFTSection = field(default_factory=SFTSection)
    out: str = "runs/sft"
    """Output folder for config.toml, metrics, plots and checkpoints."""


# ----------------------------------------------------------------------------- tokenizer and data
def tokenizer_source(cfg: SFTConfig) -> tuple[list[Path], str]:
    """(tokenizer.json [+ tokenizer_config.json] to use, what they came from): the --init checkpoint's,
    else the prepared data folder's (data.path) when starting from a random init."""
    from banyan.train.init_from import init_checkpoint, init_tokenizer_files

    if cfg.init:
        ck = init_checkpoint(cfg.init)
        files, where = init_tokenizer_files(ck), f"--init checkpoint {ck}"
    else:
        folder = Path(cfg.data.path)
        files = [p for p in (folder / "tokenizer.json", folder / "tokenizer_config.json") if p.is_file()]
        where = f"data.path {folder}"
    if not files or files[0].name != "tokenizer.json":
        raise CheckpointError(f"{where} has no tokenizer.json (SFT needs the tokenizer the model was trained with)")
    return files, where


def load_chat_tokenizer(cfg: SFTConfig):
    """(tokenizer, chat template, source tokenizer_config.json or None)."""
    from banyan.data.chat_template import DEFAULT_CHAT_TEMPLATE, check_template, load_chat_template
    from banyan.data.tokenizer import load_tokenizer

    files, _ = tokenizer_source(cfg)
    tok = load_tokenizer(files[0])
    config = files[1] if len(files) > 1 else None
    template = load_chat_template(config) if config else DEFAULT_CHAT_TEMPLATE
    check_template(tok, template)
    return tok, template, config


def read_conversations(cfg: SFTConfig):
    """(train conversations, val conversations, ChatStats of the training source)."""
    from banyan.data.chat import DIALOGUE_SOURCE, Turn, load_conversations

    s = cfg.sft
    common = dict(format=s.format, hf_config=s.hf_config, hf_data_files=s.hf_data_files, skip_invalid=s.skip_invalid)
    train, stats = load_conversations(s.data, split=s.split, max_conversations=s.max_conversations, **common)
    if s.val_split or s.data == DIALOGUE_SOURCE:
        if s.data.startswith("hf:") or s.data == DIALOGUE_SOURCE:
            val, _ = load_conversations(s.data, split=s.val_split or "val", max_conversations=s.max_val_conversations,
                                        **common)
        else:
            val, _ = load_conversations(s.val_split, max_conversations=s.max_val_conversations, **common)
    else:
        n_val = max(1, int(round(len(train) * s.val_fraction))) if len(train) > 1 else 0
        perm = torch.randperm(len(train), generator=torch.Generator().manual_seed(cfg.train.seed)).tolist()
        held = set(perm[:n_val])
        val = [c for i, c in enumerate(train) if i in held][:s.max_val_conversations or None]
        train = [c for i, c in enumerate(train) if i not in held]
    if s.system_prompt:
        def add(conv):
            return conv if conv[0].role == "system" else [Turn("system", s.system_prompt), *conv]
        train, val = [add(c) for c in train], [add(c) for c in val]
    return train, val, stats


def encode_all(tok, template, convs, seq_len: int):
    """-> (examples, n_truncated, n_dropped): every conversation encoded once (banyan.data.packing)."""
    from banyan.data.chat_template import encode_conversation
    from banyan.data.packing import to_example

    examples, truncated, dropped = [], 0, 0
    for conv in convs:
        ex, cut = to_example(*encode_conversation(tok, template, conv), seq_len)
        truncated += cut
        if ex is None:
            dropped += 1
        else:
            examples.append(ex)
    return examples, truncated, dropped


def prompt_of(conv) -> list:
    """The turns before the first assistant turn (what a held-out prompt asks)."""
    first = next(i for i, t in enumerate(conv) if t.role == "assistant")
    return conv[:first]


class SFTTask(LMTask):
    """Next-token loss on the assistant turns of chat conversations (see the module docstring)."""

    name = "sft"

    def setup(self, cfg: SFTConfig, env: DistEnv) -> None:
        from banyan.data.packing import WindowStream

        self.env = env
        self.tokenizer, self.template, self.source_config = load_chat_tokenizer(cfg)
        if cfg.model.vocab_size < self.tokenizer.vocab_size:
            raise CheckpointError(f"the model has {cfg.model.vocab_size} token rows but the tokenizer has "
                                  f"{self.tokenizer.vocab_size} (model and tokenizer from different runs?)")
        self.token_bytes = torch.as_tensor(self.tokenizer.token_bytes(), dtype=torch.long, device=env.device)
        self.end_id = self.tokenizer.special_id("<|end|>")
        train, self.val_convs, self.stats = read_conversations(cfg)
        T = cfg.train.seq_len
        self.examples, self.truncated, self.dropped = encode_all(self.tokenizer, self.template, train, T)
        self.val_examples, _, _ = encode_all(self.tokenizer, self.template, self.val_convs, T)
        if not self.examples:
            from banyan.data import DataError

            raise DataError(f"sft.data {cfg.sft.data!r}: no conversation keeps a trained token within "
                            f"train.seq_len {T} ({self.dropped} dropped)")
        lengths = [len(e) for e in self.examples]
        self.stream = WindowStream(lengths, T, cfg.train.seed, cfg.sft.packing)
        self.val_stream = WindowStream([len(e) for e in self.val_examples] or [1], T, 0, cfg.sft.packing,
                                       shuffle=False)
        self.served = {"trained": 0, "positions": 0}
        if env.is_main:
            self.write_tokenizer(Path(cfg.out) / "tokenizer")
            print(f"banyan sft: {len(self.examples)} train / {len(self.val_examples)} val conversations "
                  f"from {cfg.sft.data}; {self.truncated} truncated to {T + 1} tokens, {self.dropped} dropped "
                  f"(no trained token left); {self.stats.skipped_invalid} invalid records skipped")

    def write_tokenizer(self, folder: Path) -> None:
        """The run's own tokenizer.json + tokenizer_config.json (copied into every checkpoint)."""
        from banyan.data.chat_template import write_tokenizer_config
        from banyan.io import atomic_write_bytes, atomic_write_text

        folder.mkdir(parents=True, exist_ok=True)
        atomic_write_text(folder / "tokenizer.json", self.tokenizer.to_str())
        if self.source_config is not None:
            atomic_write_bytes(folder / "tokenizer_config.json", self.source_config.read_bytes())
        else:
            write_tokenizer_config(folder, self.tokenizer, self.template)

    def tokenizer_files(self) -> list[Path]:
        folder = Path(self.cfg.out) / "tokenizer"
        return [folder / "tokenizer.json", folder / "tokenizer_config.json"]

    def collate(self, windows: list[list[int]], examples) -> dict[str, torch.Tensor]:
        from banyan.data.packing import collate_packed, collate_padded

        pad = self.tokenizer.pad_id  # != end id: padding is masked by position (labels IGNORE), never by id
        if self.cfg.sft.packing:
            return collate_packed([[examples[i] for i in w] for w in windows], self.cfg.train.seq_len, pad)
        return collate_padded([examples[w[0]] for w in windows], pad)

    def batch(self, step: int, micro: int) -> dict[str, torch.Tensor]:
        B, n_micro = self.cfg.train.micro_batch, self.cfg.grad_accum(self.env.world_size)
        start = ((step * n_micro + micro) * self.env.world_size + self.env.rank) * B
        out = self.collate(self.stream.rows(start, B), self.examples)
        self.served["trained"] += int((out["labels"] != -100).sum())
        self.served["positions"] += out["input_ids"].numel()
        return out

    def val_batches(self):
        if not self.val_examples:
            return []
        B, world = self.cfg.train.micro_batch, self.env.world_size
        windows = self.val_stream.epoch(0)[self.env.rank::world]  # each rank scores its share, summed
        n = min(len(windows), B * self.cfg.train.eval_batches) if self.cfg.train.eval_batches else len(windows)
        return [self.collate(windows[i:i + B], self.val_examples) for i in range(0, n, B)]

    def evaluate(self, model) -> dict:
        from banyan.train.step import all_reduce_sum

        out = super().evaluate(model) if self.val_examples else {}
        served = all_reduce_sum(torch.tensor([self.served["trained"], self.served["positions"]], dtype=torch.float64,
                                             device=self.env.device)).tolist()
        out["packing_efficiency"] = served[0] / served[1] if served[1] else float("nan")
        if self.cfg.sft.end_prompts and self.val_convs:
            out["val_end_rate"] = self.end_rate(getattr(model, "module", model), self.cfg.sft.end_prompts)
        out.update(sft_truncated=self.truncated, sft_dropped=self.dropped)  # ints: logged, not printed
        return out

    def held_out_prompts(self, k: int) -> list[list[int]]:
        """Ids of k held-out prompts, evenly spread over the val conversations (the same on every rank)."""
        from banyan.data.chat_template import encode_prompt

        convs = self.val_convs
        picks = [convs[i * len(convs) // k] for i in range(min(k, len(convs)))]
        return [encode_prompt(self.tokenizer, self.template, prompt_of(c)) for c in picks]

    @torch.no_grad()
    def reply(self, model, ids: list[int], max_new: int, seed: int) -> list[int]:
        """Generated ids after the prompt `ids` (up to and including <|end|>, or max_new tokens)."""
        from banyan.train.step import autocast_for

        room = min(max_new, model.config.max_seq_len - len(ids))
        if room <= 0:
            return []
        g = torch.Generator(device=self.env.device).manual_seed(seed)
        x = torch.tensor([ids], dtype=torch.long, device=self.env.device)
        t = self.cfg.sft.temperature
        with autocast_for(self.env.device, self.cfg.train.dtype):
            out = model.generate(x, room, temperature=t, top_k=50 if t > 0 else None, eos_id=self.end_id, generator=g)
        return out[0, len(ids):].tolist()

    def end_rate(self, model, k: int) -> float:
        """Share of k held-out prompts whose generation emits <|end|> within sft.end_tokens tokens."""
        prompts = self.held_out_prompts(k)
        hits = [self.end_id in self.reply(model, p, self.cfg.sft.end_tokens, self.cfg.train.seed + i)
                for i, p in enumerate(prompts)]
        return sum(hits) / max(len(hits), 1)

    def sample(self, raw_model, step: int) -> str | None:
        if not self.val_convs:
            return None
        ids = self.held_out_prompts(1)[0]
        return self.tokenizer.decode(ids + self.reply(raw_model, ids, self.cfg.train.sample_tokens, self.cfg.train.seed))

    def state_dict(self):
        return {"served": dict(self.served)}

    def load_state_dict(self, state):
        self.served.update(state.get("served", {}))


# ----------------------------------------------------------------------------- --sft.show, the run, the CLI
def show_examples(cfg: SFTConfig, out=None) -> None:
    """Print cfg.sft.show rendered training conversations, trained tokens marked, with token counts."""
    from banyan.data.chat import iter_conversations
    from banyan.data.chat_template import encode_conversation, render_mask

    out = out or sys.stdout
    tok, template, _ = load_chat_tokenizer(cfg)
    s = cfg.sft
    color = out.isatty() and not os.environ.get("NO_COLOR")
    convs = iter_conversations(s.data, format=s.format, split=s.split, hf_config=s.hf_config,
                               hf_data_files=s.hf_data_files, skip_invalid=s.skip_invalid, max_conversations=s.show)
    for i, conv in enumerate(convs):
        ids, trained = encode_conversation(tok, template, conv)
        kept = min(len(ids), cfg.train.seq_len + 1)
        note = f", cut to {kept} (train.seq_len {cfg.train.seq_len})" if kept < len(ids) else ""
        print(f"=== example {i + 1}: {len(ids)} tokens, {sum(trained)} trained{note} ===", file=out)
        print(render_mask(tok, ids, trained, color), file=out)
    print("(trained tokens " + ("in green" if color else "inside [[ ]]") + ")", file=out)


def throughput(summary: dict) -> dict:
    """Total and trained tokens/s over the run's wall time (evaluation included) and packing efficiency."""
    eff, wall = summary.get("packing_efficiency", float("nan")), summary.get("wall_s") or float("nan")
    total = summary["tokens"] / wall if wall == wall and wall > 0 else float("nan")
    return {"total_tokens_per_s": total, "trained_tokens_per_s": total * eff, "packing_efficiency": eff}


def train(cfg: SFTConfig, task: SFTTask | None = None) -> dict:
    """Run (or resume) an SFT job; returns the summary (with throughput figures, also in summary.json).
    `task` (default a new SFTTask) may be passed to reuse its encoded data afterwards."""
    from banyan.io import atomic_write_json

    trainer = Trainer(cfg, task or SFTTask(cfg), stage="sft")
    summary = trainer.run()
    summary.update(throughput(summary))
    if trainer.env.is_main:
        atomic_write_json(Path(trainer.out) / "summary.json", summary, indent=1)
        print(f"sft: {summary['total_tokens_per_s']:.0f} tokens/s total, {summary['trained_tokens_per_s']:.0f} "
              f"trained tokens/s, packing efficiency {summary['packing_efficiency']:.3f} (trained / positions)")
    return summary


def main(argv: list[str]) -> int:
    from banyan.parallel.launch import alias_nproc, launch_torchrun

    argv = alias_nproc(argv)
    cfg = parse_cli(SFTConfig, argv, prog="banyan sft")
    if cfg.sft.show:
        show_examples(cfg)
        return 0
    if cfg.parallel.nproc > 0 and "LOCAL_RANK" not in os.environ:
        return launch_torchrun(cfg.parallel.nproc, ["sft", *argv])
    train(cfg)
    return 0
