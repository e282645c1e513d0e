"""Log-likelihood scoring and greedy generation, shared by `banyan eval` and the lm-eval adapter.

The request shapes are lm-evaluation-harness's (lm_eval/api/model.py, lm_eval/models/huggingface.py):

* loglikelihood(context, continuation): sum of log p(continuation tokens | context), plus whether
  every continuation token is the argmax. Trailing spaces of the context move onto the continuation
  and the continuation's ids are those of tok(context + continuation) after tok(context)'s length,
  exactly like HFLM._encode_pair, so a BPE merge across the boundary is scored the way lm-eval does.
  An empty context is replaced by the prefix token (<|bos|>). Sequences longer than the model's
  context keep their last max_seq_len + 1 tokens (the input drops the final one).
* rolling: the total log-likelihood of a text cut into windows of max_seq_len predictions, each
  conditioned on the token before it (lm_eval.utils.get_rolling_token_windows with context_len=1).
* generate: greedy decoding with the KV cache, stopping at stop ids (<|end|>, <|eos|>) or strings.

Batching: rows are sorted by length (longest first, so the first batch shows any memory problem),
padded on the right (causal attention means padding after a row never changes its logits) and only
continuation positions are scored. Generation batches prompts of equal length, so no attention
mask is needed with the cache.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from banyan.data.tokenizer import Tokenizer
from banyan.errors import BanyanError

Progress = Callable[[int], None]  # called with the number of requests just finished


class Scorer:
    """A model and its tokenizer, on a device, answering batched log-likelihood and generation requests."""

    def __init__(self, model: nn.Module, tok: Tokenizer, device: torch.device | str = "cpu", batch_size: int = 8):
        if batch_size < 1:
            raise BanyanError(f"batch_size must be >= 1, got {batch_size}")
        self.model, self.tok = model.eval(), tok
        self.device, self.batch_size = torch.device(device), batch_size
        self.max_len = int(model.config.max_seq_len)
        self.prefix_id, self.pad_id = tok.bos_id, tok.pad_id

    # ------------------------------------------------------------------ encoding
    def encode_pair(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
        """(context ids, continuation ids) as lm-eval's HFLM._encode_pair splits them."""
        n_spaces = len(context) - len(context.rstrip())
        if n_spaces:
            context, continuation = context[:-n_spaces], context[-n_spaces:] + continuation
        whole = self.tok.encode(context + continuation)
        ctx = self.tok.encode(context) if context else []
        return ctx, whole[len(ctx):]

    # ------------------------------------------------------------------ log-likelihood
    @torch.no_grad()
    def loglikelihood(self, pairs: Sequence[tuple[list[int], list[int]]],
                      progress: Progress | None = None) -> list[tuple[float, bool]]:
        """[(sum log p(cont | ctx), cont is greedy)] for each (ctx ids, cont ids), in input order."""
        rows = []
        for i, (ctx, cont) in enumerate(pairs):
            if not cont:
                raise BanyanError(f"request {i}: the continuation encodes to no tokens")
            full = (list(ctx) or [self.prefix_id]) + list(cont)
            full = full[-(self.max_len + 1):]  # a too-long request keeps its end, like lm-eval
            n = min(len(cont), len(full) - 1)
            rows.append((i, full[:-1], full[-n:]))
        out: list[tuple[float, bool]] = [(0.0, False)] * len(rows)
        rows.sort(key=lambda r: -len(r[1]))
        for start in range(0, len(rows), self.batch_size):
            chunk = rows[start:start + self.batch_size]
            for (i, _, _), result in zip(chunk, self._score_batch(chunk)):
                out[i] = result
            if progress:
                progress(len(chunk))
        return out

    def _score_batch(self, chunk: list[tuple[int, list[int], list[int]]]) -> list[tuple[float, bool]]:
        width = max(len(inp) for _, inp, _ in chunk)
        x = torch.full((len(chunk), width), self.pad_id, dtype=torch.long)
        for r, (_, inp, _) in enumerate(chunk):
            x[r, :len(inp)] = torch.tensor(inp)
        logp = F.log_softmax(self.model(x.to(self.device)).float(), dim=-1)  # [B, T, V]
        results = []
        for r, (_, inp, target) in enumerate(chunk):
            n = len(target)
            # position t predicts token t+1; the continuation's n targets are predicted at inp[-n:]
            lp = logp[r, len(inp) - n:len(inp)]  # [n, V]
            t = torch.tensor(target, device=lp.device)
            total = lp.gather(1, t[:, None]).sum().item()
            results.append((float(total), bool((lp.argmax(-1) == t).all())))
        return results

    def rolling_pairs(self, text: str) -> list[tuple[list[int], list[int]]]:
        """(context, prediction) windows covering every token of `text` once (lm-eval's rolling windows)."""
        ids = self.tok.encode(text)
        pairs, done = [], 0
        while done < len(ids):
            n = min(self.max_len, len(ids) - done)
            ctx = [self.prefix_id] if done == 0 else ids[done + n - self.max_len - 1:done]  # as much as fits
            pairs.append((ctx, ids[done:done + n]))
            done += n
        return pairs

    def rolling(self, texts: Sequence[str], progress: Progress | None = None) -> list[float]:
        """Total log-likelihood of each text (all its tokens, windowed to the model's context)."""
        windows = [self.rolling_pairs(t) for t in texts]
        flat = self.loglikelihood([p for w in windows for p in w], progress)
        totals, k = [], 0
        for w in windows:
            totals.append(sum(ll for ll, _ in flat[k:k + len(w)]))
            k += len(w)
        return totals

    # ------------------------------------------------------------------ generation
    def stop_ids(self) -> set[int]:
        ids = {self.tok.eos_id}
        end = self.tok.hf.token_to_id("<|end|>")
        return ids | ({int(end)} if end is not None else set())

    @torch.no_grad()
    def generate(self, prompts: Sequence[list[int]], max_new_tokens: int, stop: Sequence[str] = ("\n",),
                 progress: Progress | None = None) -> list[str]:
        """Greedy continuations (decoded, cut before the first stop string) of each prompt, in input order."""
        out = [""] * len(prompts)
        by_len: dict[int, list[int]] = {}
        for i, p in enumerate(prompts):
            by_len.setdefault(len(self._fit(p, max_new_tokens)), []).append(i)
        for _, idx in sorted(by_len.items(), reverse=True):
            for start in range(0, len(idx), self.batch_size):
                group = idx[start:start + self.batch_size]
                texts = self._generate_batch([self._fit(prompts[i], max_new_tokens) for i in group],
                                             max_new_tokens, stop)
                for i, text in zip(group, texts):
                    out[i] = text
                if progress:
                    progress(len(group))
        return out

    def _fit(self, prompt: list[int], max_new_tokens: int) -> list[int]:
        """The prompt's last tokens that leave room for max_new_tokens (at least one prompt token)."""
        keep = max(1, self.max_len - max_new_tokens)
        return list(prompt)[-keep:] or [self.prefix_id]

    def _generate_batch(self, rows: list[list[int]], max_new_tokens: int, stop: Sequence[str]) -> list[str]:
        B, T = len(rows), len(rows[0])
        new = max(0, min(max_new_tokens, self.max_len - T))
        stops = self.stop_ids()
        x = torch.tensor(rows, dtype=torch.long, device=self.device)
        cache = self.model.make_cache(B, T + new, device=self.device)
        logits = self.model(x, cache=cache, start_pos=0)[:, -1]  # [B, V]
        generated: list[list[int]] = [[] for _ in range(B)]
        done = [False] * B
        for step in range(new):
            nxt = logits.argmax(-1)  # [B]
            for r, t in enumerate(nxt.tolist()):
                if done[r]:
                    continue
                if t in stops:
                    done[r] = True
                else:
                    generated[r].append(t)
                    done[r] = any(s in self.tok.decode(generated[r]) for s in stop)
            if all(done) or step == new - 1:
                break
            logits = self.model(nxt[:, None], cache=cache, start_pos=T + step)[:, -1]
        return [cut_at_stop(self.tok.decode(g), stop) for g in generated]


def cut_at_stop(text: str, stop: Sequence[str]) -> str:
    """`text` up to (not including) the earliest occurrence of any stop string."""
    cut = min((text.find(s) for s in stop if s and s in text), default=len(text))
    return text[:cut]
