"""Local transformers backend: continuous batching (or, for comparison, static batches).

Concurrent `complete()` calls land in a queue; one worker owns a `DecodeBatch` (see
`wfopt.llm.decoding`: prefill, KV-cached decode steps, rows joining and leaving) and runs
each step in a worker thread, so the event loop keeps accepting requests meanwhile.

`batching="continuous"` (the default): between two decode steps the worker admits whatever
arrived (at most `max_batch_size` rows in flight; at most `max_prefill_tokens` padded prompt
tokens prefilled per step, so running rows stall for one bounded prefill, not for a whole
batch); finished rows leave at once. Workflows chain their calls (generate -> review ->
revise), so a call rarely arrives together with others: with static batches they waited for
the running batch to end and then decoded in small batches.
`batching="static"`: the first waiting request plus whatever arrives within `batch_wait_ms`
(at most `max_batch_size`) decode together to the end; the next batch forms from whatever
arrived meanwhile.

The decode loop is our own, not transformers' continuous-batching engine
(`generate_batch` / `init_continuous_batching`, paged KV): that engine samples with one
generator for the whole batch (`torch.multinomial` on the global RNG) and fixes greedy or
sampling for all requests, so a sampled completion would depend on which requests shared its
batch (measured: request 0 sampled alone and next to 3 others, same seed, differs). Here
each request carries its own sampling parameters and its own generator, seeded from
(seed, sample_index, prompt), and greedy rows are plain argmax. Nor is the engine faster on
CPU: SmolLM2-135M fp32, 2 cores, greedy, a persistent engine and our static loop
interleaved in one process (a machine loaded by other jobs, so absolute rates are low):
16 prompts x 32 tokens, ours 39 tokens/s vs the engine's 32 (per-repeat engine/ours
0.93, 0.79, 0.73); 8 x 24: 24 vs 22. Greedy rows were identical.

Metrics (read by tests and benchmarks): `batches` / `batch_sizes` count prefills (requests
admitted together; a static batch is one prefill), `decode_steps` / `decoded_rows` the decode
forwards and the rows they carried (`mean_batch()`: rows per decode step), `max_rows` the
most rows held at once, `joined` the requests admitted while others were mid-decode, and
`queue_waits` / `latencies` each recent call's seconds from submission to admission and to
its answer. A request's queue wait also runs the submitting run's `QueueClock`, so workflow
time limits do not count the backlog (`wfopt.workflow.call_solve`).
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from wfopt.llm.base import Completion, LLMError, Message, QueueClock, SamplingParams, queue_clock
from wfopt.llm.decoding import (  # noqa: F401  (CANDIDATES, choose_tokens: re-exported)
    CANDIDATES,
    DecodeBatch,
    Row,
    choose_tokens,
    plan_admission,
    request_seed,
)
from wfopt.tokens import encode_prompt

if TYPE_CHECKING:
    from wfopt.config import HardwareConfig, ModelConfig

# Chat-turn terminators that some tokenizers do not declare as their EOS token.
_EXTRA_STOP_TOKENS = ("<|im_end|>", "<|endoftext|>", "<|eot_id|>", "<|end|>")
HISTORY = 100_000  # calls whose queue wait and latency are kept


@dataclass(frozen=True)
class Generation:
    """What one decoded row produced (the synchronous result of `generate_batch`)."""

    text: str
    prompt_tokens: int
    completion_tokens: int  # generated tokens, the stop token included
    stopped: bool  # True: ended on a stop token; False: hit max_new_tokens
    prompt_ids: list[int]  # the prompt exactly as the model saw it
    completion_ids: list[int]  # every generated token, the stop token included


@dataclass(eq=False)
class _Request:
    row: Row
    future: asyncio.Future
    submitted: float
    clock: QueueClock | None  # the submitting run's, if it counts queue time
    admitted: float | None = None

    def admit(self) -> None:
        """Mark the request as out of the queue (once: admitted, or given up while queued)."""
        if self.admitted is None:
            self.admitted = time.perf_counter()
            if self.clock is not None:
                self.clock.leave()


def stop_token_ids(tokenizer: Any, model: Any = None) -> set[int]:
    """EOS of the tokenizer and the model's generation config, plus known chat-turn ends."""
    ids: set[int] = set()
    candidates: list[Any] = [tokenizer.eos_token_id]
    generation_config = getattr(model, "generation_config", None)
    if generation_config is not None:
        eos = generation_config.eos_token_id
        candidates.extend(eos if isinstance(eos, list | tuple) else [eos])
    vocab = tokenizer.get_vocab()
    candidates.extend(vocab.get(token) for token in _EXTRA_STOP_TOKENS)
    ids.update(int(i) for i in candidates if i is not None)
    return ids


class LocalLLM:
    """A transformers causal LM behind the async `LLM` interface (continuous batching)."""

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        name: str,
        *,
        max_batch_size: int = 16,
        batch_wait_ms: float = 20.0,
        batching: str = "continuous",
        max_prefill_tokens: int = 2048,
        chat_template: bool = True,
        ignore_eos: bool = False,
        cache_identity: dict | None = None,
    ) -> None:
        if str(batching) not in ("continuous", "static"):
            raise ValueError(f"batching must be 'continuous' or 'static', not {batching!r}")
        self.model = model
        self.tokenizer = tokenizer
        self.name = name
        # what the response cache keys on (see models.model_identity); None: the name
        self.cache_identity = cache_identity
        self.max_batch_size = max(1, int(max_batch_size))  # rows in flight, both modes
        self.batch_wait_s = max(0.0, float(batch_wait_ms)) / 1000  # static batching only
        self.continuous = str(batching) == "continuous"
        self.max_prefill_tokens = max(1, int(max_prefill_tokens))  # continuous only
        self.chat_template = bool(chat_template) and tokenizer.chat_template is not None
        self.stop_ids = stop_token_ids(tokenizer, model)
        pad = tokenizer.pad_token_id
        self.pad_id = int((tokenizer.eos_token_id if pad is None else pad) or 0)
        self.ignore_eos = ignore_eos  # benchmarks: always generate exactly max_new_tokens
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="wfopt-generate")
        self._lock = threading.Lock()  # one generation at a time, whichever thread asks
        self._queue: asyncio.Queue[_Request] | None = None
        self._worker: asyncio.Task | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        # metrics (see the module docstring)
        self.batches = 0
        self.batch_sizes: list[int] = []
        self.decode_steps = 0
        self.decoded_rows = 0
        self.max_rows = 0
        self.joined = 0
        self.queue_waits: deque[float] = deque(maxlen=HISTORY)
        self.latencies: deque[float] = deque(maxlen=HISTORY)

    @staticmethod
    def config_options(model_cfg: ModelConfig) -> dict[str, Any]:
        """The constructor's keyword arguments that `model_cfg` sets."""
        return {
            "max_batch_size": model_cfg.max_batch_size,
            "batch_wait_ms": model_cfg.batch_wait_ms,
            # configs saved before these keys existed decode as before: continuous
            "batching": str(getattr(model_cfg, "batching", "continuous")),
            "max_prefill_tokens": getattr(model_cfg, "max_prefill_tokens", 2048),
            "chat_template": model_cfg.chat_template,
        }

    @classmethod
    def from_config(cls, model_cfg: ModelConfig, hardware_cfg: HardwareConfig) -> LocalLLM:
        """Load the model and tokenizer named by `model_cfg` on `hardware_cfg`'s device."""
        from wfopt.models import load_causal_lm, load_tokenizer, model_identity

        model = load_causal_lm(model_cfg, dtype=hardware_cfg.dtype, device=hardware_cfg.device)
        llm = cls(model, load_tokenizer(model_cfg), model_cfg.name, **cls.config_options(model_cfg))
        llm.cache_identity = model_identity(model_cfg, model, llm.chat_template)
        return llm

    def render(self, messages: list[Message]) -> str:
        """Messages -> prompt text (chat template with the assistant turn opened)."""
        if self.chat_template:
            return self.tokenizer.apply_chat_template(
                messages, tokenize=False, add_generation_prompt=True
            )
        return "\n\n".join(m["content"] for m in messages)

    def mean_batch(self) -> float:
        """Rows per decode step so far (0 before the first step)."""
        return self.decoded_rows / self.decode_steps if self.decode_steps else 0.0

    # -- async interface ------------------------------------------------------------------

    async def complete(
        self, messages: list[Message], params: SamplingParams, sample_index: int = 0
    ) -> Completion:
        return await self.complete_text(self.render(messages), params, sample_index)

    async def complete_text(
        self, prompt: str, params: SamplingParams, sample_index: int = 0
    ) -> Completion:
        """Generate from raw prompt text (for callers with their own prompt format)."""
        loop = asyncio.get_running_loop()
        if self._loop is not loop or self._worker is None or self._worker.done():
            # one queue and worker per event loop (each asyncio.run gets fresh ones)
            self._loop, self._queue = loop, asyncio.Queue()
            serve = self._serve_continuous if self.continuous else self._serve_static
            self._worker = loop.create_task(serve(self._queue))
        request = _Request(
            self._row(prompt, params, sample_index),
            loop.create_future(),
            time.perf_counter(),
            queue_clock.get(),
        )
        request.row.owner = request
        if request.clock is not None:
            request.clock.enter()
        self._queue.put_nowait(request)  # type: ignore[union-attr]
        try:
            return await request.future
        finally:
            request.admit()  # a caller that gave up while queued stops its clock too

    def _row(self, prompt: str, params: SamplingParams, sample_index: int) -> Row:
        ids = encode_prompt(prompt, self.tokenizer)
        if not ids:
            raise ValueError("empty prompt: nothing to condition the generation on")
        seed = request_seed(params, sample_index, prompt)
        return Row(ids, params, torch.Generator().manual_seed(seed))

    def _finish(self, request: _Request, generation: Generation, now: float) -> None:
        if request.future.done():  # the caller gave up
            return
        assert request.admitted is not None
        self.queue_waits.append(request.admitted - request.submitted)
        self.latencies.append(now - request.submitted)
        request.future.set_result(
            Completion(
                text=generation.text,
                prompt_tokens=generation.prompt_tokens,
                completion_tokens=generation.completion_tokens,
                cost_usd=0.0,  # local compute: a known price of zero
                latency_s=now - request.submitted,
                prompt_ids=generation.prompt_ids,
                completion_ids=generation.completion_ids,
                stopped=generation.stopped,
            )
        )

    @staticmethod
    def _fail(requests: list[_Request], err: BaseException) -> None:
        for r in requests:
            if not r.future.done():
                r.future.set_exception(err)

    async def _serve_continuous(self, queue: asyncio.Queue[_Request]) -> None:
        """Admit arrivals between decode steps; answer rows as they finish."""
        loop = asyncio.get_running_loop()
        batch = self._new_batch()
        waiting: deque[_Request] = deque()
        try:
            while True:
                if not len(batch) and not waiting:
                    waiting.append(await queue.get())
                while not queue.empty():
                    waiting.append(queue.get_nowait())
                # callers that gave up: queued ones are forgotten, decoding ones leave the
                # batch at the next eviction (the worker is idle while this loop runs)
                waiting = deque(r for r in waiting if not r.future.done())
                for row in batch.rows:
                    row.done = row.done or row.owner.future.done()
                count = plan_admission(
                    [len(r.row.prompt_ids) for r in waiting],
                    room=self.max_batch_size - len(batch),
                    budget=self.max_prefill_tokens,
                )
                admitted = [waiting.popleft() for _ in range(count)]
                for r in admitted:
                    r.admit()
                try:
                    finished = await loop.run_in_executor(
                        self._executor, self._advance, batch, [r.row for r in admitted]
                    )
                except Exception as err:  # surface to every caller in flight, keep serving
                    self._fail([row.owner for row in batch.rows] + admitted, err)
                    batch = self._new_batch()
                    continue
                now = time.perf_counter()
                for row, generation in finished:
                    self._finish(row.owner, generation, now)
        finally:  # cancelled (aclose, loop shutdown): nobody must wait forever
            pending = [row.owner for row in batch.rows] + list(waiting)
            pending += [queue.get_nowait() for _ in range(queue.qsize())]
            self._fail(pending, LLMError(f"{self.name}: backend closed"))

    async def _collect(self, queue: asyncio.Queue[_Request], batch: list[_Request]) -> None:
        """Fill `batch`: the first waiting request plus whatever arrives within `batch_wait_ms`."""
        loop = asyncio.get_running_loop()
        batch.append(await queue.get())
        deadline = loop.time() + self.batch_wait_s
        while len(batch) < self.max_batch_size:
            if not queue.empty():
                batch.append(queue.get_nowait())
                continue
            timeout = deadline - loop.time()
            if timeout <= 0:
                break
            try:
                batch.append(await asyncio.wait_for(queue.get(), timeout))
            except asyncio.TimeoutError:
                break

    async def _serve_static(self, queue: asyncio.Queue[_Request]) -> None:
        """Collect a batch, decode it to its end, answer it; repeat."""
        loop = asyncio.get_running_loop()
        batch: list[_Request] = []
        try:
            while True:
                batch = []
                await self._collect(queue, batch)
                batch = [r for r in batch if not r.future.done()]  # drop callers that gave up
                if not batch:
                    continue
                for r in batch:
                    r.admit()
                try:
                    outputs = await loop.run_in_executor(
                        self._executor, self._decode_rows, [r.row for r in batch]
                    )
                except Exception as err:  # surface to every waiting caller, keep serving
                    self._fail(batch, err)
                    continue
                now = time.perf_counter()
                for r, g in zip(batch, outputs, strict=True):
                    self._finish(r, g, now)
        finally:  # cancelled (aclose, loop shutdown): nobody must wait forever
            pending = batch + [queue.get_nowait() for _ in range(queue.qsize())]
            self._fail(pending, LLMError(f"{self.name}: backend closed"))

    async def aclose(self) -> None:
        """Stop the batching worker (queued requests fail); the model stays loaded."""
        worker, self._worker = self._worker, None
        if worker is not None and not worker.done():
            worker.cancel()
            try:
                await worker
            except (asyncio.CancelledError, RuntimeError):  # RuntimeError: other loop
                pass

    # -- decoding (worker thread) ---------------------------------------------------------

    def _new_batch(self) -> DecodeBatch:
        return DecodeBatch(self.model, self.stop_ids, self.pad_id, self.ignore_eos)

    def _admit(self, batch: DecodeBatch, rows: list[Row]) -> None:
        self.batches += 1
        self.batch_sizes.append(len(rows))
        batch.admit(rows)
        self.max_rows = max(self.max_rows, len(batch))

    def _step(self, batch: DecodeBatch) -> None:
        self.decode_steps += 1
        self.decoded_rows += len(batch)
        self.max_rows = max(self.max_rows, len(batch))
        batch.step()

    def _generation(self, row: Row) -> Generation:
        tokens = row.tokens[:-1] if row.stopped else row.tokens  # the stop token is no text
        return Generation(
            text=self.tokenizer.decode(tokens, skip_special_tokens=True),
            prompt_tokens=len(row.prompt_ids),
            completion_tokens=len(row.tokens),
            stopped=row.stopped,
            prompt_ids=list(row.prompt_ids),
            completion_ids=list(row.tokens),
        )

    def _advance(self, batch: DecodeBatch, rows: list[Row]) -> list[tuple[Row, Generation]]:
        """Admit `rows` (if any), then one decode step; the rows that finished."""
        with self._lock, torch.inference_mode():
            batch.ignore_eos = self.ignore_eos
            if rows:
                self.joined += len(rows) if len(batch) else 0
                self._admit(batch, rows)
            finished = batch.evict()
            if len(batch):
                self._step(batch)
                finished += batch.evict()
            return [(row, self._generation(row)) for row in finished]

    def _decode_rows(self, rows: list[Row]) -> list[Generation]:
        """Decode `rows` together to their ends (a static batch); one Generation per row."""
        with self._lock, torch.inference_mode():
            batch = self._new_batch()
            self._admit(batch, rows)
            batch.evict()
            while len(batch):
                self._step(batch)
                batch.evict()
            return [self._generation(row) for row in rows]

    def generate_batch(
        self, prompts: list[str], params: list[SamplingParams], sample_indices: list[int]
    ) -> list[Generation]:
        """Decode prompts together (blocking; thread-safe): one `Generation` per prompt."""
        if not (len(prompts) == len(params) == len(sample_indices)):
            raise ValueError("prompts, params and sample_indices must have the same length")
        if not prompts:
            return []
        return self._decode_rows(
            [self._row(*args) for args in zip(prompts, params, sample_indices, strict=True)]
        )
