"""lm-evaluation-harness adapter: `BanyanLM`, registered as lm_eval model "banyan".

    python -m banyan.eval.harness --model banyan --model_args path=runs/s1 --tasks TASK [--include_path DIR] ...

lm-eval 0.4.13 finds models only in its own registry (lm_eval/api/registry.py; lm_eval/models/__init__.py
registers its MODEL_MAPPING and does not scan entry points), so a plain `lm_eval --model banyan` cannot
see an external package. This module registers the class when imported and `python -m banyan.eval.harness`
is lm_eval's own CLI (lm_eval.__main__.cli_evaluate, every flag unchanged) run after that import. From
Python, `lm_eval.simple_evaluate(model=BanyanLM(path=...), ...)` works too.

model_args: path (run, checkpoint or HF folder), batch_size, device, max_new_tokens (default budget of
generate_until). All scoring goes through banyan.eval.scoring.Scorer, the code `banyan eval` runs.
"""

from __future__ import annotations

import sys
import warnings

import torch

from lm_eval.api.model import LM
from lm_eval.api.registry import register_model

from banyan.eval.scoring import Scorer, cut_at_stop


class BanyanLM(LM):
    """A banyan run/checkpoint or HF folder behind lm-eval's LM interface."""

    def __init__(self, path: str = "", batch_size: int | str = 8, device: str = "auto", max_new_tokens: int = 256,
                 **_ignored):
        super().__init__()
        from banyan.errors import ConfigError
        from banyan.eval.run import load_eval_model
        from banyan.parallel.env import resolve_device

        if not path:
            raise ConfigError("lm_eval --model banyan needs --model_args path=RUN|CKPT|HF_DIR")
        if str(device).startswith("cuda") and not torch.cuda.is_available():
            # lm_eval's CLI passes --device (default cuda:0) to every model; HFLM falls back likewise
            warnings.warn(f"device {device} is not available; using the CPU", stacklevel=2)
            device = "cpu"
        dev = resolve_device(device or "auto", flag="device")
        em = load_eval_model(path, dev)
        bs = 8 if str(batch_size).startswith("auto") else int(batch_size)
        self.scorer = Scorer(em.model, em.tok, dev, bs)
        self.max_new_tokens = int(max_new_tokens)
        self._device = dev

    @property
    def device(self):
        return self._device

    def loglikelihood(self, requests, disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        pairs = [self.scorer.encode_pair(*req.args) for req in requests]
        results = self.scorer.loglikelihood(pairs)
        for req, res in zip(requests, results):
            self.cache_hook.add_partial("loglikelihood", req.args, res)
        return results

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        results = self.scorer.rolling([req.args[0] for req in requests])
        for req, res in zip(requests, results):
            self.cache_hook.add_partial("loglikelihood_rolling", req.args, res)
        return results

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        # requests with the same stop strings and budget are generated together (batched by prompt length)
        groups: dict[tuple, list[int]] = {}
        for i, req in enumerate(requests):
            context, kwargs = req.args
            until = kwargs.get("until") or [self.scorer.tok.decode([self.scorer.tok.eos_id])]
            until = [until] if isinstance(until, str) else list(until)
            budget = int(kwargs.get("max_gen_toks", self.max_new_tokens))
            groups.setdefault((tuple(until), budget), []).append(i)
        out = [""] * len(requests)
        for (until, budget), idx in groups.items():
            prompts = [self.scorer.tok.encode(requests[i].args[0]) for i in idx]
            for i, text in zip(idx, self.scorer.generate(prompts, budget, stop=until)):
                out[i] = cut_at_stop(text, until)
                self.cache_hook.add_partial("generate_until", requests[i].args, out[i])
        return out


def main(argv: list[str] | None = None) -> int:
    """lm_eval's CLI with the "banyan" model registered."""
    from lm_eval.__main__ import cli_evaluate

    sys.argv = ["lm_eval", *(sys.argv[1:] if argv is None else argv)]
    cli_evaluate()
    return 0


if __name__ == "__main__":
    # under `python -m` this file runs as __main__: register (once) the class of the importable module
    from banyan.eval.harness import main as registered_main

    sys.exit(registered_main())
else:
    register_model("banyan")(BanyanLM)
