"""Verifiable reasoning tasks for GRPO: problems from a seed, graders, and Python reward functions.

    load_task("arithmetic" | "countdown" | "rg:NAME", seed, ...)  -> a ReasoningTask
    task.train_problem(i), task.held_out(n)                        deterministic Problems
    task.score(problem, completion) -> float in [0, 1]             the verifier
    load_reward_function("module:function")                        fn(prompt, completion) -> float

Built-in tasks:
  arithmetic  "What is 37 * 4?"; add / subtract / multiply of two numbers of 1..max_digits digits;
              graded by exact match of the LAST integer in the completion with the answer
  countdown   "Using the numbers [3, 7, 25], make 46 ..."; the completion's last line, up to an '=',
              is parsed with `ast` (numbers and + - * / and parentheses only, nothing is evaluated by
              Python), every number must be one of the given ones and each used at most once; the
              value is computed exactly with fractions; 1.0 when it equals the target
  rg:NAME     a reasoning-gym dataset (optional extra `pip install reasoning-gym`): its items'
              question as the prompt and its own `score_answer` as the grader

Train / held-out split: a problem belongs to the held-out set when sha256(its text) % 10 == 0, so
the two never share a problem whatever seeds or counts are used; problem i of a split is the first
candidate of the stream (seed, split, i, attempt) that falls in it.

Reward functions (`module:function`) are imported with importlib; a call that raises or returns a
non-number, NaN or inf is a RewardError naming the function and the prompt (no silent skip: a
broken reward would otherwise train on garbage).
"""

from __future__ import annotations

import abc
import ast
import difflib
import hashlib
import importlib
import math
import random
import re
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Callable

from banyan.errors import BanyanError, ConfigError

BUILTIN = ("arithmetic", "countdown")
HELD_OUT_MOD = 10  # one problem in ten is held out
MAX_EXPRESSION_CHARS = 200


class RewardError(BanyanError):
    """A reward function raised, or returned something that is not a finite number."""


@dataclass(frozen=True)
class Problem:
    prompt: str                                # the user turn
    answer: str                                # the reference answer (countdown: the target)
    meta: dict = field(default_factory=dict, compare=False, hash=False)

    @property
    def key(self) -> str:
        return hashlib.sha256(self.prompt.encode()).hexdigest()

    @property
    def held_out(self) -> bool:
        return int(self.key[:16], 16) % HELD_OUT_MOD == 0


class ReasoningTask(abc.ABC):
    """A problem generator and its verifier; subclasses give `candidate` and `score`."""

    name = "task"

    def __init__(self, seed: int = 0):
        self.seed = seed

    @abc.abstractmethod
    def candidate(self, rng: random.Random, index: int, split: str) -> Problem:
        """A problem drawn from `rng` (`index` numbers the draw, for sources indexed by position)."""

    @abc.abstractmethod
    def score(self, problem: Problem, completion: str) -> float:
        """The completion's grade in [0, 1]."""

    def problem(self, split: str, i: int) -> Problem:
        """Problem i of `split` ("train" or "held-out"): a pure function of (seed, split, i)."""
        want = split == "held-out"
        for attempt in range(1000):
            rng = random.Random(f"{self.seed}|{split}|{i}|{attempt}")
            p = self.candidate(rng, i * 1000 + attempt, split)
            if p.held_out == want:
                return p
        raise BanyanError(f"task {self.name}: no {split} problem found for index {i} (problem space too small?)")

    def train_problem(self, i: int) -> Problem:
        return self.problem("train", i)

    def held_out(self, n: int) -> list[Problem]:
        return [self.problem("held-out", i) for i in range(n)]


LAST_INT = re.compile(r"-?\d+")


class ArithmeticTask(ReasoningTask):
    """Two-operand + - * with 1..max_digits digits per operand; the last integer of the completion is graded."""

    name = "arithmetic"

    def __init__(self, seed: int = 0, max_digits: int = 2, ops: str = "+-*", min_digits: int = 1):
        super().__init__(seed)
        if not 1 <= min_digits <= max_digits:
            raise ConfigError(f"arithmetic digits: need 1 <= min_digits <= max_digits, got {min_digits}, {max_digits}")
        bad = sorted(set(ops) - set("+-*"))
        if bad or not ops:
            raise ConfigError(f"arithmetic ops must be a non-empty subset of '+-*', got {ops!r}")
        self.min_digits, self.max_digits, self.ops = min_digits, max_digits, ops

    def _number(self, rng: random.Random) -> int:
        d = rng.randint(self.min_digits, self.max_digits)
        return rng.randint(0 if d == 1 else 10 ** (d - 1), 10 ** d - 1)

    def candidate(self, rng: random.Random, index: int, split: str) -> Problem:
        a, b, op = self._number(rng), self._number(rng), rng.choice(self.ops)
        value = {"+": a + b, "-": a - b, "*": a * b}[op]
        return Problem(f"What is {a} {op} {b}?", str(value), {"a": a, "b": b, "op": op})

    def score(self, problem: Problem, completion: str) -> float:
        found = LAST_INT.findall(completion)
        return float(bool(found) and found[-1].lstrip("+") == problem.answer)


class CountdownTask(ReasoningTask):
    """Reach a target from n given numbers with + - * / (each number at most once); solvable by construction."""

    name = "countdown"

    def __init__(self, seed: int = 0, n_numbers: int = 3, max_number: int = 20):
        super().__init__(seed)
        if n_numbers < 2 or max_number < 2:
            raise ConfigError(f"countdown needs n_numbers >= 2 and max_number >= 2, got {n_numbers}, {max_number}")
        self.n_numbers, self.max_number = n_numbers, max_number

    def candidate(self, rng: random.Random, index: int, split: str) -> Problem:
        nums = [rng.randint(1, self.max_number) for _ in range(self.n_numbers)]
        # a target reachable by construction: fold the numbers left to right with + - * (positive result)
        value, expr = nums[0], str(nums[0])
        for n in nums[1:]:
            op = rng.choice("+-*" if value - n > 0 else "+*")
            value, expr = {"+": value + n, "-": value - n, "*": value * n}[op], f"({expr} {op} {n})"
        prompt = (f"Using the numbers {nums}, make {value}. Use + - * / and each number at most once; "
                  f"answer with the expression.")
        return Problem(prompt, str(value), {"numbers": nums, "target": value, "solution": expr})

    def score(self, problem: Problem, completion: str) -> float:
        lines = [ln for ln in completion.strip().splitlines() if ln.strip()]
        if not lines:
            return 0.0
        expr = lines[-1].split("=")[0]
        start = next((i for i, c in enumerate(expr) if c.isdigit() or c == "("), None)
        if start is None:
            return 0.0
        try:
            value, used = evaluate_expression(expr[start:])
        except (BanyanError, ZeroDivisionError):
            return 0.0
        pool = list(problem.meta["numbers"])
        for n in used:
            if n not in pool:
                return 0.0
            pool.remove(n)
        return float(value == problem.meta["target"])


def evaluate_expression(text: str) -> tuple[Fraction, list[int]]:
    """(exact value, integers used) of an arithmetic expression; only non-negative integer literals,
    + - * / and parentheses are allowed (anything else, e.g. a name, call or power, is a BanyanError).
    Parsed with ast, computed by walking the tree: no eval/exec."""
    if len(text) > MAX_EXPRESSION_CHARS:
        raise BanyanError(f"expression longer than {MAX_EXPRESSION_CHARS} characters")
    try:
        tree = ast.parse(text.strip(), mode="eval")
    except (SyntaxError, ValueError) as e:
        raise BanyanError(f"not an expression: {e}") from None
    used: list[int] = []
    ops = {ast.Add: lambda a, b: a + b, ast.Sub: lambda a, b: a - b, ast.Mult: lambda a, b: a * b,
           ast.Div: lambda a, b: a / b}

    def walk(node) -> Fraction:
        if isinstance(node, ast.BinOp) and type(node.op) in ops:
            return ops[type(node.op)](walk(node.left), walk(node.right))
        if isinstance(node, ast.Constant) and type(node.value) is int and node.value >= 0:
            used.append(node.value)
            return Fraction(node.value)
        raise BanyanError(f"'{type(node).__name__}' is not allowed (numbers and + - * / only)")

    return walk(tree.body), used


class ReasoningGymTask(ReasoningTask):
    """A reasoning-gym dataset: item['question'] as the prompt, dataset.score_answer(answer, entry) as grader."""

    def __init__(self, dataset: str, seed: int = 0, size: int = 100_000):
        super().__init__(seed)
        try:
            import reasoning_gym
        except ImportError:
            raise ConfigError(f"task rg:{dataset} needs reasoning-gym: pip install reasoning-gym") from None
        self.name = f"rg:{dataset}"
        self.data = {}
        for split, offset in (("train", 0), ("held-out", 1)):
            try:
                self.data[split] = reasoning_gym.create_dataset(dataset, size=size, seed=seed * 2 + offset)
            except Exception as e:  # noqa: BLE001 - reasoning-gym raises several types for an unknown name
                known = sorted(getattr(getattr(reasoning_gym, "factory", None), "DATASETS", {}) or [])
                close = difflib.get_close_matches(dataset, known, n=1)
                hint = f"; did you mean rg:{close[0]}?" if close else ""
                raise ConfigError(f"reasoning-gym has no dataset {dataset!r} ({type(e).__name__}: {e}){hint}") from None
        self.size = size

    def candidate(self, rng: random.Random, index: int, split: str) -> Problem:
        entry = self.data[split][index % self.size]
        return Problem(str(entry["question"]), str(entry["answer"]), {"entry": entry, "split": split})

    def score(self, problem: Problem, completion: str) -> float:
        entry = problem.meta["entry"]
        return float(self.data[problem.meta["split"]].score_answer(answer=completion.strip(), entry=entry))


def load_task(spec: str, seed: int = 0, max_digits: int = 2, ops: str = "+-*", n_numbers: int = 3,
              max_number: int = 20, min_digits: int = 1) -> ReasoningTask:
    """The task named `spec`: arithmetic, countdown or rg:NAME (an unknown name suggests the closest)."""
    if spec == "arithmetic":
        return ArithmeticTask(seed, max_digits=max_digits, ops=ops, min_digits=min_digits)
    if spec == "countdown":
        return CountdownTask(seed, n_numbers=n_numbers, max_number=max_number)
    if spec.startswith("rg:"):
        return ReasoningGymTask(spec[3:], seed)
    close = difflib.get_close_matches(spec, list(BUILTIN), n=1)
    hint = f"; did you mean '{close[0]}'?" if close else ""
    raise ConfigError(f"unknown task {spec!r}: expected one of {', '.join(BUILTIN)} or rg:NAME{hint}")


def import_reward_module(module: str):
    """A module by file path (`my_rewards.py`) or by name, found on sys.path or in the working directory
    (the `banyan` console script, unlike `python -m`, does not put the working directory on sys.path)."""
    import importlib.util
    import os
    import sys

    if module.endswith(".py"):
        spec = importlib.util.spec_from_file_location(Path(module).stem, module)
        if spec is None or spec.loader is None or not Path(module).is_file():
            raise ImportError(f"no such file {module}")
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        return mod
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as e:
        if e.name != module.split(".")[0] or os.getcwd() in sys.path:
            raise
    sys.path.insert(0, os.getcwd())
    try:
        return importlib.import_module(module)
    finally:
        sys.path.remove(os.getcwd())


def load_reward_function(spec: str) -> Callable[[str, str], float]:
    """`module:function` -> a checked callable (prompt, completion) -> finite float (RewardError otherwise)."""
    module, sep, name = spec.rpartition(":")
    if not sep or not module or not name:
        raise ConfigError(f"reward function must be 'module:function' or 'path/to/file.py:function', got {spec!r}")
    try:
        fn = getattr(import_reward_module(module), name)
    except (ImportError, OSError, SyntaxError) as e:
        raise ConfigError(f"reward function {spec}: cannot import {module!r} ({type(e).__name__}: {e})") from None
    except AttributeError:
        raise ConfigError(f"reward function {spec}: module {module!r} has no {name!r}") from None
    if not callable(fn):
        raise ConfigError(f"reward function {spec} is not callable")

    def checked(prompt: str, completion: str) -> float:
        try:
            value = fn(prompt, completion)
        except Exception as e:  # noqa: BLE001 - any failure of user code: one clear line
            raise RewardError(f"reward function {spec} raised {type(e).__name__}: {e} (prompt {prompt[:80]!r})") from None
        try:
            out = float(value)  # bool, int, float, numpy and 0-d torch scalars
        except (TypeError, ValueError):
            out = math.nan
        if not math.isfinite(out):
            raise RewardError(f"reward function {spec} returned {value!r}, not a finite number "
                              f"(prompt {prompt[:80]!r})")
        return out

    checked.__name__ = name
    return checked
