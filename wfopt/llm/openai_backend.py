"""Any OpenAI-compatible server (vLLM, SGLang, llama.cpp server, OpenAI) as an executor.

Uses the official `openai` async client with its own retries switched off: we retry here,
with exponential backoff and jitter, on exactly the transient failures (connection errors,
timeouts, 408/409/429 and 5xx; a server's `Retry-After` wins when it is sane; a malformed
response: JSON that does not parse or lacks the completion), so the policy is visible,
configurable (`executor.retry_backoff_s`) and counted (`requests`, `retries`: logged as
`executor/requests`, `executor/retries`).
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

RETRY_STATUS = frozenset({408, 409, 429})  # plus every 5xx
MAX_RETRY_AFTER_S = 60.0  # a longer Retry-After is ignored in favour of our own backoff


def _retry_after(headers: Any) -> float | None:
    """Seconds the server asked us to wait (`retry-after-ms` or `retry-after`), if any."""
    if headers is None:
        return None
    for name, scale in (("retry-after-ms", 1e-3), ("retry-after", 1.0)):
        try:
            value = float(headers.get(name)) * scale
        except (TypeError, ValueError):
            continue
        if 0 <= value <= MAX_RETRY_AFTER_S:
            return value
    return None


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
        backoff_s: float = 0.5,
        max_backoff_s: float = 8.0,
        price_prompt_per_m: float | None = None,
        price_completion_per_m: float | None = None,
    ) -> None:
        self.name = model
        self.base_url = base_url
        self.api_key = api_key or "EMPTY"  # local servers accept any key
        self.max_concurrency = max(1, int(max_concurrency))
        self.max_retries = max(0, int(max_retries))
        self.timeout_s = float(timeout_s)
        self.backoff_s = float(backoff_s)
        self.max_backoff_s = float(max_backoff_s)
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
            backoff_s=cfg.retry_backoff_s,
            price_prompt_per_m=cfg.price_prompt_per_m,
            price_completion_per_m=cfg.price_completion_per_m,
        )

    def cost(self, prompt_tokens: int, completion_tokens: int) -> float | None:
        """USD from per-1M-token prices; None when a price is unknown."""
        prompt_price, completion_price = self.prices
        if prompt_price is None or completion_price is None:
            return None
        return (prompt_tokens * prompt_price + completion_tokens * completion_price) / 1e6

    def _session(self) -> tuple[Any, asyncio.Semaphore]:
        """Client and semaphore of the running event loop (both are bound to one loop)."""
        loop = asyncio.get_running_loop()
        if self._loop is not loop or self._client is None or self._semaphore is None:
            from openai import AsyncOpenAI

            self._loop = loop
            self._client = AsyncOpenAI(
                base_url=self.base_url,
                api_key=self.api_key,
                max_retries=0,  # retries are ours (see module docstring)
                timeout=self.timeout_s,
            )
            self._semaphore = asyncio.Semaphore(self.max_concurrency)
        return self._client, self._semaphore

    def _backoff(self, attempt: int, headers: Any = None) -> float:
        server = _retry_after(headers)
        if server is not None:
            return server
        delay = min(self.max_backoff_s, self.backoff_s * 2**attempt)
        return delay * random.uniform(0.75, 1.25)

    async def _create(
        self, client: Any, messages: list[Message], params: SamplingParams, sample_index: int
    ) -> tuple[str, Any]:
        """(text, usage) of one chat completion, retried on transient failures; LLMError after
        the last."""
        import openai

        where = f"{self.name} at {self.base_url or 'api.openai.com'}"
        for attempt in range(self.max_retries + 1):
            last = attempt == self.max_retries
            self.attempts += 1
            self.retries += attempt > 0
            try:
                response = await client.chat.completions.create(
                    model=self.name,
                    messages=messages,
                    temperature=params.temperature,
                    top_p=params.top_p,
                    max_tokens=params.max_new_tokens,
                    seed=params.seed + sample_index,  # distinct, reproducible samples (vLLM)
                )
                return _completion_of(response)
            except openai.APIStatusError as err:
                status = err.status_code
                if last or not (status in RETRY_STATUS or status >= 500):
                    raise LLMError(
                        f"{where}: HTTP {status} after {attempt + 1} attempt(s): {err.message}"
                    ) from err
                await asyncio.sleep(self._backoff(attempt, err.response.headers))
            except openai.APIConnectionError as err:  # refused, reset, DNS, timeout
                if last:
                    kind = "timeout" if isinstance(err, openai.APITimeoutError) else "connection"
                    raise LLMError(
                        f"{where}: {kind} error after {attempt + 1} attempt(s): "
                        f"{err.__cause__ or err}"
                    ) from err
                await asyncio.sleep(self._backoff(attempt))
            except (json.JSONDecodeError, openai.APIResponseValidationError, _Malformed) as err:
                if last:
                    raise LLMError(
                        f"{where}: malformed response after {attempt + 1} attempt(s): {err}"
                    ) from err
                await asyncio.sleep(self._backoff(attempt))
        raise AssertionError("unreachable")

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
