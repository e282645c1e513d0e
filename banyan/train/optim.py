"""Optimizers: AdamW (fp32 state), 8-bit AdamW (bitsandbytes or torchao), and Muon + AdamW.

`build_optimizer(model, cfg, device_type)` returns one `torch.optim.Optimizer` for every choice,
so the trainer, the LR schedule and checkpointing treat them alike.

Parameter groups (every group carries `name` and `initial_lr`):
  * ``decay``     every parameter with ndim >= 2 - the linear weights and, following nanoGPT, the
                  token/position embeddings (a tied head is the embedding, so it is decayed once).
  * ``no_decay``  ndim < 2: norm gains and biases. Decaying them pulls gains towards 0 and
                  biases towards 0 for no regularisation benefit (nanoGPT, Karpathy 2023).
  * ``muon``      (muon only) the 2-D weights inside `model.blocks()` - attention and MLP matrices.
                  Embeddings and the head stay on AdamW, as Muon's author recommends (Jordan 2024,
                  https://kellerjordan.github.io/posts/muon/, modded-nanogpt).

The LR schedule sets ``group["lr"] = group["initial_lr"] * factor``; `initial_lr` is the group's
peak lr (cfg.lr for AdamW groups, cfg.muon_lr for the Muon group). It is the same key torch's
LRSchedulers use, so they work too.

State dicts hold only tensors and plain Python values, so `torch.save` + `torch.load(weights_only=True)`
round-trips them; 8-bit states stay 8-bit (uint8 codes + fp32 block scales).
"""

from __future__ import annotations

import collections.abc
import functools
from typing import Any, Iterable

import torch
import torch.nn as nn

from banyan.errors import BanyanError
from banyan.config import OptimConfig

EXTRA_HINT = "install the extra: pip install 'banyan-lm[optim8bit]'"


def param_groups(model: nn.Module, weight_decay: float, lr: float) -> list[dict[str, Any]]:
    """AdamW groups: ndim >= 2 decayed, the rest not (see module docstring). Shared tensors appear once."""
    decay, no_decay = [], []
    for p in model.parameters():  # parameters() de-duplicates tied weights
        if p.requires_grad:
            (decay if p.ndim >= 2 else no_decay).append(p)
    groups = [dict(params=decay, weight_decay=weight_decay, name="decay", lr=lr, initial_lr=lr),
              dict(params=no_decay, weight_decay=0.0, name="no_decay", lr=lr, initial_lr=lr)]
    return [g for g in groups if g["params"]]


def muon_params(model: nn.Module) -> list[nn.Parameter]:
    """The parameters Muon takes: 2-D weights inside the transformer blocks."""
    if not hasattr(model, "blocks"):
        raise BanyanError(f"muon needs model.blocks() to tell hidden matrices from embeddings/head; "
                          f"{type(model).__name__} has none")
    seen, out = set(), []
    for p in model.blocks().parameters():
        if p.requires_grad and p.ndim == 2 and id(p) not in seen:
            seen.add(id(p))
            out.append(p)
    return out


class _MergedState(collections.abc.Mapping):
    """Read-only view of the inner optimizers' `state`, looked up live (load_state_dict replaces
    their dicts; a ChainMap would also insert keys into their defaultdicts on failed lookups)."""

    def __init__(self, *optimizers: torch.optim.Optimizer):
        self.optimizers = optimizers

    def __getitem__(self, key):
        for o in self.optimizers:
            if key in o.state:
                return o.state[key]
        raise KeyError(key)

    def __iter__(self):
        for o in self.optimizers:
            yield from o.state

    def __len__(self) -> int:
        return sum(len(o.state) for o in self.optimizers)


class MuonAdamW(torch.optim.Optimizer):
    """Muon for the blocks' matrices plus AdamW for everything else, as one optimizer.

    `param_groups` is live: the concatenation of the two inner optimizers' current group dicts, so
    setting `group["lr"]` reaches them, also after either inner optimizer's load_state_dict (which
    builds new dicts; DCP loads the parts directly). `state_dict()` is ``{"muon": ..., "adamw": ...}``.
    """

    def __init__(self, muon: torch.optim.Optimizer, adamw: torch.optim.Optimizer):
        self.muon, self.adamw = muon, adamw
        # Optimizer.__init__ sets up the hook registries LR schedulers and profilers use; the groups
        # themselves live in the inner optimizers (see the param_groups property)
        super().__init__([{"params": []}], defaults={})
        self.state = _MergedState(muon, adamw)  # type: ignore[assignment]

    @property
    def param_groups(self) -> list[dict[str, Any]]:  # type: ignore[override]
        return self.muon.param_groups + self.adamw.param_groups

    @param_groups.setter
    def param_groups(self, value) -> None:
        pass  # Optimizer.__init__ assigns a list here; the inner optimizers own the groups

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        if param_group.get("params"):
            raise BanyanError("MuonAdamW: add parameter groups to its .muon or .adamw optimizer")

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        self.muon.step()
        self.adamw.step()
        return loss

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.muon.zero_grad(set_to_none)
        self.adamw.zero_grad(set_to_none)

    def state_dict(self) -> dict[str, Any]:
        return {"muon": self.muon.state_dict(), "adamw": self.adamw.state_dict()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if set(state_dict) != {"muon", "adamw"}:
            raise BanyanError(f"muon optimizer state must have keys 'muon' and 'adamw', got {sorted(state_dict)}; "
                              "was the checkpoint written with another optim.name?")
        self.muon.load_state_dict(state_dict["muon"])
        self.adamw.load_state_dict(state_dict["adamw"])


def newton_schulz(grad: torch.Tensor, coefficients: tuple[float, float, float], steps: int, eps: float,
                  dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Muon's quintic Newton-Schulz orthogonalisation of a 2-D update, computed in `dtype`.

    Jordan 2024 (github.com/KellerJordan/Muon): X <- a X + (b A + c A^2) X with A = X X^T, after scaling
    X to spectral norm <= 1; the wide orientation keeps A the smaller Gram matrix.
    """
    return batched_newton_schulz([grad], coefficients, steps, eps, dtype)[0]


def batched_newton_schulz(grads: list[torch.Tensor], coefficients: tuple[float, float, float], steps: int,
                          eps: float, dtype: torch.dtype) -> list[torch.Tensor]:
    """`newton_schulz` of every 2-D tensor in `grads` (results in `dtype`, in order), matrices of the same
    shape stacked into one batched matmul per product.

    A small model's Muon step is hundreds of small matmuls (the demo's: 28 matrices x 5 steps x 3); one
    batched product per shape does the same arithmetic in fewer, larger calls (the demo's Muon step 52 ->
    25 ms in bf16 on a 2-core AMX Xeon), bitwise the same results there as torch's per-matrix
    `_zeropower_via_newtonschulz` (each matrix is still normalised by its own Frobenius norm; the batch
    only stacks the products)."""
    a, b, c = coefficients
    out: list[torch.Tensor | None] = [None] * len(grads)
    # Grouped by the shape they are iterated in: a tall [r, c] matrix is transposed so that the Gram matrix
    # X X^T is the smaller one, and then batches with the wide [c, r] ones (an MLP's up and down projections).
    groups: dict[tuple[int, int], list[int]] = {}
    for i, g in enumerate(grads):
        groups.setdefault((min(g.shape), max(g.shape)), []).append(i)
    for idx in groups.values():
        xs = []
        for i in idx:
            x = grads[i].to(dtype)
            x = x.T if x.size(0) > x.size(1) else x
            xs.append(x / x.norm().clamp(min=eps))
        x = torch.stack(xs)  # [n, rows, cols], rows <= cols
        for _ in range(steps):
            gram = x @ x.mT
            x = torch.baddbmm(x, torch.baddbmm(gram, gram, gram, beta=b, alpha=c), x, beta=a)
        for k, i in enumerate(idx):
            out[i] = x[k].T if grads[i].size(0) > grads[i].size(1) else x[k]
    return out  # type: ignore[return-value]


class Muon(torch.optim.Muon):
    """torch.optim.Muon with the Newton-Schulz of all its matrices batched by shape, run in `ns_dtype`, with
    denormals flushed on CPU.

    torch's implementation always casts to bf16: right on GPUs, but a CPU without bf16 units emulates
    it (a 256x704x256 matmul: 5.9 ms vs 0.73 ms in fp32 on a 2-core AVX2 box; the demo's Muon step took
    ~7 s instead of ~0.6 s). The update rule is torch's `_single_tensor_muon`, step for step (momentum
    buffers in the same state entries, so checkpoints are torch.optim.Muon's); only the orthogonalisation
    runs for all matrices at once (batched_newton_schulz).
    """

    def __init__(self, *args, ns_dtype: torch.dtype = torch.bfloat16, **kwargs):
        super().__init__(*args, **kwargs)
        self.ns_dtype = ns_dtype

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        # The iteration's inner products underflow into denormals on x86 CPUs, where each denormal costs
        # ~100 cycles: flushing them to zero (what GPU matmuls do anyway) made it 10x faster on CPU here.
        flush = next((p.device.type == "cpu" for g in self.param_groups for p in g["params"]), False)
        if flush:
            torch.set_flush_denormal(True)
        try:
            for group in self.param_groups:
                self._group_step(group)
        finally:
            if flush:
                torch.set_flush_denormal(False)
        return loss

    def _group_step(self, group: dict[str, Any]) -> None:
        from torch.optim._muon import _adjust_lr

        params: list[torch.Tensor] = []
        grads: list[torch.Tensor] = []
        bufs: list[torch.Tensor] = []
        if self._init_group(group, params, grads, bufs):
            raise ValueError("Complex parameters are not supported")
        lr, wd, momentum = float(group["lr"]), group["weight_decay"], group["momentum"]
        updates = []
        for grad, buf in zip(grads, bufs):
            if grad.ndim != 2:
                raise ValueError("Param gradient must be a 2D matrix")
            buf.lerp_(grad, 1 - momentum)
            updates.append(grad.lerp(buf, momentum) if group["nesterov"] else buf)
        ortho = batched_newton_schulz(updates, group["ns_coefficients"], group["ns_steps"], group["eps"],
                                      self.ns_dtype)
        for param, update in zip(params, ortho):
            param.mul_(1 - lr * wd)
            param.add_(update, alpha=-_adjust_lr(lr, group["adjust_lr_fn"], param.shape))


def _adamw(groups: list[dict], cfg: OptimConfig, device_type: str) -> torch.optim.Optimizer:
    # fused: one kernel for all params, on CUDA and on CPU. torch's CPU default is neither fused nor foreach
    # but a per-tensor loop: 5.9 ms vs 1.1 ms fused per step for the 0.84M-param nanoGPT CPU shape
    # (52 tensors; `banyan bench train`, profile in issue 14's note).
    fused = device_type in ("cuda", "cpu")
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), eps=cfg.eps, fused=fused or None)


def _bnb_adamw8bit(groups: list[dict], cfg: OptimConfig) -> torch.optim.Optimizer:
    try:
        import bitsandbytes as bnb
    except ImportError as e:
        raise BanyanError(f"optim.name 'adamw8bit' needs bitsandbytes ({e}); {EXTRA_HINT}") from None
    # Block-wise 8-bit state (Dettmers et al. 2022): tensors of >= 4096 values keep uint8 moments
    # plus one fp32 absmax per 256 values; smaller ones (norms, biases) keep fp32 moments.
    return bnb.optim.AdamW8bit(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), eps=cfg.eps, min_8bit_size=4096)


@functools.cache
def _torchao_class() -> type:
    try:
        from torchao.optim import AdamW8bit
    except ImportError as e:
        raise BanyanError(f"optim.name 'adamw8bit-torchao' needs torchao ({e}); {EXTRA_HINT}") from None

    class TorchaoAdamW8bit(AdamW8bit):
        """torchao's AdamW8bit with plain-float `group["lr"]` outside step().

        torchao keeps lr as a 0-d tensor (so its compiled step does not recompile when lr changes)
        and refuses a float. The schedule writes floats, so step() copies each float into the
        group's tensor, steps, and puts the float back.
        """

        # explicit signature: ZeroRedundancyOptimizer (zero1) rebuilds it from (params, **defaults)
        def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2, amsgrad=False, *,
                     block_size=256, bf16_stochastic_round=False):
            super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, amsgrad=amsgrad,
                             block_size=block_size, bf16_stochastic_round=bf16_stochastic_round)
            self._floats()

        def _floats(self) -> None:
            for g in self.param_groups:
                if isinstance(g["lr"], torch.Tensor):
                    g["_lr_t"] = g["lr"]
                    g["lr"] = float(g["lr"])

        @torch.no_grad()
        def step(self, closure=None):
            for g in self.param_groups:
                t = g.get("_lr_t")
                if not isinstance(t, torch.Tensor):
                    t = torch.tensor(0.0)
                t.fill_(float(g["lr"]))
                g["_lr_t"], g["lr"] = t, t
            try:
                return super().step(closure)
            finally:
                self._floats()

        def state_dict(self) -> dict[str, Any]:
            sd = super().state_dict()
            for g in sd["param_groups"]:
                g.pop("_lr_t", None)
            return sd

        def load_state_dict(self, state_dict: dict[str, Any]) -> None:
            super().load_state_dict(state_dict)
            self._floats()

    return TorchaoAdamW8bit


def build_optimizer(model: nn.Module, cfg: OptimConfig, device_type: str = "cpu") -> torch.optim.Optimizer:
    """The optimizer `cfg.name` asks for over `model`'s trainable parameters (see module docstring)."""
    if cfg.name == "adamw":
        return _adamw(param_groups(model, cfg.weight_decay, cfg.lr), cfg, device_type)
    if cfg.name == "adamw8bit":
        return _bnb_adamw8bit(param_groups(model, cfg.weight_decay, cfg.lr), cfg)
    if cfg.name == "adamw8bit-torchao":
        cls = _torchao_class()
        return cls(param_groups(model, cfg.weight_decay, cfg.lr), lr=cfg.lr, betas=(cfg.beta1, cfg.beta2),
                   eps=cfg.eps, weight_decay=cfg.weight_decay)
    if cfg.name == "muon":
        hidden = muon_params(model)
        if not hidden:
            raise BanyanError("muon found no 2-D weights inside model.blocks()")
        ids = {id(p) for p in hidden}
        # Muon: Nesterov momentum, 5 Newton-Schulz steps with Keller Jordan's quintic coefficients
        # (torch.optim.Muon defaults) and his shape scaling sqrt(max(1, rows/cols)) of the lr.
        from banyan.hardware import native_bf16

        ns_dtype = torch.bfloat16 if native_bf16(torch.device(device_type)) else torch.float32
        muon = Muon([dict(params=hidden, name="muon", lr=cfg.muon_lr, initial_lr=cfg.muon_lr,
                          weight_decay=cfg.weight_decay)],
                    lr=cfg.muon_lr, momentum=cfg.muon_momentum, nesterov=True, ns_dtype=ns_dtype)
        rest = param_groups(nn.ParameterList([p for p in model.parameters() if id(p) not in ids]),
                            cfg.weight_decay, cfg.lr)
        if not rest:  # LoRA on every block matrix: the adapters are all Muon's, nothing left for AdamW
            return muon
        adamw = _adamw(rest, cfg, device_type)
        return MuonAdamW(muon, adamw)
    raise BanyanError(f"optim.name must be one of adamw, adamw8bit, adamw8bit-torchao, muon; got {cfg.name!r}")


def _leaf_tensors(t: torch.Tensor) -> Iterable[torch.Tensor]:
    """Plain tensors behind `t`: DTensor -> local shard; tensor subclasses (torchao's 8-bit state) -> their parts."""
    if hasattr(t, "to_local"):
        t = t.to_local()
    if type(t) is not torch.Tensor and hasattr(t, "__tensor_flatten__"):
        names, _ = t.__tensor_flatten__()
        for n in names:
            yield from _leaf_tensors(getattr(t, n))
        return
    yield t


def tensor_bytes(tensors: Iterable[torch.Tensor]) -> int:
    """Bytes of the storages behind `tensors`, each storage counted once (shared qmaps, views, ties)."""
    seen, total = set(), 0
    for t in tensors:
        for leaf in _leaf_tensors(t):
            storage = leaf.untyped_storage()
            key = (leaf.device, storage.data_ptr())
            if storage.data_ptr() and key in seen:
                continue
            seen.add(key)
            total += storage.nbytes()
    return total


def _state_tensors(state: Any) -> Iterable[torch.Tensor]:
    if isinstance(state, torch.Tensor):
        yield state
    elif isinstance(state, dict):
        for v in state.values():
            yield from _state_tensors(v)
    elif isinstance(state, (list, tuple)):
        for v in state:
            yield from _state_tensors(v)


def optimizer_state_bytes(opt: torch.optim.Optimizer) -> int:
    """Real bytes held by the optimizer's state tensors (8-bit codes, scales, steps...), de-duplicated."""
    return tensor_bytes(_state_tensors(list(opt.state.values())))
