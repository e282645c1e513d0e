"""Preference records (banyan.data.prefs): both schemas, every source kind, response-only masks, bad input."""

import json

import pytest

from banyan.data import DataError
from banyan.data.chat import Turn
from banyan.data.chat_template import DEFAULT_CHAT_TEMPLATE
from banyan.data.prefs import encode_pair, last_turn_mask, load_pairs, to_pair

EXPLICIT = [
    {"prompt": "Say hi", "chosen": "hi", "rejected": "go away"},
    {"prompt": [{"role": "system", "content": "be kind"}, {"role": "user", "content": "Say hi"},
                {"role": "assistant", "content": "hello"}, {"role": "user", "content": "again"}],
     "chosen": [{"role": "assistant", "content": "hi again"}], "rejected": [{"role": "assistant", "content": "no"}]},
]
IMPLICIT = {"prompt": "Say hi", "score_chosen": 8.5, "score_rejected": 2,
            "chosen": [{"role": "user", "content": "Say hi"}, {"role": "assistant", "content": "hi"}],
            "rejected": [{"role": "user", "content": "Say hi"}, {"role": "assistant", "content": "bye"}]}


def write_jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def test_explicit_and_implicit_forms():
    a = to_pair(EXPLICIT[0], "x:1")
    assert a.prompt == [Turn("user", "Say hi")] and a.chosen == [Turn("assistant", "hi")]
    b = to_pair(EXPLICIT[1], "x:2")
    assert [t.role for t in b.prompt] == ["system", "user", "assistant", "user"]
    c = to_pair(IMPLICIT, "x:3")
    assert c.prompt == [Turn("user", "Say hi")]
    assert c.chosen == [Turn("assistant", "hi")] and c.rejected == [Turn("assistant", "bye")]
    assert (c.score_chosen, c.score_rejected) == (8.5, 2.0)


def test_jsonl_and_parquet_sources(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pairs = load_pairs(str(write_jsonl(tmp_path / "p.jsonl", EXPLICIT + [IMPLICIT])))
    assert len(pairs) == 3 and pairs[2].where.endswith("p.jsonl:3")
    pq.write_table(pa.Table.from_pylist([IMPLICIT, IMPLICIT]), tmp_path / "p.parquet")
    from_parquet = load_pairs(str(tmp_path / "p.parquet"))
    assert len(from_parquet) == 2 and from_parquet[0].rejected == [Turn("assistant", "bye")]


def test_response_mask_is_the_final_assistant_turn_only(char_tok):
    (c_ids, c_mask), (r_ids, r_mask) = encode_pair(char_tok, DEFAULT_CHAT_TEMPLATE, to_pair(EXPLICIT[1], "x"))
    end = char_tok.hf.token_to_id("<|end|>")
    assert char_tok.decode([i for i, m in zip(c_ids, c_mask) if m]) == "hi again<|end|>"  # not "hello"
    assert char_tok.decode([i for i, m in zip(r_ids, r_mask) if m]) == "no<|end|>"
    assert c_ids[-1] == end and c_mask[-1]
    n_prompt = sum(1 for m in c_mask if not m)
    assert c_ids[:n_prompt] == r_ids[:n_prompt]  # the shared prompt renders identically
    assert last_turn_mask([True, False, True, True, False]) == [False, False, True, True, False]


@pytest.mark.parametrize("record, needle", [
    ({"prompt": "p", "chosen": "a"}, "no field 'rejected'"),
    ({"chosen": "a", "rejected": "b"}, "no field 'prompt'"),
    ({"prompt": "p", "chosen": "same", "rejected": "same"}, "identical"),
    ({"prompt": "p", "chosen": "  ", "rejected": "b"}, "field 'chosen' is empty"),
    ({"prompt": "p", "chosen": [{"role": "assistant", "content": "a"}, {"role": "user", "content": "u"}],
      "rejected": "b"}, "must end with an assistant turn"),
    ({"prompt": "p", "chosen": "a", "rejected": "b", "score_chosen": "high"}, "'score_chosen' must be a number"),
    ({"chosen": [{"role": "user", "content": "x"}, {"role": "assistant", "content": "a"}],
      "rejected": [{"role": "user", "content": "y"}, {"role": "assistant", "content": "b"}]}, "sharing no prefix"),
])
def test_bad_records_name_file_line_and_field(tmp_path, record, needle):
    path = write_jsonl(tmp_path / "bad.jsonl", [EXPLICIT[0], record])
    with pytest.raises(DataError, match=needle) as e:
        load_pairs(str(path))
    assert f"{path}:2" in str(e.value)


def test_shakespeare_pairs_real_reply_against_another_scene():
    """The embedded pairs: chosen is the window's real last speech, rejected a different speech; train and
    held-out pairs come from disjoint plays; the same pairs every time."""
    from banyan.data.dialogue import VAL_PLAYS, dialogue_conversations, dialogue_pairs

    val = load_pairs("shakespeare-pairs", split="val")
    convs = list(dialogue_conversations("val"))
    assert 0 < len(val) <= len(convs)
    assert val[0].prompt == convs[0][:-1] and val[0].chosen == [convs[0][-1]]
    assert all(p.chosen != p.rejected for p in val)
    plays = {p.prompt[0].content.rsplit(" in ", 1)[1] for p in val}
    train_plays = {p.prompt[0].content.rsplit(" in ", 1)[1] for p in load_pairs("shakespeare-pairs", max_pairs=3000)}
    assert plays and not plays & train_plays and len(plays) <= len(VAL_PLAYS)
    # rejected is a speech of another scene: never the reply of a window of the same scene
    first = list(dialogue_pairs("val"))[:50]
    assert first == list(dialogue_pairs("val"))[:50]
    scene_replies = {c[-1].content for c in convs[:3]}
    assert not {r["rejected"] for r in first[:3]} & scene_replies
    with pytest.raises(DataError, match="split"):
        next(dialogue_pairs("test"))


def test_dpo_on_shakespeare_pairs_holds_out_the_val_plays(char_tok):
    from banyan.train.dpo import DPOSection, open_pairs

    class Cfg:
        class train:
            seq_len = 4096  # a character tokenizer: every pair fits

    sec = DPOSection(data="shakespeare-pairs", max_pairs=20, max_val_pairs=7)
    train, val = open_pairs(Cfg, sec, char_tok, DEFAULT_CHAT_TEMPLATE)
    assert len(train) == 20 and len(val) == 7
