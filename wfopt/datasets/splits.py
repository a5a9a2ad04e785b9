"""Seeded, disjoint train/validation/test splits.

A file given for a split is that split, whole (load.py); these are the two seeded rules for
everything else, both fixed by `dataset.seed` (same seed, same data => same splits, on any
machine):

* one source (the arithmetic generator, the packaged HumanEval, a single file re-split on
  request or because a command needs a split no file was given for): shuffle once and cut
  `test_fraction` off for test, then `val_fraction` for validation; the rest is train.
* a source with its own test split (a directory with train.jsonl and test.jsonl, an HF dataset
  with train and test): test is kept as is; validation is the source's own validation split if
  it has one, else `val_fraction` of train carved out by the seed.

The fractions are of the whole source (resp. of train) and rounded to whole problems.
"""

from __future__ import annotations

import random
from typing import TypeVar

T = TypeVar("T")


def _check_fractions(val_fraction: float, test_fraction: float = 0.0) -> None:
    if not (0 <= val_fraction <= 1 and 0 <= test_fraction <= 1):
        raise ValueError("dataset.val_fraction and dataset.test_fraction must be within [0, 1]")
    if val_fraction + test_fraction > 1:
        raise ValueError("dataset.val_fraction + dataset.test_fraction must be at most 1")


def _shuffled(items: list[T], seed: int) -> list[T]:
    order = list(items)
    random.Random(seed).shuffle(order)
    return order


def seeded_split(
    items: list[T], seed: int, val_fraction: float, test_fraction: float
) -> dict[str, list[T]]:
    """One source: shuffle once by `seed`, cut into test, validation and train."""
    _check_fractions(val_fraction, test_fraction)
    order = _shuffled(items, seed)
    n_test = round(len(order) * test_fraction)
    n_val = round(len(order) * val_fraction)
    return {
        "train": order[n_test + n_val :],
        "validation": order[n_test : n_test + n_val],
        "test": order[:n_test],
    }


def carve_validation(
    train: list[T],
    test: list[T],
    seed: int,
    val_fraction: float,
    validation: list[T] | None = None,
) -> dict[str, list[T]]:
    """A source with its own test split: keep it; validation is given or carved from train."""
    if validation is not None:
        return {"train": list(train), "validation": list(validation), "test": list(test)}
    _check_fractions(val_fraction)
    order = _shuffled(train, seed)
    n_val = round(len(order) * val_fraction)
    return {"train": order[n_val:], "validation": order[:n_val], "test": list(test)}
