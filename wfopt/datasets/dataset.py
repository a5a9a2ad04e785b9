"""The concrete dataset: fixed splits of problems plus the scorer chosen for them."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from wfopt.datasets.base import SPLITS, DatasetError, Problem, Score
from wfopt.datasets.code import score_code
from wfopt.datasets.mathverify import score_math
from wfopt.datasets.scoring import exact_match, extract_number, format_number, numbers_equal
from wfopt.errors import InfrastructureError, ScorerError

log = logging.getLogger(__name__)

SCORERS = ("number", "exact", "math", "code")


def score_number(gold: str, prediction: str) -> Score:
    """The final number of the prediction vs the gold number (see scoring.numbers_equal)."""
    predicted = extract_number(prediction)
    if predicted is None:
        return Score(0.0, "no_answer", "no number in the prediction")
    expected = extract_number(gold)
    if expected is None:  # loaders validate golds, so only a hand-made Problem gets here
        raise DatasetError(f"gold answer {gold!r} is not a number; use another dataset.scorer")
    return Score(float(numbers_equal(predicted, expected)), normalized=format_number(predicted))


def score_exact(gold: str, prediction: str) -> Score:
    if not prediction.strip():
        return Score(0.0, "no_answer", "empty prediction")
    ok, normalized = exact_match(gold, prediction)
    return Score(float(ok), normalized=normalized)


@dataclass
class SplitDataset:
    """Problems in fixed splits; `score` never raises for anything a prediction contains."""

    name: str
    kind: str  # "math" | "code"
    splits: dict[str, list[Problem]]
    scorer: str = "number"
    limit: int | None = None  # first N problems of each split
    score_timeout_s: float = 10.0

    def __post_init__(self) -> None:
        if self.scorer not in SCORERS:
            raise DatasetError(f"dataset.scorer={self.scorer!r}; choose from {', '.join(SCORERS)}")
        if self.limit is not None and self.limit < 0:
            raise DatasetError(f"dataset.limit={self.limit} must be >= 0 (or null for all)")

    def problems(self, split: str) -> list[Problem]:
        if split not in SPLITS:
            raise DatasetError(f"unknown split {split!r}; choose from {', '.join(SPLITS)}")
        problems = self.splits.get(split, [])
        return list(problems[: self.limit] if self.limit is not None else problems)

    async def score(self, problem: Problem, prediction: str) -> Score:
        prediction = "" if prediction is None else str(prediction)
        try:
            if self.scorer == "code":
                return await score_code(problem, prediction, self.score_timeout_s)
            if self.scorer == "math":
                return await score_math(problem.answer, prediction, self.score_timeout_s)
            if self.scorer == "exact":
                return score_exact(problem.answer, prediction)
            return score_number(problem.answer, prediction)
        except (DatasetError, InfrastructureError):
            raise
        except Exception as err:  # a scorer bug is wfopt's fault: never a 0 for the answer
            raise ScorerError(
                f"scoring {problem.id} with the {self.scorer} scorer failed: "
                f"{type(err).__name__}: {err}"[:800]
            ) from err
