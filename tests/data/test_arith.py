"""The arithmetic task: every generated question solves to its answer, and the rewards read
reading-order text."""

from __future__ import annotations

import random

import pytest

from backlm.data import arith


def test_every_problem_solves_to_its_answer():
    for p in arith.problems(500, seed=0):
        assert arith.solve(p.question) == p.answer >= 0
        assert arith.parse_answer(p.answer_text) == p.answer
        assert [m["role"] for m in p.messages()] == ["user", "assistant"]


def test_problems_are_seeded():
    assert arith.problems(20, 1) == arith.problems(20, 1) != arith.problems(20, 2)
    assert arith.make_problem(random.Random("x")) == arith.make_problem(random.Random("x"))


@pytest.mark.parametrize(("text", "reward"), [
    ("The answer is 12.", 1.0), ("12", 1.0), ("I think 3, no, 12", 1.0),
    ("The answer is 13.", 0.1 + 0.4 * 0.9), ("The answer is 40.", 0.1), ("twelve", 0.0), ("", 0.0),
])
def test_answer_reward(text, reward):
    assert arith.answer_reward(text, 12) == pytest.approx(reward)


@pytest.mark.parametrize(("text", "reward"), [
    ("What is 5 plus 7?", 1.0), ("What is 20 minus 8?", 1.0),
    ("Mia has 10 cups and gets 2 more. How many cups does Mia have now?", 1.0),
    ("Leo has 15 pens and gives away 3. How many pens are left?", 1.0),
    ("What is 5 plus 8?", 0.2 + 0.3 * 0.9), ("What is the answer?", 0.1), ("plus plus", 0.0),
])
def test_question_reward(text, reward):
    assert arith.question_reward(text, 12) == pytest.approx(reward)


def test_reversed_text_earns_nothing():
    """A backward model's output is judged after it is put back into reading order: the
    characters of a right question, reversed, are not a question."""
    q = "What is 5 plus 7?"
    assert arith.question_reward(q[::-1], 12) == 0.0
