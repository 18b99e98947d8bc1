"""Arithmetic word problems: RL's built-in verifiable task, in both directions.

A problem is a user question and an assistant answer (``The answer is 7.``). Forward, the model
is given the question and writes the answer; backward, it is given the answer and writes a
question whose answer it is. Both rewards read reading-order text: :func:`answer_reward` parses
the last number of an answer, :func:`question_reward` solves a question with the templates'
own grammar. Partial credit for a near miss keeps the reward dense enough for small models.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

NAMES = ("Sam", "Ana", "Tom", "Mia", "Leo", "Ivy", "Max", "Zoe")
THINGS = ("apples", "books", "coins", "cards", "pens", "shells", "stones", "cups")
MAX_OPERAND = 20

# (template, operation): every template names its two numbers in reading order
TEMPLATES = (
    ("What is {a} plus {b}?", "+"),
    ("What is {a} minus {b}?", "-"),
    ("{name} has {a} {thing} and gets {b} more. How many {thing} does {name} have now?", "+"),
    ("{name} has {a} {thing} and gives away {b}. How many {thing} are left?", "-"),
)
_SOLVERS = (
    (re.compile(r"(\d+)\s+plus\s+(\d+)"), "+"),
    (re.compile(r"(\d+)\s+minus\s+(\d+)"), "-"),
    (re.compile(r"has\s+(\d+)\s+\w+\s+and\s+gets\s+(\d+)\s+more"), "+"),
    (re.compile(r"has\s+(\d+)\s+\w+\s+and\s+gives\s+away\s+(\d+)"), "-"),
)
_NUMBER = re.compile(r"-?\d+")


@dataclass(frozen=True)
class Problem:
    """One word problem: the question, its integer answer, and the answer as the model says it."""

    question: str
    answer: int

    @property
    def answer_text(self) -> str:
        return answer_text(self.answer)

    def messages(self) -> list[dict[str, str]]:
        """The problem as a two-turn conversation (reading order)."""
        return [{"role": "user", "content": self.question},
                {"role": "assistant", "content": self.answer_text}]


def answer_text(answer: int) -> str:
    """How an assistant states an answer."""
    return f"The answer is {answer}."


def make_problem(rng: random.Random) -> Problem:
    """A random problem; subtraction never goes below zero."""
    template, op = rng.choice(TEMPLATES)
    a, b = rng.randint(0, MAX_OPERAND), rng.randint(0, MAX_OPERAND)
    if op == "-" and b > a:
        a, b = b, a
    text = template.format(a=a, b=b, name=rng.choice(NAMES), thing=rng.choice(THINGS))
    return Problem(text, a + b if op == "+" else a - b)


def problems(n: int, seed: int) -> list[Problem]:
    """``n`` problems from a seeded generator (the same list for the same seed)."""
    rng = random.Random(seed)
    return [make_problem(rng) for _ in range(n)]


def solve(question: str) -> int | None:
    """The answer to a question in the templates' grammar, or None if it has none."""
    for pattern, op in _SOLVERS:
        m = pattern.search(question)
        if m:
            a, b = int(m.group(1)), int(m.group(2))
            return a + b if op == "+" else a - b
    return None


def _closeness(got: int, want: int) -> float:
    return max(0.0, 1.0 - abs(got - want) / 10.0)


def answer_reward(text: str, answer: int) -> float:
    """Reward of a forward answer: 1 when its last number is right, partial when close."""
    numbers = _NUMBER.findall(text)
    if not numbers:
        return 0.0
    got = int(numbers[-1])
    return 1.0 if got == answer else 0.1 + 0.4 * _closeness(got, answer)


def question_reward(text: str, answer: int) -> float:
    """Reward of a backward question: 1 when it solves to ``answer``, partial otherwise."""
    got = solve(text)
    if got is None:
        return 0.1 if text.rstrip().endswith("?") else 0.0
    return 1.0 if got == answer else 0.2 + 0.3 * _closeness(got, answer)


def parse_answer(text: str) -> int | None:
    """The integer an assistant answer states (its last number), or None."""
    numbers = _NUMBER.findall(text)
    return int(numbers[-1]) if numbers else None
