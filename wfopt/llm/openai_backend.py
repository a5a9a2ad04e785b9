"""Any OpenAI-compatible server (vLLM, SGLang, llama.cpp server, OpenAI) as an executor.

Uses the official `openai` async client. Its built-in retry does what we need: exponential
backoff with jitter on connection errors, timeouts, 408/409/429 and 5xx, honouring
`retry-after` headers; `max_retries` bounds it. Concurrency is bounded by a semaphore.
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

from wfopt.llm.base import Completion, LLMError, Message, SamplingParams


class OpenAILLM:
    def __init__(
        self,
        model: str,
        base_url: str | None,
        *,
        api_key: str | None = None,
        max_concurrency: int = 32,
        max_retries: int = 4,
        timeout_s: float = 120.0,
        price_prompt_per_m: float | None = None,
        price_completion_per_m: float | None = None,
    ) -> None:
        from openai import AsyncOpenAI

        self.name = model
        self.base_url = base_url
        self._client = AsyncOpenAI(
            base_url=base_url,
            api_key=api_key or "EMPTY",
            max_retries=max_retries,
            timeout=timeout_s,
        )
        self._semaphore = asyncio.Semaphore(max(1, max_concurrency))
        self.prices = (price_prompt_per_m, price_completion_per_m)

    @classmethod
    def from_config(cls, cfg: Any) -> OpenAILLM:
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

    async def complete(
        self, messages: list[Message], params: SamplingParams, sample_index: int = 0
    ) -> Completion:
        import openai

        start = time.perf_counter()
        async with self._semaphore:
            try:
                response = await self._client.chat.completions.create(
                    model=self.name,
                    messages=messages,  # type: ignore[arg-type]
                    temperature=params.temperature,
                    top_p=params.top_p,
                    max_tokens=params.max_new_tokens,
                    seed=params.seed + sample_index,
                )
            except openai.APIStatusError as err:
                raise LLMError(
                    f"{self.base_url}: HTTP {err.status_code} after retries: {err.message}"
                ) from err
            except openai.APIError as err:
                raise LLMError(
                    f"{self.base_url}: {type(err).__name__} after retries: {err}"
                ) from err
        text = response.choices[0].message.content or "" if response.choices else ""
        usage = response.usage
        prompt_tokens = usage.prompt_tokens if usage else 0
        completion_tokens = usage.completion_tokens if usage else 0
        return Completion(
            text=text,
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            cost_usd=self.cost(prompt_tokens, completion_tokens),
            latency_s=time.perf_counter() - start,
        )

    async def aclose(self) -> None:
        await self._client.close()
