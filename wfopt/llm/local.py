"""Local transformers backend with dynamic batching.

Concurrent `complete()` calls land in a queue. One worker takes the first waiting request,
waits up to `batch_wait_ms` for more (at most `max_batch_size`), left-pads them and decodes
them together in a worker thread, so the event loop keeps accepting requests meanwhile; the
next batch forms from whatever arrived during the previous one.

The decode loop is our own (prefill, then one token per step with a KV cache) because each
request carries its own sampling parameters and its own random generator, seeded from
(seed, sample_index, prompt): a sampled completion does not depend on which other requests
shared its batch, and greedy rows are plain argmax.
"""

from __future__ import annotations

import asyncio
import hashlib
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import torch

from wfopt.llm.base import Completion, Message, SamplingParams


@dataclass
class _Request:
    prompt: str
    params: SamplingParams
    sample_index: int
    future: asyncio.Future


def _request_seed(params: SamplingParams, sample_index: int, prompt: str) -> int:
    digest = hashlib.sha256(f"{params.seed}:{sample_index}:{prompt}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def _sample_row(logits: torch.Tensor, params: SamplingParams, gen: torch.Generator) -> int:
    """One token from a `(V,)` row: argmax at temperature 0, else temperature + top-p."""
    if params.temperature <= 0:
        return int(torch.argmax(logits))
    probs = torch.softmax(logits.float() / params.temperature, dim=-1)
    if params.top_p < 1.0:
        sorted_probs, order = torch.sort(probs, descending=True)
        # keep the smallest prefix whose mass reaches top_p (always at least one token)
        keep = torch.cumsum(sorted_probs, dim=-1) - sorted_probs < params.top_p
        sorted_probs = sorted_probs * keep
        choice = torch.multinomial(sorted_probs / sorted_probs.sum(), 1, generator=gen)
        return int(order[choice])
    return int(torch.multinomial(probs, 1, generator=gen))


class LocalLLM:
    """A transformers causal LM behind the async `LLM` interface."""

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        name: str,
        *,
        max_batch_size: int = 16,
        batch_wait_ms: float = 20.0,
        chat_template: bool = True,
    ) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.name = name
        self.max_batch_size = max(1, max_batch_size)
        self.batch_wait_s = batch_wait_ms / 1000
        self.chat_template = chat_template and tokenizer.chat_template is not None
        self.stop_ids = self._stop_ids(tokenizer)
        self.ignore_eos = False  # benchmarks set this to generate exactly max_new_tokens
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="wfopt-generate")
        self._lock = threading.Lock()  # one generation at a time, whichever loop asks
        self._queue: asyncio.Queue[_Request] | None = None
        self._worker: asyncio.Task | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.batches = 0  # how many batches were generated (for tests and benchmarks)

    @classmethod
    def from_config(cls, model_cfg: Any, hardware_cfg: Any) -> LocalLLM:
        from wfopt.models import load_causal_lm, load_tokenizer

        model = load_causal_lm(model_cfg, dtype=hardware_cfg.dtype, device=hardware_cfg.device)
        return cls(
            model,
            load_tokenizer(model_cfg),
            model_cfg.name,
            max_batch_size=model_cfg.max_batch_size,
            batch_wait_ms=model_cfg.batch_wait_ms,
            chat_template=model_cfg.chat_template,
        )

    @staticmethod
    def _stop_ids(tokenizer: Any) -> set[int]:
        ids = {tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set()
        for token in ("<|im_end|>", "<|endoftext|>", "<|eot_id|>"):
            token_id = tokenizer.convert_tokens_to_ids(token)
            if isinstance(token_id, int) and token_id != tokenizer.unk_token_id:
                ids.add(token_id)
        return ids

    def render(self, messages: list[Message]) -> str:
        """Messages -> prompt text (chat template with the assistant turn opened)."""
        if self.chat_template:
            return self.tokenizer.apply_chat_template(
                messages, tokenize=False, add_generation_prompt=True
            )
        return "\n\n".join(m["content"] for m in messages)

    # -- async interface ------------------------------------------------------------------

    async def complete(
        self, messages: list[Message], params: SamplingParams, sample_index: int = 0
    ) -> Completion:
        return await self.complete_text(self.render(messages), params, sample_index)

    async def complete_text(
        self, prompt: str, params: SamplingParams, sample_index: int = 0
    ) -> Completion:
        """Generate from raw prompt text (the policy uses this with its own prompt format)."""
        loop = asyncio.get_running_loop()
        if self._loop is not loop or self._worker is None or self._worker.done():
            self._loop, self._queue = loop, asyncio.Queue()
            self._worker = loop.create_task(self._serve())
        future = loop.create_future()
        await self._queue.put(_Request(prompt, params, sample_index, future))  # type: ignore[union-attr]
        return await future

    async def _serve(self) -> None:
        queue = self._queue
        assert queue is not None
        loop = asyncio.get_running_loop()
        while True:
            batch = [await queue.get()]
            deadline = loop.time() + self.batch_wait_s
            while len(batch) < self.max_batch_size:
                timeout = deadline - loop.time()
                try:
                    batch.append(
                        queue.get_nowait()
                        if timeout <= 0
                        else await asyncio.wait_for(queue.get(), timeout)
                    )
                except (asyncio.QueueEmpty, asyncio.TimeoutError):
                    break
            batch = [r for r in batch if not r.future.cancelled()]
            if not batch:
                continue
            start = time.perf_counter()
            try:
                outputs = await loop.run_in_executor(
                    self._executor,
                    self.generate_batch,
                    [r.prompt for r in batch],
                    [r.params for r in batch],
                    [r.sample_index for r in batch],
                )
            except Exception as err:  # surface to every waiting caller, keep serving
                for r in batch:
                    if not r.future.done():
                        r.future.set_exception(err)
                continue
            latency = time.perf_counter() - start
            for r, (text, n_prompt, n_completion) in zip(batch, outputs, strict=True):
                if not r.future.done():
                    r.future.set_result(Completion(text, n_prompt, n_completion, 0.0, latency))

    async def aclose(self) -> None:
        if self._worker is not None and not self._worker.done():
            self._worker.cancel()
        self._worker = None

    # -- batched decoding -----------------------------------------------------------------

    @torch.inference_mode()
    def generate_batch(
        self, prompts: list[str], params: list[SamplingParams], sample_indices: list[int]
    ) -> list[tuple[str, int, int]]:
        """Decode a batch of prompts together: (text, prompt tokens, completion tokens) each."""
        with self._lock:
            self.batches += 1
            return self._decode(prompts, params, sample_indices)

    def _decode(
        self, prompts: list[str], params: list[SamplingParams], sample_indices: list[int]
    ) -> list[tuple[str, int, int]]:
        from transformers import DynamicCache

        device = next(self.model.parameters()).device
        self.tokenizer.padding_side = "left"
        enc = self.tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
        input_ids = enc["input_ids"].to(device)
        attention = enc["attention_mask"].to(device)
        prompt_lens = attention.sum(dim=1).tolist()
        positions = (attention.cumsum(-1) - 1).clamp(min=0)
        generators = [
            torch.Generator().manual_seed(_request_seed(p, i, prompt))
            for p, i, prompt in zip(params, sample_indices, prompts, strict=True)
        ]
        limits = [p.max_new_tokens for p in params]
        batch = len(prompts)
        tokens: list[list[int]] = [[] for _ in range(batch)]
        done = [limit <= 0 for limit in limits]
        cache = DynamicCache()
        out = self.model(
            input_ids=input_ids,
            attention_mask=attention,
            position_ids=positions,
            cache=cache,
            use_cache=True,
            logits_to_keep=1,
        )
        pad = self.tokenizer.pad_token_id or 0
        for _ in range(max(limits, default=0)):
            logits = out.logits[:, -1, :]
            step = []
            for row in range(batch):
                if done[row]:
                    step.append(pad)
                    continue
                token = _sample_row(logits[row], params[row], generators[row])
                step.append(token)
                if token in self.stop_ids and not self.ignore_eos:
                    done[row] = True
                else:
                    tokens[row].append(token)
                    done[row] = len(tokens[row]) >= limits[row]
            if all(done):
                break
            next_ids = torch.tensor(step, device=device).unsqueeze(1)
            attention = torch.cat([attention, attention.new_ones(batch, 1)], dim=1)
            positions = positions[:, -1:] + 1
            out = self.model(
                input_ids=next_ids,
                attention_mask=attention,
                position_ids=positions,
                cache=cache,
                use_cache=True,
            )
        return [
            (self.tokenizer.decode(t, skip_special_tokens=True), n, len(t))
            for t, n in zip(tokens, prompt_lens, strict=True)
        ]
