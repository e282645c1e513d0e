"""Reasoning tasks: deterministic problems, disjoint splits, graders (incl. refused expressions), reward functions."""

import math
import sys
import types

import pytest

from banyan.data.reasoning import (ArithmeticTask, CountdownTask, Problem, RewardError, evaluate_expression,
                                   load_reward_function, load_task)
from banyan.errors import BanyanError, ConfigError


def test_problems_are_deterministic_and_splits_never_overlap():
    a, b = load_task("arithmetic", seed=3), load_task("arithmetic", seed=3)
    assert [a.train_problem(i) for i in range(20)] == [b.train_problem(i) for i in range(20)]
    assert a.train_problem(0) != load_task("arithmetic", seed=4).train_problem(0) or \
        a.train_problem(1) != load_task("arithmetic", seed=4).train_problem(1)
    for task in (ArithmeticTask(0, max_digits=1, ops="+"), CountdownTask(1)):  # 1-digit +: only 100 problems
        train = {task.train_problem(i).prompt for i in range(300)}
        held = {p.prompt for p in task.held_out(30)}
        assert train and held and not train & held
        assert all(not task.train_problem(i).held_out for i in range(20))


def test_arithmetic_grader_exact_match_of_last_number():
    t = ArithmeticTask(0, max_digits=3)
    p = Problem("What is 12 * 11?", "132")
    assert t.score(p, "12 * 11 = 132") == 1.0
    assert t.score(p, "132, no wait 131") == 0.0  # the LAST number counts
    assert t.score(p, "1320") == 0.0 and t.score(p, "no idea") == 0.0
    assert t.score(Problem("What is 3 - 7?", "-4"), "it is -4") == 1.0
    for i in range(30):  # every generated answer grades itself right
        q = t.train_problem(i)
        assert t.score(q, f"The answer is {q.answer}") == 1.0
        a, b, op = q.meta["a"], q.meta["b"], q.meta["op"]
        assert q.prompt == f"What is {a} {op} {b}?" and 0 <= a < 1000 and 0 <= b < 1000
    with pytest.raises(ConfigError, match="subset of"):
        ArithmeticTask(0, ops="+/")


def test_countdown_grader_and_refused_expressions(monkeypatch):
    t = CountdownTask(0)
    p = Problem("make 46", "46", {"numbers": [3, 7, 25], "target": 46})
    assert t.score(p, "3 * 7 + 25") == 1.0
    assert t.score(p, "Let me think.\n(25 + 3 * 7) = 46") == 1.0  # last line, text after '=' dropped
    assert t.score(p, "3 * 7 + 25 + 3") == 0.0   # 3 used twice
    assert t.score(p, "2 * 23") == 0.0           # numbers not given
    assert t.score(p, "25 / (7 - 7)") == 0.0     # 7 twice; and a division by zero grades 0, not an error
    assert t.score(Problem("", "5", {"numbers": [10, 2], "target": 5}), "10 / 2") == 1.0
    assert t.score(Problem("", "1", {"numbers": [1, 3, 2], "target": 1}), "(1/3)*3") == 0.0  # 3 used twice
    called = []
    monkeypatch.setattr("builtins.eval", lambda *a: called.append(a))
    for evil in ("__import__('os').system('touch /tmp/pwned')", "3 ** 7", "(lambda: 1)()", "x + 1", "3 @ 7",
                 "1.5 * 2", "-3 + 49", "[3][0]", "3 if 1 else 7", "9" * 300):
        assert t.score(p, evil) == 0.0
        with pytest.raises(BanyanError):
            evaluate_expression(evil)
    assert not called
    for i in range(30):  # every generated problem is solvable: its construction grades 1
        q = t.train_problem(i)
        assert t.score(q, q.meta["solution"]) == 1.0 and evaluate_expression(q.meta["solution"])[0] == q.meta["target"]


def test_unknown_task_suggests_the_closest():
    with pytest.raises(ConfigError, match="did you mean 'countdown'"):
        load_task("countdwn")


def test_reasoning_gym_adapter():
    pytest.importorskip("reasoning_gym")
    t = load_task("rg:basic_arithmetic", seed=0)
    p = t.train_problem(0)
    assert t.score(p, p.answer) == 1.0 and not p.held_out
    with pytest.raises(ConfigError, match="no dataset"):
        load_task("rg:no_such_dataset_xyz")


def test_reasoning_gym_missing_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "reasoning_gym", None)  # import fails as if not installed
    with pytest.raises(ConfigError, match="pip install reasoning-gym"):
        load_task("rg:countdown")


def test_reward_functions(monkeypatch):
    mod = types.ModuleType("rewards_under_test")
    mod.starts_a = lambda prompt, completion: float(completion.startswith("a"))
    mod.boom = lambda prompt, completion: 1 / 0
    mod.nan = lambda prompt, completion: math.nan
    mod.text = lambda prompt, completion: "high"
    mod.flag = lambda prompt, completion: True
    monkeypatch.setitem(sys.modules, "rewards_under_test", mod)
    assert load_reward_function("rewards_under_test:starts_a")("q", "abc") == 1.0
    assert load_reward_function("rewards_under_test:flag")("q", "") == 1.0
    with pytest.raises(RewardError, match=r"rewards_under_test:boom raised ZeroDivisionError.*prompt 'What is'"):
        load_reward_function("rewards_under_test:boom")("What is", "x")
    for name in ("nan", "text"):
        with pytest.raises(RewardError, match=f"rewards_under_test:{name} returned .*not a finite number"):
            load_reward_function(f"rewards_under_test:{name}")("q", "x")
    with pytest.raises(ConfigError, match="has no 'missing'"):
        load_reward_function("rewards_under_test:missing")
    with pytest.raises(ConfigError, match="cannot import"):
        load_reward_function("no_such_module_xyz:f")
    with pytest.raises(ConfigError, match="module:function"):
        load_reward_function("nocolon")


def test_reward_function_from_the_working_directory_or_a_file(tmp_path, monkeypatch):
    """`banyan grpo --grpo.reward my_rewards:fn` finds my_rewards.py in the working directory (the console
    script does not put it on sys.path), and `path/to/file.py:fn` loads that file; sys.path is left as it was."""
    (tmp_path / "cwd_rewards_xyz.py").write_text("def length(prompt, completion):\n    return len(completion)\n")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "file_rewards.py").write_text("def one(prompt, completion):\n    return 1\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    before = list(sys.path)
    assert load_reward_function("cwd_rewards_xyz:length")("q", "abcd") == 4.0
    assert load_reward_function(str(tmp_path / "sub" / "file_rewards.py") + ":one")("q", "") == 1.0
    assert sys.path == before
    with pytest.raises(ConfigError, match="no such file"):
        load_reward_function("sub/missing.py:one")
    (tmp_path / "broken_rewards_xyz.py").write_text("def f(:\n")
    with pytest.raises(ConfigError, match="SyntaxError"):
        load_reward_function("broken_rewards_xyz.py:f")
