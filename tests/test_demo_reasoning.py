"""The reasoning demo's worked solutions: every one is graded correct by the task's own verifier."""

import pytest

from banyan.data.reasoning import ArithmeticTask
from banyan.demo_reasoning import worked


@pytest.mark.parametrize("ops", ["+", "-", "+-*"])
def test_worked_solutions_pass_the_verifier(ops):
    task = ArithmeticTask(seed=3, max_digits=3, ops=ops)
    for i in range(500):
        p = task.train_problem(i)
        assert task.score(p, worked(p)) == 1.0, (p.prompt, worked(p))


def test_worked_columns_carry_and_borrow():
    from banyan.data.reasoning import Problem

    def prob(a, op, b, ans):
        return Problem(f"What is {a} {op} {b}?", str(ans), {"a": a, "b": b, "op": op})

    assert worked(prob(47, "+", 85, 132)) == "7+5+0=12, 4+8+1=13, so 132"
    assert worked(prob(7, "+", 41, 48)) == "1+7+0=08, 4+0+0=04, so 48"  # the longer operand first
    assert worked(prob(52, "-", 29, 23)) == "12-9-0=3, 05-2-1=2, so 23"
    assert worked(prob(5, "-", 9, -4)) == "9-5: 09-5-0=4, so -4"
    assert worked(prob(100, "-", 1, 99)) == "10-1-0=9, 10-0-1=9, 01-0-1=0, so 99"


def test_worked_steps_have_a_fixed_width():
    """Every column step is as long as the others (the digits sit at fixed offsets), whatever the carries."""
    task = ArithmeticTask(seed=1, max_digits=3, ops="+-")
    for i in range(300):
        p = task.train_problem(i)
        body = worked(p).split(": ")[-1].rsplit(", so ", 1)[0]
        assert {len(step) for step in body.split(", ")} == {8}, (p.prompt, worked(p))


def test_sft_chats_mix_direct_and_worked_answers(tmp_path):
    """--direct: that share of the SFT answers is "so ANSWER"; every answer, direct or worked, is correct."""
    import json

    from banyan.demo_reasoning import write_chats

    task = ArithmeticTask(seed=0, max_digits=2, ops="+")
    for direct, lo, hi in ((0.0, 0, 0), (0.5, 0.42, 0.58), (1.0, 1.0, 1.0)):
        rows = [json.loads(line) for line in write_chats(task, tmp_path / f"c{direct}.jsonl", 400, 7, direct).open()]
        answers = [r["messages"][1]["content"] for r in rows]
        share = sum("=" not in a for a in answers) / len(answers)
        assert lo <= share <= hi, (direct, share)
        for i, a in enumerate(answers):
            assert task.score(task.train_problem(7 + i), a) == 1.0, a
    again = write_chats(task, tmp_path / "again.jsonl", 400, 7, 0.5).read_text()
    assert again == (tmp_path / "c0.5.jsonl").read_text()  # a fixed draw
