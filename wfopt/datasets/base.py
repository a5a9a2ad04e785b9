"""What every dataset provides: problems in fixed splits, and an async scorer."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

SPLITS = ("train", "validation", "test")


class DatasetError(ValueError):
    """A dataset could not be loaded: the message names the file, line and field."""


@dataclass
class Problem:
    id: str
    question: str  # what a workflow sees (code tasks: the prompt with signature and docstring)
    answer: str  # gold: a canonical number string, a boxed expression, or reference code
    kind: str  # "math" | "code"
    entry_point: str | None = None  # code tasks: the function to write
    tests: str | None = None  # hidden scoring tests: never shown to workflows
    public_tests: str | None = None  # examples the `test` operator may run (asserts)
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass
class Score:
    """0..1, and why it is not 1 when something other than a wrong answer happened.

    Error categories: None (scored normally; a wrong answer is simply 0), "no_answer" (no
    answer could be extracted), "wrong" (code ran but failed its tests), "syntax_error",
    "runtime_error", "timeout", "memory", "output_limit", "sandbox_error".
    """

    value: float
    error: str | None = None
    detail: str = ""
    normalized: str | None = None


def seeded_split(
    items: list[Any], seed: int, val_fraction: float, test_fraction: float
) -> dict[str, list[Any]]:
    """Shuffle once by `seed` and cut into train / validation / test (disjoint, stable)."""
    order = list(items)
    random.Random(seed).shuffle(order)
    n_test = round(len(order) * test_fraction)
    n_val = round(len(order) * val_fraction)
    return {
        "test": order[:n_test],
        "validation": order[n_test : n_test + n_val],
        "train": order[n_test + n_val :],
    }


def carve_validation(
    train: list[Any], test: list[Any], seed: int, val_fraction: float
) -> dict[str, list[Any]]:
    """Sources with their own train/test files: validation comes out of train by `seed`."""
    order = list(train)
    random.Random(seed).shuffle(order)
    n_val = round(len(order) * val_fraction)
    return {"train": order[n_val:], "validation": order[:n_val], "test": list(test)}
