"""Conversation reader: every format in its real schema, every source kind, bad input, shakespeare-dialogue."""

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from banyan.data import DataError
from banyan.data.chat import Turn, iter_conversations, load_conversations

ALPACA = [  # the Alpaca schema: input may be empty
    {"instruction": "Give three tips for staying healthy.", "input": "",
     "output": "1. Eat a balanced diet.\n2. Exercise.\n3. Sleep."},
    {"instruction": "Translate to French.", "input": "Good night", "output": "Bonne nuit"},
]
DOLPHIN = {"instruction": "You are an AI assistant. Answer briefly.", "input": "What is 2+2?", "output": "4"}
SHAREGPT_V3 = [  # the ShareGPT V3 unfiltered cleaned split: one JSON list, an id per record
    {"id": "QWJhYvA_0", "conversations": [{"from": "human", "value": "Summarize Hamlet."},
                                          {"from": "gpt", "value": "A prince avenges his father."},
                                          {"from": "human", "value": "Shorter?"},
                                          {"from": "gpt", "value": "Revenge."}]},
    {"id": "i6IyJda_0", "conversations": [{"from": "system", "value": "Be terse."},
                                          {"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello."}]},
]
MESSAGES = {"messages": [{"role": "system", "content": "You are helpful."}, {"role": "user", "content": "Hi"},
                         {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "Bye"},
                         {"role": "assistant", "content": "Goodbye."}]}
CONV_MESSAGES = [Turn("system", "You are helpful."), Turn("user", "Hi"), Turn("assistant", "Hello!"),
                 Turn("user", "Bye"), Turn("assistant", "Goodbye.")]


def jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return str(path)


def test_alpaca_and_dolphin_jsonl(tmp_path):
    convs, stats = load_conversations(jsonl(tmp_path / "flan1m-alpaca-uncensored.jsonl", ALPACA + [DOLPHIN]))
    assert convs == [
        [Turn("user", "Give three tips for staying healthy."), Turn("assistant", ALPACA[0]["output"])],
        [Turn("user", "Translate to French.\n\nGood night"), Turn("assistant", "Bonne nuit")],
        [Turn("user", "You are an AI assistant. Answer briefly.\n\nWhat is 2+2?"), Turn("assistant", "4")],
    ]
    assert stats.docs == 3 and stats.skipped_invalid == 0


def test_sharegpt_v3_json_list_and_jsonl(tmp_path):
    (tmp_path / "sg.json").write_text(json.dumps(SHAREGPT_V3, indent=2), encoding="utf-8")
    convs, _ = load_conversations(str(tmp_path / "sg.json"))
    assert [[t.role for t in c] for c in convs] == [["user", "assistant", "user", "assistant"],
                                                   ["system", "user", "assistant"]]
    assert convs[0][3] == Turn("assistant", "Revenge.")
    assert load_conversations(jsonl(tmp_path / "sg.jsonl", SHAREGPT_V3))[0] == convs
    (tmp_path / "lines.json").write_text("".join(json.dumps(r) + "\n" for r in SHAREGPT_V3))  # jsonl named .json
    assert load_conversations(str(tmp_path / "lines.json"))[0] == convs


def test_messages_parquet_folder_and_prompt_completion(tmp_path):
    pq.write_table(pa.Table.from_pylist([MESSAGES, MESSAGES]), tmp_path / "chat.parquet")
    assert load_conversations(str(tmp_path / "chat.parquet"))[0] == [CONV_MESSAGES, CONV_MESSAGES]
    pc = [{"prompt": "2+2?", "completion": "4"},
          {"prompt": [{"role": "user", "content": "Hi"}], "completion": [{"role": "assistant", "content": "Yo"}]}]
    jsonl(tmp_path / "pc.jsonl", pc)
    assert load_conversations(str(tmp_path / "pc.jsonl"))[0] == [
        [Turn("user", "2+2?"), Turn("assistant", "4")], [Turn("user", "Hi"), Turn("assistant", "Yo")]]
    # a folder: every chat file, sorted; the first record fixes the format for the whole source
    sub = tmp_path / "dir"
    sub.mkdir()
    jsonl(sub / "a.jsonl", [MESSAGES])
    jsonl(sub / "b.jsonl", [MESSAGES])
    assert load_conversations(str(sub))[0] == [CONV_MESSAGES, CONV_MESSAGES]


def test_hf_streaming_on_local_file(tmp_path):
    path = jsonl(tmp_path / "m.jsonl", [MESSAGES, MESSAGES, MESSAGES])
    convs = list(iter_conversations("hf:json", hf_data_files=path, max_conversations=2))
    assert convs == [CONV_MESSAGES, CONV_MESSAGES]


def test_forced_format(tmp_path):
    path = jsonl(tmp_path / "x.jsonl", [{"instruction": "a", "output": "b", "messages": []}])
    assert load_conversations(path, format="alpaca")[0] == [[Turn("user", "a"), Turn("assistant", "b")]]
    with pytest.raises(DataError, match=r"x.jsonl:1: conversation has no assistant turn"):
        load_conversations(path)  # auto: 'messages' (empty) wins
    with pytest.raises(DataError, match=r"x.jsonl:1: no field 'conversations'"):
        load_conversations(path, format="sharegpt")
    with pytest.raises(DataError, match="unknown chat format 'chatml'"):
        load_conversations(path, format="chatml")
    with pytest.raises(DataError, match="chat source is empty"):
        load_conversations("")


BAD = [  # (record, expected message fragment, reason kind)
    ({"conversations": [{"from": "human", "value": "hi"}]}, "conversation has no assistant turn", "no_assistant"),
    ({"conversations": [{"from": "human", "value": "hi"}, {"from": "bot", "value": "x"}]},
     "conversations[1].from: unknown value 'bot'", "unknown_role"),
    ({"conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "  "}]},
     "field 'conversations[1].value' is empty", "empty_content"),
    ({"conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": 3}]},
     "field 'conversations[1].value' must be a string, got int", "schema"),
]


@pytest.mark.parametrize("record,fragment,kind", BAD)
def test_bad_record_names_file_line_and_field(tmp_path, record, fragment, kind):
    path = jsonl(tmp_path / "bad.jsonl", [SHAREGPT_V3[0], record])
    with pytest.raises(DataError) as err:
        load_conversations(path)
    assert f"bad.jsonl:2: {fragment}" in str(err.value)
    assert len(str(err.value).splitlines()) == 1


def test_bad_messages_role_and_json_list_record_index(tmp_path):
    bad = {"messages": [{"role": "user", "content": "hi"}, {"role": "robot", "content": "x"}]}
    (tmp_path / "m.json").write_text(json.dumps([MESSAGES, bad]))
    with pytest.raises(DataError, match=r"m.json: record 1: messages\[1\].role: unknown value 'robot'"):
        load_conversations(str(tmp_path / "m.json"))


def test_malformed_json_names_file_and_line(tmp_path):
    (tmp_path / "a.jsonl").write_text(json.dumps(MESSAGES) + "\n\n{\"messages\": [oops\n")
    with pytest.raises(DataError, match=r"a.jsonl:3: not valid JSON"):
        load_conversations(str(tmp_path / "a.jsonl"))
    (tmp_path / "b.json").write_text('[\n  {"messages": []},\n  {"messages": ]\n]')
    with pytest.raises(DataError, match=r"b.json:3: not valid JSON"):
        load_conversations(str(tmp_path / "b.json"))
    with pytest.raises(DataError, match=r"c.jsonl:1: cannot tell the chat format \(keys \['text'\]\)"):
        load_conversations(jsonl(tmp_path / "c.jsonl", [{"text": "plain"}]))


def test_skip_invalid_counts_each_reason(tmp_path):
    path = tmp_path / "mixed.jsonl"
    lines = [json.dumps(SHAREGPT_V3[0]), "{not json"] + [json.dumps(r) for r, _, _ in BAD]
    lines.append(json.dumps(SHAREGPT_V3[1]))
    path.write_text("\n".join(lines) + "\n")
    convs, stats = load_conversations(str(path), skip_invalid=True)
    assert len(convs) == 2 and stats.docs == 2
    assert dict(stats.reasons) == {"malformed_json": 1, "no_assistant": 1, "unknown_role": 1, "empty_content": 1,
                                   "schema": 1}
    assert stats.skipped_invalid == 5 and "mixed.jsonl:2" in stats.examples[0]
    path.write_text("\n".join([json.dumps({"text": "no format"}), json.dumps(MESSAGES)]) + "\n")
    convs, stats = load_conversations(str(path), skip_invalid=True)  # the first detectable record decides
    assert convs == [CONV_MESSAGES] and dict(stats.reasons) == {"schema": 1}
    path.write_text("{not json\n")
    with pytest.raises(DataError, match=r"no valid conversations \(1 invalid skipped"):
        load_conversations(str(path), skip_invalid=True)


def test_shakespeare_dialogue_splits_hold_out_whole_plays():
    from banyan.data.dialogue import VAL_PLAYS, play_of

    train = list(iter_conversations("shakespeare-dialogue", split="train"))
    val = list(iter_conversations("shakespeare-dialogue", split="val"))
    train_plays, val_plays = {play_of(c) for c in train}, {play_of(c) for c in val}
    assert not train_plays & val_plays
    assert len(val_plays) == len(VAL_PLAYS) and len(train_plays) == 38 - len(VAL_PLAYS)
    assert len(train) > 5000 and len(val) > 500
    for conv in train[:200] + val[:200]:
        roles = [t.role for t in conv]
        assert roles in (["system", "user", "assistant"], ["system", "user", "assistant", "user", "assistant"])
        assert conv[0].content.startswith("You are ") and all(t.content.strip() for t in conv)
        assert sum(len(t.content) for t in conv[1:]) <= 640
    hamlet = next(c for c in train if c[0].content == "You are FRANCISCO in Hamlet.")
    assert hamlet[1:3] == [Turn("user", "Who's there?"),
                           Turn("assistant", "Nay, answer me: stand, and unfold yourself.")]
    lines = [ln for c in train for t in c[1:] for ln in t.content.split("\n")]
    assert not any(ln.startswith("_") or "[Aside]" in ln for ln in lines)  # stage directions dropped
    with pytest.raises(DataError, match="split must be one of train, val"):
        list(iter_conversations("shakespeare-dialogue", split="test"))
