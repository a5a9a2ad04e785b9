"""Built-in synthetic arithmetic word problems with exact answers, generated from a seed.

Each problem applies 1..(max_operands-1) operations in sequence to a starting quantity, as
a short story ("Mia has 12 marbles. She gets 7 more. ...") or as a plain instruction
("Start with 12, add 7, then multiply by 3."). Division is used only where it is exact and
subtraction never goes below zero, so every answer is a non-negative integer.
"""

from __future__ import annotations

import random
from fractions import Fraction

from wfopt.datasets.base import Problem

NAMES = ["Mia", "Tom", "Ava", "Leo", "Zoe", "Sam", "Ivy", "Max", "Lily", "Ben"]
OBJECTS = ["apples", "marbles", "stickers", "books", "coins", "pencils", "cards", "shells"]

STORY = {
    "+": "{name} gets {n} more {obj}.",
    "-": "{name} gives away {n} {obj}.",
    "*": "Then the number of {obj} {name} has becomes {n} times as large.",
    "/": "{name} splits the {obj} into {n} equal piles and keeps one pile.",
}
PLAIN = {"+": "add {n}", "-": "subtract {n}", "*": "multiply by {n}", "/": "divide by {n}"}


def _step(rng: random.Random, value: int, ops: list[str], max_value: int) -> tuple[str, int]:
    """Pick an operation and operand that keep the running value a non-negative integer."""
    choices = list(ops)
    rng.shuffle(choices)
    for op in choices:
        if op == "+":
            return op, rng.randint(1, max_value)
        if op == "-" and value >= 1:
            return op, rng.randint(1, min(value, max_value))
        if op == "*":
            return op, rng.randint(2, max(2, min(max_value, 9)))
        if op == "/":
            divisors = [d for d in range(2, min(value, max_value) + 1) if value % d == 0]
            if divisors:
                return op, rng.choice(divisors)
    return "+", rng.randint(1, max_value)


def _apply(value: int, op: str, n: int) -> int:
    result = {"+": value + n, "-": value - n, "*": value * n, "/": Fraction(value, n)}[op]
    assert Fraction(result).denominator == 1
    return int(result)


def generate_problem(
    rng: random.Random,
    index: int,
    min_operands: int,
    max_operands: int,
    max_value: int,
    ops: list[str],
) -> Problem:
    value = start = rng.randint(1, max_value)
    steps: list[tuple[str, int]] = []
    for _ in range(rng.randint(min_operands, max_operands) - 1):
        op, n = _step(rng, value, ops, max_value)
        steps.append((op, n))
        value = _apply(value, op, n)
    name, obj = rng.choice(NAMES), rng.choice(OBJECTS)
    if rng.random() < 0.5:
        text = " ".join(
            [f"{name} has {start} {obj}."]
            + [STORY[op].format(name=name, n=n, obj=obj) for op, n in steps]
            + [f"How many {obj} does {name} have now?"]
        )
    else:
        actions = ", then ".join(PLAIN[op].format(n=n) for op, n in steps)
        text = f"Start with {start}, {actions}. What is the result?"
    return Problem(
        id=f"arith-{index}",
        question=text,
        answer=str(value),
        kind="math",
        meta={"start": start, "steps": steps},
    )


def generate(
    num_problems: int,
    seed: int,
    min_operands: int = 2,
    max_operands: int = 3,
    max_value: int = 20,
    operations: list[str] | None = None,
) -> list[Problem]:
    ops = list(operations or ["+", "-", "*", "/"])
    unknown = set(ops) - set(PLAIN)
    if unknown or not ops:
        raise ValueError(f"dataset.operations must be a subset of + - * /, got {ops}")
    if not 2 <= min_operands <= max_operands:
        raise ValueError("need 2 <= dataset.min_operands <= dataset.max_operands")
    rng = random.Random(seed)
    return [
        generate_problem(rng, i, min_operands, max_operands, max_value, ops)
        for i in range(num_problems)
    ]
