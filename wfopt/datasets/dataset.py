"""The concrete dataset: fixed splits of problems plus the scorer chosen for them."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

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


Resplit = Callable[[], tuple[dict[str, list[Problem]], dict[str, str]]]


@dataclass
class SplitDataset:
    """Problems in fixed splits; `score` never raises for anything a prediction contains.

    `sources` says where each split's problems come from (a file, whole; a seeded split of
    one source; ...), for logs and summaries. A split missing from `splits` has no source:
    asking for it re-splits the one file given by seed when `resplit` can (and nothing was
    handed out of that file yet, so no split overlaps another), else is a DatasetError that
    says how to give it.
    """

    name: str
    kind: str  # "math" | "code"
    splits: dict[str, list[Problem]]
    scorer: str = "number"
    limit: int | None = None  # first N problems of each split
    score_timeout_s: float = 10.0
    sources: dict[str, str] = field(default_factory=dict)
    resplit: Resplit | None = None
    _handed_out: set[str] = field(default_factory=set, init=False, repr=False)

    def __post_init__(self) -> None:
        self.scorer = str(self.scorer)
        if self.scorer not in SCORERS:
            raise DatasetError(f"dataset.scorer={self.scorer!r}; choose from {', '.join(SCORERS)}")
        if self.limit is not None and self.limit < 0:
            raise DatasetError(f"dataset.limit={self.limit} must be >= 0 (or null for all)")

    def _check(self, split: str) -> str:
        split = str(split)
        if split not in SPLITS:
            raise DatasetError(f"unknown split {split!r}; choose from {', '.join(SPLITS)}")
        if split in self.splits:
            return split
        given = ", ".join(f"{s}: {w}" for s, w in self.sources.items()) or "nothing"
        if self.resplit is None or self._handed_out:
            why = (
                f" (its {', '.join(sorted(self._handed_out))} split is already in use whole)"
                if self.resplit is not None
                else ""
            )
            raise DatasetError(
                f"{self.name}: no {split} split; given: {given}{why}. Pass "
                f"dataset.files.{split}=FILE, or dataset.resplit=true to split one file by "
                "dataset.seed"
            )
        self.splits, self.sources = self.resplit()
        self.resplit = None
        log.warning(
            "%s: the %s split was asked for but only one file was given; using %s for every "
            "split (pass dataset.files.%s=FILE to keep the file whole)",
            self.name,
            split,
            self.sources[split],
            split,
        )
        return split

    def problems(self, split: str) -> list[Problem]:
        split = self._check(split)
        self._handed_out.add(split)
        problems = self.splits[split]
        return list(problems[: self.limit] if self.limit is not None else problems)

    def total(self, split: str) -> int:
        """Problems in the whole split, before `limit`."""
        return len(self.splits[self._check(split)])

    def source(self, split: str) -> str:
        """Where the split's problems come from."""
        return self.sources.get(self._check(split), "given in code")

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
