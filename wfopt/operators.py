"""The operator library: small async functions a workflow composes, run on the executor LLM.

Each operator is a method of `Operators`, an object bound to one workflow run: the executor
LLM, the problem being solved, the sampling parameters, an operator-call budget and the
run's `Ledger`. Workflows see them as plain functions (`await generate(problem, "...")`).

| operator | returns |
|---|---|
| `generate(problem, instruction="")` | the model's free-form response |
| `answer_generate(problem)` | step-by-step reasoning ending in `Answer: <answer>` |
| `programmer(problem, analysis="")` | what a model-written Python program prints (run in the sandbox, retried on error) |
| `ensemble(problem, candidates)` | the majority answer among candidates (LLM tie-break) |
| `review(problem, solution)` | feedback; starts with `CORRECT` when the reviewer accepts |
| `revise(problem, solution, feedback)` | an improved solution |
| `format_answer(problem, solution)` | just the final answer (or just the code for code tasks) |
| `code_generate(problem, entry_point, instruction="")` | a Python function named `entry_point` |
| `test(problem, solution, entry_point)` | `PASS`, or `FAIL: <error>` on the public examples |

Who is at fault: `bound()` wraps every operator so that a workflow's bad call (wrong
arguments, candidates that are not a list) is the workflow's `WorkflowError`, a scored failure,
while anything that goes wrong *inside* an operator (the executor, the response cache, the
sandbox runner, a bug here) is an `InfrastructureError` that stops the run: never a 0 score.
"""

from __future__ import annotations

import functools
import inspect
import re
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from wfopt.errors import BudgetExceeded, InfrastructureError, SandboxError, WorkflowError
from wfopt.llm.base import LLM, Message, SamplingParams

OPERATOR_NAMES = frozenset(
    {
        "generate",
        "answer_generate",
        "programmer",
        "ensemble",
        "review",
        "revise",
        "format_answer",
        "code_generate",
        "test",
    }
)

SYSTEM = "You are a careful assistant who solves problems step by step."


@dataclass
class LedgerEntry:
    operator: str
    prompt_tokens: int = 0
    completion_tokens: int = 0
    latency_s: float = 0.0
    cost_usd: float | None = 0.0  # None = price unknown
    cached: bool = False
    detail: str = ""  # e.g. the sandbox status of a programmer run


@dataclass
class Ledger:
    """Everything one workflow run spent: one entry per LLM call or sandbox run."""

    entries: list[LedgerEntry] = field(default_factory=list)
    operator_calls: int = 0

    @property
    def llm_calls(self) -> int:
        return sum(1 for e in self.entries if e.operator != "sandbox")

    @property
    def prompt_tokens(self) -> int:
        return sum(e.prompt_tokens for e in self.entries)

    @property
    def completion_tokens(self) -> int:
        return sum(e.completion_tokens for e in self.entries)

    @property
    def cost_usd(self) -> float | None:
        """Total cost; None when any call's price is unknown (never a silent $0)."""
        costs = [e.cost_usd for e in self.entries]
        return None if any(c is None for c in costs) else float(sum(costs))  # type: ignore[arg-type]

    def summary(self) -> dict[str, Any]:
        usage = Counter(e.operator for e in self.entries)
        return {
            "operator_calls": self.operator_calls,
            "llm_calls": self.llm_calls,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "cost_usd": self.cost_usd,
            "cached_calls": sum(e.cached for e in self.entries),
            "operators": dict(usage),
        }

    def to_dict(self) -> dict[str, Any]:
        return {**self.summary(), "entries": [asdict(e) for e in self.entries]}


_CODE_BLOCK = re.compile(r"```(?:python|py)?[ \t]*\n(.*?)(?:```|$)", re.DOTALL)


def extract_code(text: str) -> str:
    """The (longest) fenced code block in `text`, or `text` itself when there is none."""
    blocks = [b.strip("\n") for b in _CODE_BLOCK.findall(text)]
    return max(blocks, key=len) if blocks else text.strip()


_ANSWER_LINE = re.compile(r"answer\s*(?:is)?\s*[:=]?\s*(.+)", re.IGNORECASE)


def answer_key(text: str, kind: str = "math") -> str:
    """What ensemble votes on: the final number for math, whitespace-normalized code otherwise."""
    if kind == "code":
        return " ".join(extract_code(text).split())
    from wfopt.datasets.scoring import extract_number

    number = extract_number(text)
    if number is not None:
        return repr(float(number))
    match = _ANSWER_LINE.findall(text)
    return (match[-1] if match else text).strip().lower()


def operator_call_error(name: str, positional: int, keywords: list[str]) -> str | None:
    """Why a call of operator `name` with `positional` arguments and these keywords can never
    bind to its signature (`review(problem)`: a missing `solution`), or None. Unknown names:
    None (the validator's allow-list rejects them)."""
    method = getattr(Operators, f"op_{name}", None)
    if method is None:
        return None
    signature = inspect.signature(method)
    signature = signature.replace(parameters=list(signature.parameters.values())[1:])  # self
    try:
        signature.bind(*[None] * positional, **dict.fromkeys(keywords))
    except TypeError as err:
        return f"{name}(): {err}"
    return None


def _attributed(name: str, method: Callable[..., Awaitable[Any]]) -> Callable[..., Any]:
    """`method` as a workflow calls it, with every failure attributed (module docstring)."""
    signature = inspect.signature(method)

    @functools.wraps(method)
    async def call(*args: Any, **kwargs: Any) -> Any:
        try:
            bound = signature.bind(*args, **kwargs)
        except TypeError as err:
            raise WorkflowError(f"{name}(): {err}") from None
        candidates = bound.arguments.get("candidates")
        if "candidates" in bound.arguments and not isinstance(candidates, list | tuple):
            kind = type(candidates).__name__
            raise WorkflowError(f"{name}(): candidates must be a list, not {kind}")
        try:
            return await method(*bound.args, **bound.kwargs)
        except (WorkflowError, InfrastructureError):
            raise
        except Exception as err:  # not the workflow's code: never a scored failure
            raise InfrastructureError(
                f"operator {name} failed inside wfopt: {type(err).__name__}: {err}"[:800]
            ) from err

    return call


class Operators:
    """The operators of one workflow run, sharing its ledger, budget and sample counters."""

    def __init__(
        self,
        llm: LLM,
        params: SamplingParams,
        problem: Any,  # wfopt.datasets.Problem
        *,
        max_calls: int = 20,
        sample_offset: int = 0,
        sandbox_limits: Any = None,
        programmer_retries: int = 2,
    ) -> None:
        self.llm = llm
        self.params = params
        self.problem = problem
        self.max_calls = max_calls
        self.sample_offset = sample_offset
        self.sandbox_limits = sandbox_limits
        self.programmer_retries = programmer_retries
        self.ledger = Ledger()
        self._seen: Counter[tuple[str, str]] = Counter()

    # -- plumbing -------------------------------------------------------------------------

    def bound(self) -> dict[str, Any]:
        """Name -> coroutine function, as the workflow namespace sees them."""
        return {name: _attributed(name, getattr(self, f"op_{name}")) for name in OPERATOR_NAMES}

    def _count_call(self) -> None:
        self.ledger.operator_calls += 1
        if self.ledger.operator_calls > self.max_calls:
            raise BudgetExceeded(f"more than {self.max_calls} operator calls")

    async def _ask(self, operator: str, user: str, max_new_tokens: int | None = None) -> str:
        messages: list[Message] = [
            {"role": "system", "content": SYSTEM},
            {"role": "user", "content": user},
        ]
        # Repeating the same prompt (self-consistency) must draw a new sample, not a cache hit.
        key = (operator, user)
        sample_index = self.sample_offset + self._seen[key]
        self._seen[key] += 1
        params = self.params
        if max_new_tokens is not None:
            params = replace(params, max_new_tokens=min(max_new_tokens, params.max_new_tokens))
        completion = await self.llm.complete(messages, params, sample_index=sample_index)
        self.ledger.entries.append(
            LedgerEntry(
                operator=operator,
                prompt_tokens=completion.prompt_tokens,
                completion_tokens=completion.completion_tokens,
                latency_s=completion.latency_s,
                cost_usd=completion.cost_usd,
                cached=completion.cached,
            )
        )
        return completion.text.strip()

    async def _run_code(self, code: str) -> Any:
        from wfopt.sandbox import SandboxLimits, arun_python

        start = time.perf_counter()
        result = await arun_python(code, limits=self.sandbox_limits or SandboxLimits(timeout_s=10))
        if result.status == "sandbox_error":  # the runner failed, the program never ran
            raise SandboxError(f"the code sandbox failed: {result.stderr.strip()[:300]}")
        self.ledger.entries.append(
            LedgerEntry(
                operator="sandbox",
                latency_s=time.perf_counter() - start,
                detail=result.status,
            )
        )
        return result

    @property
    def kind(self) -> str:
        return getattr(self.problem, "kind", "math")

    # -- operators ------------------------------------------------------------------------

    async def op_generate(self, problem: str, instruction: str = "") -> str:
        """Free-form response to `problem`, optionally steered by `instruction`."""
        self._count_call()
        prompt = f"{instruction}\n\nProblem: {problem}" if instruction else str(problem)
        return await self._ask("generate", prompt)

    async def op_answer_generate(self, problem: str) -> str:
        """Step-by-step reasoning that ends with a line `Answer: <answer>`."""
        self._count_call()
        prompt = (
            f"Problem: {problem}\n\nThink step by step. "
            "Then write the final answer on the last line as 'Answer: <answer>'."
        )
        return await self._ask("answer_generate", prompt)

    async def op_programmer(self, problem: str, analysis: str = "") -> str:
        """Have the model write a Python program, run it in the sandbox, return its output.

        On an error the traceback goes back to the model for another try (at most
        `programmer_retries` more). Returns "" when no attempt ran cleanly.
        """
        self._count_call()
        hint = f"\nAnalysis: {analysis}\n" if analysis else ""
        prompt = (
            f"Problem: {problem}\n{hint}\nWrite a short Python program that computes the answer "
            "and prints only the final answer. Put the code in a ```python block."
        )
        for _ in range(1 + self.programmer_retries):
            code = extract_code(await self._ask("programmer", prompt))
            result = await self._run_code(code)
            output = result.stdout.strip()
            if result.ok and output:
                return output.splitlines()[-1].strip()
            error = (result.stderr.strip().splitlines() or [result.status])[-1][:300]
            prompt = (
                f"Problem: {problem}\n{hint}\nThis program failed:\n```python\n{code[:2000]}\n```\n"
                f"Error: {error}\nWrite a corrected Python program that prints only the final "
                "answer, in a ```python block."
            )
        return ""

    async def op_ensemble(self, problem: str, candidates: list[Any]) -> str:
        """Majority vote over normalized answers; the LLM breaks ties."""
        self._count_call()
        texts = [str(c) for c in candidates if str(c).strip()]
        if not texts:
            return ""
        keys = [answer_key(t, self.kind) for t in texts]
        counts = Counter(keys)
        best = max(counts.values())
        tied = [k for k in dict.fromkeys(keys) if counts[k] == best]
        if len(tied) == 1:
            return texts[keys.index(tied[0])]
        options = [texts[keys.index(k)] for k in tied]
        letters = "ABCDEFGHIJ"[: len(options)]
        listing = "\n\n".join(
            f"({letter}) {text[:1500]}" for letter, text in zip(letters, options, strict=True)
        )
        reply = await self._ask(
            "ensemble",
            f"Problem: {problem}\n\nCandidate solutions:\n{listing}\n\n"
            f"Which candidate is most likely correct? Reply with one letter from {letters}.",
            max_new_tokens=8,
        )
        match = re.search(f"[{letters}]", reply.upper())
        return options[letters.index(match.group())] if match else options[0]

    async def op_review(self, problem: str, solution: str) -> str:
        """Critique `solution`; the feedback starts with CORRECT when it looks right."""
        self._count_call()
        return await self._ask(
            "review",
            f"Problem: {problem}\n\nProposed solution:\n{solution}\n\n"
            "Check the solution carefully. If it is correct, reply 'CORRECT'. "
            "Otherwise reply 'INCORRECT' and explain the mistake briefly.",
        )

    async def op_revise(self, problem: str, solution: str, feedback: str) -> str:
        """Rewrite `solution` taking `feedback` into account."""
        self._count_call()
        return await self._ask(
            "revise",
            f"Problem: {problem}\n\nPrevious solution:\n{solution}\n\nFeedback:\n{feedback}\n\n"
            "Write an improved solution. End with the final answer as 'Answer: <answer>'.",
        )

    async def op_format_answer(self, problem: str, solution: str) -> str:
        """Reduce `solution` to the bare final answer (the code itself for code tasks)."""
        self._count_call()
        if self.kind == "code":
            return extract_code(str(solution))
        return await self._ask(
            "format_answer",
            f"Problem: {problem}\n\nSolution:\n{solution}\n\n"
            "Reply with only the final answer, nothing else.",
            max_new_tokens=32,
        )

    async def op_code_generate(self, problem: str, entry_point: str, instruction: str = "") -> str:
        """Write the Python function `entry_point` that solves `problem`."""
        self._count_call()
        steer = f"{instruction}\n\n" if instruction else ""
        text = await self._ask(
            "code_generate",
            f"{steer}Complete this Python function. Write the whole function `{entry_point}` "
            f"in a ```python block.\n\n{problem}",
        )
        return extract_code(text)

    async def op_test(self, problem: str, solution: str, entry_point: str) -> str:
        """Run `solution` against the problem's public examples (never the scoring tests)."""
        self._count_call()
        examples = getattr(self.problem, "public_tests", None)
        if not examples:
            return "PASS (no public examples)"
        result = await self._run_code(f"{extract_code(str(solution))}\n\n{examples}\n")
        if result.ok:
            return "PASS"
        tail = (result.stderr.strip().splitlines() or [result.status])[-1]
        return f"FAIL: {tail[:300]}"
