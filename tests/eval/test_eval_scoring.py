"""banyan.eval.scoring: batched log-likelihood, rolling windows and greedy generation against closed forms."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from banyan.eval.scoring import Scorer, cut_at_stop

sys.path.insert(0, str(Path(__file__).parent))
from evalkit import make_run  # noqa: E402


@pytest.fixture(scope="module")
def scorer(tmp_path_factory):
    from banyan.eval.run import load_eval_model

    em = load_eval_model(make_run(tmp_path_factory.mktemp("score")), torch.device("cpu"))
    return Scorer(em.model, em.tok, "cpu", batch_size=3)


def reference_ll(model, ctx: list[int], cont: list[int]) -> tuple[float, bool]:
    """One unpadded forward of ctx + cont (its last max_seq_len + 1 tokens), summed over cont's tokens."""
    full = (ctx + cont)[-(model.config.max_seq_len + 1):]
    n = min(len(cont), len(full) - 1)
    with torch.no_grad():
        logp = F.log_softmax(model(torch.tensor([full[:-1]]))[0].float(), -1)[-n:]
    target = torch.tensor(full[-n:])
    return logp.gather(1, target[:, None]).sum().item(), bool((logp.argmax(-1) == target).all())


def test_encode_pair_moves_trailing_space_onto_continuation(scorer):
    ctx, cont = scorer.encode_pair("First Citizen:  ", "speak")
    assert ctx == scorer.tok.encode("First Citizen:")
    assert ctx + cont == scorer.tok.encode("First Citizen:  speak")
    assert scorer.encode_pair("", "All") == ([], scorer.tok.encode("All"))


def test_batched_loglikelihood_equals_one_forward_per_request(scorer):
    tok, m = scorer.tok, scorer.model
    texts = [("First Citizen:", " speak"), ("A", " resolved rather to die than to famish?"),
             ("You are all resolved rather to die", " than"), ("x" * 90, " speak, speak."),  # longer than context
             ("", "Before we proceed")]
    pairs = [scorer.encode_pair(c, t) for c, t in texts]
    got = scorer.loglikelihood(pairs)
    for (ctx, cont), (ll, greedy) in zip(pairs, got):
        ref_ll, ref_greedy = reference_ll(m, ctx or [tok.bos_id], cont)
        assert ll == pytest.approx(ref_ll, abs=1e-4) and greedy == ref_greedy
    for bs in (1, 8):  # padding never changes a row's scores
        other = Scorer(m, tok, "cpu", batch_size=bs).loglikelihood(pairs)
        assert [g for _, g in other] == [g for _, g in got]
        assert [ll for ll, _ in other] == pytest.approx([ll for ll, _ in got], abs=1e-4)


def test_greedy_flag_is_true_for_the_argmax_continuation(scorer):
    ctx = scorer.tok.encode("First Citizen:")
    x = torch.tensor([ctx])
    out = scorer.model.generate(x, 5, temperature=0.0)[0, len(ctx):].tolist()
    (_, greedy), (_, other) = scorer.loglikelihood([(ctx, out), (ctx, out[:-1] + [(out[-1] + 1) % 300])])
    assert greedy and not other


def test_rolling_scores_every_token_once(scorer):
    text = "Before we proceed any further, hear me speak. " * 6  # several windows of 64
    ids = scorer.tok.encode(text)
    assert len(ids) > 2 * scorer.max_len
    pairs = scorer.rolling_pairs(text)
    assert [t for _, c in pairs for t in c] == ids
    assert all(len(c) + len(p) <= scorer.max_len + 1 for c, p in pairs)
    total = sum(reference_ll(scorer.model, c, p)[0] for c, p in pairs)
    assert scorer.rolling([text])[0] == pytest.approx(total, abs=1e-3)


def test_rolling_windows_match_lm_eval():
    utils = pytest.importorskip("lm_eval.utils")

    class Tok:
        def encode(self, text):
            return [ord(ch) for ch in text]

        bos_id, pad_id = 0, 1

    class M(torch.nn.Module):
        config = type("C", (), {"max_seq_len": 7})

    s = Scorer.__new__(Scorer)
    s.tok, s.max_len, s.prefix_id = Tok(), 7, 0
    for n in (1, 7, 8, 20):
        text = "abcdefghijklmnopqrstuvwxyz"[:n]
        ref = [utils.make_disjoint_window(w) for w in
               utils.get_rolling_token_windows(Tok().encode(text), 0, 7, context_len=1)]
        mine = s.rolling_pairs(text)
        # lm-eval's (context, prediction) equals ours up to the context lm-eval drops (disjoint windows)
        assert [p for _, p in mine] == [p for _, p in ref]
        assert all(c + p == (mc + p)[-len(c + p):] for (c, p), (mc, _) in zip(ref, mine))


def test_generate_equals_model_generate_greedy(scorer):
    m, tok = scorer.model, scorer.tok
    prompts = [tok.encode(p) for p in ("First Citizen:", "All:", "Speak", "All:", "You are all resolved")]
    stops = scorer.stop_ids()
    want = []
    for p in prompts:
        out = m.generate(torch.tensor([p]), 12, temperature=0.0)[0, len(p):].tolist()
        cut = next((i for i, t in enumerate(out) if t in stops), len(out))
        want.append(cut_at_stop(tok.decode(out[:cut]), ["\n"]))
    for bs in (1, 4):
        assert Scorer(m, tok, "cpu", batch_size=bs).generate(prompts, 12, stop=["\n"]) == want


def test_cut_at_stop_takes_the_earliest():
    assert cut_at_stop("ab\ncd.ef", ["."]) == "ab\ncd"
    assert cut_at_stop("ab\ncd.ef", [".", "\n"]) == "ab"
    assert cut_at_stop("abc", []) == "abc"
