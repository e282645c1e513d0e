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

    assert worked(prob(47, "+", 85, 132)) == "7+5=12, 4+8+1=13, so 132"
    assert worked(prob(7, "+", 41, 48)) == "1+7=8, 4+0=4, so 48"
    assert worked(prob(52, "-", 29, 23)) == "12-9=3, 5-2-1=2, so 23"
    assert worked(prob(5, "-", 9, -4)) == "9-5: 9-5=4, so -4"
