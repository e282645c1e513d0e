"""KV cache, sampling and generation: cached decoding must reproduce full forwards exactly."""

import pytest
import torch

from banyan.errors import BanyanError
from banyan.model import build_model, sample_logits

CASES = [("llama", {}), ("llama", {"n_kv_head": 1, "rope_scaling": "llama3", "rope_original_max_seq_len": 16}),
         ("gpt2", {})]


def _model(make_config, arch, **kw):
    torch.manual_seed(0)
    return build_model(make_config(arch, **kw)).eval()


@pytest.mark.parametrize("arch,kw", CASES)
def test_cached_decoding_matches_full_forward(arch, kw, make_config):
    model = _model(make_config, arch, **kw)
    x = torch.randint(0, 97, (3, 20))
    with torch.no_grad():
        full = model(x)
        cache = model.make_cache(3, 20)
        # prefill 6, then a chunk of 5 (causal over a cached prefix), then one token at a time
        parts = [model(x[:, :6], cache=cache, start_pos=0), model(x[:, 6:11], cache=cache, start_pos=6)]
        parts += [model(x[:, t:t + 1], cache=cache, start_pos=t) for t in range(11, 20)]
    cached = torch.cat(parts, dim=1)
    assert cache.length == 20
    assert (cached - full).abs().max().item() < 1e-5


@pytest.mark.parametrize("arch,kw", CASES)
def test_greedy_generate_equals_uncached_argmax_loop(arch, kw, make_config):
    model = _model(make_config, arch, **kw)
    prompt = torch.randint(0, 97, (2, 5))
    out = model.generate(prompt, max_new_tokens=12, temperature=0)
    ref = prompt
    with torch.no_grad():
        for _ in range(12):
            ref = torch.cat([ref, model(ref)[:, -1].argmax(-1, keepdim=True)], dim=1)
    assert out.shape == (2, 17)
    assert torch.equal(out, ref)


@pytest.mark.parametrize("arch,kw", CASES)
def test_stepwise_prefill_stream_equals_full_forward_greedy(arch, kw, make_config):
    """prefill + stream over two turns (the second continuing the cache, after a rewind) gives the tokens
    an uncached argmax loop over the whole sequence gives."""
    model = _model(make_config, arch, **kw)
    seq = torch.randint(0, 97, (1, 7))

    def reference(prefix, n):
        with torch.no_grad():
            for _ in range(n):
                prefix = torch.cat([prefix, model(prefix)[:, -1].argmax(-1, keepdim=True)], dim=1)
        return prefix

    cache = model.make_cache(1)
    got = [int(t) for t in model.stream(model.prefill(seq, cache), cache, 7, 6, temperature=0)]
    assert got == reference(seq, 6)[0, 7:].tolist()
    assert cache.length == 7 + 5  # the last yielded token is not fed
    # turn 2: rewind over the last 2 cached positions, then prefill a new suffix from there
    history = torch.cat([seq, torch.tensor([got[:4]])], dim=1)  # 11 positions, 0..10 already cached
    suffix = torch.randint(0, 97, (1, 3))
    logits = model.prefill(suffix, cache, start_pos=history.size(1))
    full = torch.cat([history, suffix], dim=1)
    assert (logits - model(full)[:, -1]).abs().max().item() < 1e-5
    stepped = [int(t) for t in model.stream(logits, cache, full.size(1), 5, temperature=0)]
    assert stepped == reference(full, 5)[0, full.size(1):].tolist()


def test_stream_stops_feeding_when_the_consumer_stops(make_config):
    model = _model(make_config, "llama")
    cache = model.make_cache(1)
    fed = []
    model.register_forward_pre_hook(lambda m, args: fed.append(args[0].size(1)))
    logits = model.prefill(torch.randint(0, 97, (1, 4)), cache)
    for i, _ in enumerate(model.stream(logits, cache, 4, 10, temperature=0)):
        if i == 2:
            break
    assert fed == [4, 1, 1] and cache.length == 6


def test_top_k_1_and_tiny_top_p_are_greedy(make_config):
    model = _model(make_config, "llama")
    prompt = torch.randint(0, 97, (2, 4))
    greedy = model.generate(prompt, 10, temperature=0)
    g = torch.Generator().manual_seed(1)
    assert torch.equal(model.generate(prompt, 10, temperature=1.0, top_k=1, generator=g), greedy)
    assert torch.equal(model.generate(prompt, 10, temperature=1.0, top_p=1e-6, generator=g), greedy)


def test_seeded_sampling_is_reproducible(make_config):
    model = _model(make_config, "gpt2")
    prompt = torch.randint(0, 97, (2, 4))

    def run(seed):
        return model.generate(prompt, 16, temperature=1.0, top_k=50, top_p=0.95,
                              generator=torch.Generator().manual_seed(seed))

    assert torch.equal(run(7), run(7))
    assert not torch.equal(run(7), run(8))


def test_generate_stops_when_every_row_hit_eos_and_pads_finished_rows(make_config):
    model = _model(make_config, "llama")
    prompt = torch.randint(0, 97, (2, 4))
    free = model.generate(prompt, 12, temperature=0)[:, 4:]
    eos = int(free[0, 2])  # row 0 emits it at its third new token
    out = model.generate(prompt, 12, temperature=0, eos_id=eos)
    new = out[:, 4:]
    first = [int((row == eos).nonzero()[0]) if (row == eos).any() else None for row in free]
    if first[1] is None:  # row 1 never emits eos: run to the end, row 0 padded with eos after its stop
        assert new.shape[1] == 12
    else:
        assert new.shape[1] == max(first) + 1
    stop0 = first[0]
    assert torch.equal(new[0, :stop0 + 1], free[0, :stop0 + 1])
    assert torch.all(new[0, stop0:] == eos)
    single = model.generate(prompt[:1], 12, temperature=0, eos_id=eos)
    assert single.shape == (1, 4 + stop0 + 1)  # one row: stops right after its eos


def test_generate_refuses_to_run_past_max_seq_len(make_config):
    model = _model(make_config, "gpt2", max_seq_len=16)
    model.generate(torch.zeros(1, 6, dtype=torch.long), 10, temperature=0)
    with pytest.raises(BanyanError, match="max_seq_len"):
        model.generate(torch.zeros(1, 6, dtype=torch.long), 11, temperature=0)


def test_generate_restores_training_mode(make_config):
    model = _model(make_config, "llama", dropout=0.5).train()
    model.generate(torch.zeros(1, 3, dtype=torch.long), 2)
    assert model.training


def test_sample_logits_filters():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]])).repeat(2000, 1)
    g = torch.Generator().manual_seed(0)
    assert set(sample_logits(logits, 1.0, top_k=2, generator=g).tolist()) == {0, 1}
    assert set(sample_logits(logits, 1.0, top_p=0.7, generator=g).tolist()) == {0, 1}
    assert set(sample_logits(logits, 1.0, top_p=0.45, generator=g).tolist()) == {0}
    assert set(sample_logits(logits, 1.0, generator=g).tolist()) == {0, 1, 2, 3}
    counts = torch.bincount(sample_logits(logits, 1.0, generator=g), minlength=4) / 2000
    torch.testing.assert_close(counts, torch.tensor([0.5, 0.3, 0.15, 0.05]), atol=0.04, rtol=0)
    assert torch.equal(sample_logits(logits[:1], 0.0), torch.tensor([0]))
    with pytest.raises(ValueError, match="temperature"):
        sample_logits(logits, -1.0)
