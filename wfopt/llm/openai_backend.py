"""Any OpenAI-compatible server (vLLM, SGLang, llama.cpp server, OpenAI) as an executor.

Retries are the official `openai` async client's own (`AsyncOpenAI(max_retries=...)`; as read
in openai 3.60 `_base_client.py`): it retries connection errors, timeouts and the statuses
408, 409, 429 and 5xx (a server's `x-should-retry: true|false` overrides that), waiting what
a server's `retry-after-ms` / `Retry-After` asks when that is in (0, 120] s, else backing off
0.5 s doubling to at most 8 s, less up to 25% jitter. It does not retry other 4xx, nor a
`Retry-After` over 120 s. Its backoff takes no argument, hence no `executor.retry_backoff_s`.

Kept by hand, because the client lacks it:
- a malformed response (JSON that does not parse, or a reply that is not a chat completion)
  is retried like a transient failure, after the client's backoff schedule, within the same
  budget: at most `max_retries` retries per completion, whatever failed;
- after the last attempt every failure is an `LLMError` naming the model and URL, the kind
  (HTTP status, timeout, connection, malformed) and the attempts it took;
- counting, logged as `executor/requests` and `executor/retries`: `requests` (completions
  asked for), `attempts` (HTTP requests sent: a request hook on the HTTP client we pass as
  `http_client=`) and `retries` (requests the client marks as its retries in
  `x-stainless-retry-count`, plus ours); the client itself reports retries only on success.
Concurrency is bounded by a semaphore; token usage comes from the response.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import time
from typing import TYPE_CHECKING, Any

from wfopt.llm.base import Completion, LLMError, Message, SamplingParams

if TYPE_CHECKING:
    from wfopt.config import ExecutorConfig

RETRY_COUNT_HEADER = "x-stainless-retry-count"  # the client's retry number on each request
BACKOFF_S, MAX_BACKOFF_S = 0.5, 8.0  # the client's backoff, for the retries we make


def _tries(request: Any) -> int:
    """HTTP requests the client sent for one call, from its last request (1 + its retries)."""
    try:
        return int(request.headers.get(RETRY_COUNT_HEADER, "0")) + 1
    except (AttributeError, ValueError):
        return 1


class _Malformed(ValueError):
    """A response that parsed but is not a chat completion."""


def _completion_of(response: Any) -> tuple[str, tuple[int, int] | None]:
    """(text, (prompt, completion tokens) or None) of a response; _Malformed if it has none."""
    try:
        text = response.choices[0].message.content or ""
        usage = response.usage
        tokens = None if usage is None else (int(usage.prompt_tokens), int(usage.completion_tokens))
    except (AttributeError, IndexError, KeyError, TypeError, ValueError) as err:
        raise _Malformed(f"not a chat completion ({type(err).__name__}: {err})"[:300]) from None
    if not isinstance(text, str):
        raise _Malformed(f"message content is {type(text).__name__}, not text")
    return text, tokens


class OpenAILLM:
    """Chat completions from an OpenAI-compatible endpoint behind the async `LLM` interface."""

    def __init__(
        self,
        model: str,
        base_url: str | None,
        *,
        api_key: str | None = None,
        max_concurrency: int = 32,
        max_retries: int = 4,
        timeout_s: float = 120.0,
        malformed_backoff_s: float = BACKOFF_S,
        price_prompt_per_m: float | None = None,
        price_completion_per_m: float | None = None,
    ) -> None:
        self.name = model
        self.base_url = base_url
        self.api_key = api_key or "EMPTY"  # local servers accept any key
        self.max_concurrency = max(1, int(max_concurrency))
        self.max_retries = max(0, int(max_retries))
        self.timeout_s = float(timeout_s)
        self.malformed_backoff_s = float(malformed_backoff_s)  # first wait; doubles, max 8 s
        self.prices = (price_prompt_per_m, price_completion_per_m)
        self.attempts = 0  # HTTP requests sent, retries included
        self.requests = 0  # completions asked for
        self.retries = 0  # attempts repeated after a transient failure
        self._loop: asyncio.AbstractEventLoop | None = None
        self._client: Any = None
        self._semaphore: asyncio.Semaphore | None = None

    @classmethod
    def from_config(cls, cfg: ExecutorConfig) -> OpenAILLM:
        if not cfg.model:
            raise ValueError("executor=openai needs executor.model (the served model name)")
        return cls(
            cfg.model,
            cfg.base_url,
            api_key=os.environ.get(cfg.api_key_env),
            max_concurrency=cfg.max_concurrency,
            max_retries=cfg.max_retries,
            timeout_s=cfg.timeout_s,
            price_prompt_per_m=cfg.price_prompt_per_m,
            price_completion_per_m=cfg.price_completion_per_m,
        )

    def cost(self, prompt_tokens: int, completion_tokens: int) -> float | None:
        """USD from per-1M-token prices; None when a price is unknown."""
        prompt_price, completion_price = self.prices
        if prompt_price is None or completion_price is None:
            return None
        return (prompt_tokens * prompt_price + completion_tokens * completion_price) / 1e6

    async def _count(self, request: Any) -> None:
        """Request hook of the HTTP client: every request sent, and whether it is a retry."""
        self.attempts += 1
        self.retries += _tries(request) > 1

    def _session(self) -> tuple[Any, asyncio.Semaphore]:
        """Client and semaphore of the running event loop (both are bound to one loop)."""
        loop = asyncio.get_running_loop()
        if self._loop is not loop or self._client is None or self._semaphore is None:
            from openai import AsyncOpenAI, DefaultAsyncHttpxClient

            self._loop = loop
            self._client = AsyncOpenAI(
                base_url=self.base_url,
                api_key=self.api_key,
                max_retries=self.max_retries,
                timeout=self.timeout_s,
                http_client=DefaultAsyncHttpxClient(event_hooks={"request": [self._count]}),
            )
            self._semaphore = asyncio.Semaphore(self.max_concurrency)
        return self._client, self._semaphore

    def _backoff(self, retry: int) -> float:
        """The client's schedule (see module docstring) for our `retry`-th retry (0-based)."""
        delay = min(MAX_BACKOFF_S, self.malformed_backoff_s * 2**retry)
        return delay * (1 - 0.25 * random.random())

    async def _create(
        self, client: Any, messages: list[Message], params: SamplingParams, sample_index: int
    ) -> tuple[str, Any]:
        """(text, usage) of one chat completion. The client retries transient failures; we
        retry malformed responses within the same budget. LLMError after the last attempt."""
        import openai

        where = f"{self.name} at {self.base_url or 'api.openai.com'}"
        sent = 0  # HTTP requests of this completion so far
        while True:
            # what is left of the budget (max_retries) after the requests already sent
            caller = (
                client if sent == 0 else client.with_options(max_retries=self.max_retries - sent)
            )
            try:
                raw = await caller.chat.completions.with_raw_response.create(
                    model=self.name,
                    messages=messages,
                    temperature=params.temperature,
                    top_p=params.top_p,
                    max_tokens=params.max_new_tokens,
                    seed=params.seed + sample_index,  # distinct, reproducible samples (vLLM)
                )
                sent += raw.retries_taken + 1
                return _completion_of(raw.parse())
            except openai.APIStatusError as err:
                raise LLMError(
                    f"{where}: HTTP {err.status_code} after {sent + _tries(err.request)} "
                    f"attempt(s): {err.message}"
                ) from err
            except openai.APIConnectionError as err:  # refused, reset, DNS, timeout
                kind = "timeout" if isinstance(err, openai.APITimeoutError) else "connection"
                raise LLMError(
                    f"{where}: {kind} error after {sent + _tries(err.request)} attempt(s): "
                    f"{err.__cause__ or err}"
                ) from err
            except (json.JSONDecodeError, openai.APIResponseValidationError, _Malformed) as err:
                if sent > self.max_retries:
                    raise LLMError(
                        f"{where}: malformed response after {sent} attempt(s): {err}"
                    ) from err
                await asyncio.sleep(self._backoff(sent - 1))
                self.retries += 1  # the next request is ours, the client counts it as a first

    async def complete(
        self, messages: list[Message], params: SamplingParams, sample_index: int = 0
    ) -> Completion:
        start = time.perf_counter()
        client, semaphore = self._session()
        self.requests += 1
        async with semaphore:
            text, usage = await self._create(client, messages, params, sample_index)
        if usage is None:  # some servers omit usage: tokens and cost unknown
            prompt_tokens = completion_tokens = 0
            cost = None
        else:
            prompt_tokens, completion_tokens = usage
            cost = self.cost(prompt_tokens, completion_tokens)
        return Completion(
            text=text,
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            cost_usd=cost,
            latency_s=time.perf_counter() - start,
        )

    async def aclose(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            try:
                await client.close()
            except RuntimeError:  # its event loop is gone: nothing left to close
                pass
