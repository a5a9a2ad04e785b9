"""Built-in arithmetic word problems with exact answers, generated deterministically from a seed.

A problem is a start value and 1..(operands-1) steps (+ - * /) applied left to right, each
operand in [1, max_value] (multipliers in [2, min(max_value, 9)] to keep numbers natural).
It is told in one of three templates: a short story ("Mia has 12 marbles. She finds 7 more
marbles. ..."), instructions ("Start with 12. Add 7, then multiply by 3. ..."), or a plain
expression ("What is (12 + 7) * 3?").

Answers are exact: division is used only where it divides evenly and subtraction never goes
below zero, so answers are non-negative integers. Only when the configured operations leave no
such choice (e.g. operations=["/"] on a prime) does a step go negative or rational; such a
problem is told as instructions or an expression, and its answer is rendered canonically
("7/3", "-2", "2.5"). Problems are distinct (no two share an expression), so no arithmetic
question appears in two splits.

`templates` restricts how problems are told. The embedded default (`DatasetConfig`) is
expressions only, two operands in [1, 99]: there SmolLM2-135M answers 0.14 of 200 test
problems directly but 0.41 through a program it writes (README, "Which workflows help"), so
the choice of workflow shows in the reward. All three templates with the same seed give the problems of
wfopt 0.1 exactly.
"""

from __future__ import annotations

import random
from fractions import Fraction

from wfopt.datasets.base import DatasetError, Problem
from wfopt.datasets.scoring import format_number

OPERATIONS = ("+", "-", "*", "/")
TEMPLATES = ("story", "instructions", "expression")
NAMES = ["Mia", "Tom", "Ava", "Leo", "Zoe", "Sam", "Ivy", "Max", "Lily", "Ben", "Nora", "Omar"]
ITEMS = [  # (singular, plural)
    ("apple", "apples"),
    ("marble", "marbles"),
    ("sticker", "stickers"),
    ("book", "books"),
    ("coin", "coins"),
    ("pencil", "pencils"),
    ("card", "cards"),
    ("shell", "shells"),
]
STORY = {
    "+": [
        "{name} finds {n} more {x}.",
        "{name} buys {n} more {x}.",
        "A friend gives {name} {n} {x}.",
    ],
    "-": ["{name} gives away {n} {x}.", "{name} loses {n} {x}.", "{name} sells {n} {x}."],
    "*": ["Then {name} ends up with {n} times as many {items} as before."],
    "/": ["{name} splits the {items} into {n} equal piles and keeps one pile."],
}
INSTRUCTION = {"+": "add {n}", "-": "subtract {n}", "*": "multiply by {n}", "/": "divide by {n}"}
_APPLY = {
    "+": lambda a, b: a + b,
    "-": lambda a, b: a - b,
    "*": lambda a, b: a * b,
    "/": lambda a, b: a / b,
}


def _natural_step(
    rng: random.Random, value: Fraction, ops: list[str], max_value: int
) -> tuple[str, int] | None:
    """An operation and operand that keep the running value a non-negative integer."""
    choices = list(ops)
    rng.shuffle(choices)
    for op in choices:
        if op == "+":
            return op, rng.randint(1, max_value)
        if op == "-" and value >= 1:
            return op, rng.randint(1, min(int(value), max_value))
        if op == "*" and max_value >= 2:
            return op, rng.randint(2, min(max_value, 9))
        if op == "/" and value >= 2:
            divisors = [d for d in range(2, min(int(value), max_value) + 1) if value % d == 0]
            if divisors:
                return op, rng.choice(divisors)
    return None


def _expression(start: int, steps: list[tuple[str, int]]) -> str:
    text = str(start)
    for i, (op, n) in enumerate(steps):
        text = f"({text}) {op} {n}" if i else f"{text} {op} {n}"
    return text


def _story(rng: random.Random, start: int, steps: list[tuple[str, int]]) -> str:
    name = rng.choice(NAMES)
    one, many = rng.choice(ITEMS)

    def noun(n: int) -> str:
        return one if n == 1 else many

    sentences = [f"{name} has {start} {noun(start)}."]
    for op, n in steps:
        template = rng.choice(STORY[op])
        sentences.append(template.format(name=name, n=n, x=noun(n), items=many))
    sentences.append(f"How many {many} does {name} have now?")
    return " ".join(sentences)


def _instructions(start: int, steps: list[tuple[str, int]]) -> str:
    actions = ", then ".join(INSTRUCTION[op].format(n=n) for op, n in steps)
    return f"Start with {start}. {actions[0].upper()}{actions[1:]}. What number do you get?"


def generate_problem(
    rng: random.Random,
    index: int,
    min_operands: int,
    max_operands: int,
    max_value: int,
    ops: list[str],
    templates: tuple[str, ...] = TEMPLATES,
) -> Problem:
    """One problem; `rng` drives every choice, so the sequence is fixed by the seed.
    A story needs natural steps: a problem that has none is told as the next allowed template
    (an expression when only stories are allowed)."""
    start = rng.randint(1, max_value)
    value, natural = Fraction(start), True
    steps: list[tuple[str, int]] = []
    for _ in range(rng.randint(min_operands, max_operands) - 1):
        step = _natural_step(rng, value, ops, max_value)
        if step is None:  # the operations allow nothing natural: exact rationals / negatives
            natural = False
            op = rng.choice(ops)
            step = (op, rng.randint(2 if op in "*/" and max_value >= 2 else 1, max_value))
        steps.append(step)
        value = _APPLY[step[0]](value, Fraction(step[1]))
    expression = _expression(start, steps)
    allowed = [t for t in templates if natural or t != "story"] or ["expression"]
    template = rng.choice(allowed)
    if template == "story":
        question = _story(rng, start, steps)
    elif template == "instructions":
        question = _instructions(start, steps)
    else:
        question = f"What is {expression}?"
    return Problem(
        id=f"arithmetic-{index}",
        question=question,
        answer=format_number(value),
        kind="math",
        meta={"expression": expression, "template": template},
    )


def generate(
    num_problems: int,
    seed: int,
    min_operands: int = 2,
    max_operands: int = 3,
    max_value: int = 20,
    operations: list[str] | None = None,
    templates: list[str] | None = None,
) -> list[Problem]:
    """`num_problems` distinct problems (by expression), the same for the same arguments."""
    ops = list(operations if operations is not None else OPERATIONS)
    if not ops or set(ops) - set(OPERATIONS):
        raise DatasetError(f"dataset.operations must be a non-empty subset of + - * /, got {ops}")
    told = tuple(t for t in TEMPLATES if t in (templates if templates is not None else TEMPLATES))
    if not told or set(templates or TEMPLATES) - set(TEMPLATES):
        raise DatasetError(
            f"dataset.templates must be a non-empty subset of {', '.join(TEMPLATES)}, "
            f"got {templates}"
        )
    if not 2 <= min_operands <= max_operands:
        raise DatasetError("dataset: need 2 <= min_operands <= max_operands")
    if max_value < 1 or num_problems < 0:
        raise DatasetError("dataset: need max_value >= 1 and num_problems >= 0")
    rng = random.Random(f"wfopt-arithmetic-{seed}")
    problems: list[Problem] = []
    seen: set[str] = set()
    attempts = 0
    while len(problems) < num_problems:
        attempts += 1
        if attempts > 100 * num_problems + 1000:
            raise DatasetError(
                f"dataset: only {len(problems)} distinct arithmetic problems found for "
                f"num_problems={num_problems}; raise max_value or max_operands"
            )
        problem = generate_problem(
            rng, len(problems), min_operands, max_operands, max_value, ops, told
        )
        if problem.meta["expression"] not in seen:
            seen.add(problem.meta["expression"])
            problems.append(problem)
    return problems
