"""The types every dataset shares: problems, scores, the dataset protocol and its error."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

SPLITS = ("train", "validation", "test")

# Score.error values. None means "scored normally" (a wrong math answer is simply 0.0).
ERROR_CATEGORIES = {
    "no_answer": "nothing to score: empty prediction, or no number/answer could be extracted",
    "wrong": "code that ran to completion but failed the hidden tests",
    "syntax_error": "code that does not compile",
    "runtime_error": "code that raised (or exited early) outside a failed test assertion",
    "timeout": "code or math-verify over its time limit (dataset.score_timeout_s)",
    "memory": "code over the sandbox memory limit",
    "output_limit": "code that wrote more than the sandbox keeps",
}
# A failing sandbox runner, scorer or scorer worker is never a category: it is a
# wfopt.errors.InfrastructureError that stops the run (see wfopt/errors.py).


class DatasetError(ValueError):
    """A dataset could not be loaded; the message names the file, the 1-based line and the field."""


@dataclass
class Problem:
    id: str
    question: str  # what a workflow sees (code tasks: the prompt with signature and docstring)
    answer: str  # gold: a canonical number string, a LaTeX answer, or reference code ("" if none)
    kind: str  # "math" | "code"
    entry_point: str | None = None  # code tasks: the function to write
    tests: str | None = None  # hidden scoring tests: never shown to workflows
    public_tests: str | None = None  # runnable asserts the `test` operator may use
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass
class Score:
    """A 0..1 score; `error` is one of ERROR_CATEGORIES when something other than plain
    right-or-wrong happened, so evaluations can count failure modes."""

    value: float
    error: str | None = None
    detail: str = ""  # short human-readable detail (truncated)
    normalized: str | None = None  # the normalized prediction that was compared


@runtime_checkable
class Dataset(Protocol):
    """What `evaluate`, search and training need from a dataset."""

    name: str
    kind: str

    def problems(self, split: str) -> list[Problem]: ...

    async def score(self, problem: Problem, prediction: str) -> Score: ...
