"""The one async interface every executor/policy LLM backend implements."""

from __future__ import annotations

import time
from contextvars import ContextVar
from dataclasses import asdict, dataclass
from typing import Protocol, runtime_checkable

from wfopt.errors import InfrastructureError

Message = dict[str, str]  # {"role": "system" | "user" | "assistant", "content": str}


@dataclass(frozen=True)
class SamplingParams:
    """How to sample one completion. `seed` + the request's `sample_index` fix the randomness."""

    temperature: float = 0.0  # 0 = greedy
    top_p: float = 1.0
    max_new_tokens: int = 256
    seed: int = 0

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass
class Completion:
    """One generated answer plus what it cost."""

    text: str
    prompt_tokens: int
    completion_tokens: int
    cost_usd: float | None = None  # None = price unknown (never silently $0)
    latency_s: float = 0.0
    cached: bool = False
    # What the model saw and emitted, token for token (backends that know it: local).
    # GRPO trains a policy sample on exactly these ids.
    prompt_ids: list[int] | None = None
    completion_ids: list[int] | None = None  # the stop token included when it emitted one
    stopped: bool | None = None  # True: ended on a stop token; False: cut at max_new_tokens


class LLMError(InfrastructureError):
    """A backend failed after its retries (server down, bad response, ...)."""

    what = "the executor failed"


@runtime_checkable
class LLM(Protocol):
    """An async chat-completion backend.

    `complete` may be called concurrently from many coroutines; backends batch or bound
    concurrency internally. `sample_index` distinguishes repeated samples of the same prompt
    (self-consistency) so that caches and seeded sampling treat them as different requests.
    """

    name: str  # model identity used in cache keys and ledgers

    async def complete(
        self, messages: list[Message], params: SamplingParams, sample_index: int = 0
    ) -> Completion: ...

    async def aclose(self) -> None: ...


class QueueClock:
    """How long one workflow run waited in backend queues: submitted, not yet decoding.

    A run's time limit measures its work, not the backend's backlog (`workflow.call_solve`
    subtracts this). Overlapping waits of one run (concurrent calls) count once: the clock
    runs while at least one of its requests is queued. Backends that queue requests (the
    local one) call `enter` when a request is submitted and `leave` once when it is admitted
    or abandoned; backends that do not (a server, the response cache) leave it at zero.
    """

    def __init__(self) -> None:
        self._queued = 0  # requests of this run waiting right now
        self._since = 0.0  # when the current wait began
        self._total = 0.0  # finished waits

    def enter(self) -> None:
        if self._queued == 0:
            self._since = time.monotonic()
        self._queued += 1

    def leave(self) -> None:
        self._queued -= 1
        if self._queued == 0:
            self._total += time.monotonic() - self._since

    def seconds(self) -> float:
        """Queued seconds so far, the wait in progress included."""
        ongoing = time.monotonic() - self._since if self._queued else 0.0
        return self._total + ongoing


# The run whose requests are being submitted (set by `workflow.call_solve` for the workflow's
# task; tasks it spawns inherit it). None: nobody is counting.
queue_clock: ContextVar[QueueClock | None] = ContextVar("wfopt_queue_clock", default=None)
