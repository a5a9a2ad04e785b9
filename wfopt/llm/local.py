"""Local transformers backend with dynamic batching.

Concurrent `complete()` calls land in a queue. One worker takes the first waiting request,
waits up to `batch_wait_ms` for more (at most `max_batch_size`), left-pads them and decodes
them together in a worker thread, so the event loop keeps accepting requests meanwhile; the
next batch forms from whatever arrived during the previous one.

The decode loop is our own (prefill, then one token per step with a KV cache) because each
request carries its own sampling parameters and its own random generator, seeded from
(seed, sample_index, prompt): a sampled completion does not depend on which other requests
shared its batch, and greedy rows are plain argmax. Rows that finish (stop token or their
own `max_new_tokens`) leave the batch and the KV cache, so short answers cost nothing after
they end and long ones run on a smaller batch.
"""

from __future__ import annotations

import asyncio
import hashlib
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from wfopt.llm.base import Completion, LLMError, Message, SamplingParams
from wfopt.tokens import encode_prompt

if TYPE_CHECKING:
    from wfopt.config import HardwareConfig, ModelConfig

# Chat-turn terminators that some tokenizers do not declare as their EOS token.
_EXTRA_STOP_TOKENS = ("<|im_end|>", "<|endoftext|>", "<|eot_id|>", "<|end|>")
CANDIDATES = (64, 1024)  # top-p sampling looks for the nucleus among this many tokens first


@dataclass(frozen=True)
class Generation:
    """What one decoded row produced (the synchronous result of `generate_batch`)."""

    text: str
    prompt_tokens: int
    completion_tokens: int  # generated tokens, the stop token included
    stopped: bool  # True: ended on a stop token; False: hit max_new_tokens
    prompt_ids: list[int]  # the prompt exactly as the model saw it
    completion_ids: list[int]  # every generated token, the stop token included


@dataclass
class _Request:
    prompt: str
    params: SamplingParams
    sample_index: int
    future: asyncio.Future
    submitted: float


def request_seed(params: SamplingParams, sample_index: int, prompt: str) -> int:
    """The seed of one request's generator: fixed by (seed, sample_index, prompt) alone."""
    digest = hashlib.sha256(f"{params.seed}:{sample_index}:{prompt}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def _inverse_cdf(weights: torch.Tensor, uniforms: torch.Tensor) -> torch.Tensor:
    """Column index drawn from each row of unnormalized `weights` (H, K) at `uniforms` (H,)."""
    cdf = torch.cumsum(weights, dim=-1)
    picks = torch.searchsorted(cdf, (uniforms * cdf[:, -1]).unsqueeze(1), right=True)
    return picks.clamp_(max=cdf.shape[1] - 1).squeeze(1)


def _sample(scaled: torch.Tensor, top_p: torch.Tensor, uniforms: torch.Tensor) -> torch.Tensor:
    """Top-p samples from temperature-scaled logits (H, V), one uniform per row.

    A full sort of a 49k vocabulary costs more than a forward step of the 135M model on CPU,
    so the nucleus is looked for among the top `CANDIDATES[0]` tokens first, then more; only
    rows whose nucleus is wider still (flat distributions) sort the whole vocabulary. Rows
    with top_p >= 1 need no order at all.
    """
    vocab = scaled.shape[1]
    log_z = torch.logsumexp(scaled, dim=-1, keepdim=True)
    tokens = torch.empty(scaled.shape[0], dtype=torch.long, device=scaled.device)
    top_p = top_p.squeeze(1)
    whole = (top_p >= 1.0).nonzero().squeeze(1)
    if len(whole):
        probs = torch.exp(scaled[whole] - log_z[whole])
        tokens[whole] = _inverse_cdf(probs, uniforms[whole])
    pending = (top_p < 1.0).nonzero().squeeze(1)
    for k in (*CANDIDATES, vocab):
        if not len(pending):
            break
        k = min(k, vocab)
        top_logits, top_ids = scaled[pending].topk(k, dim=-1)  # descending
        top_probs = torch.exp(top_logits - log_z[pending])
        row_p = top_p[pending].unsqueeze(1)
        # keep the smallest prefix whose mass reaches top_p (the most likely token always)
        keep = (torch.cumsum(top_probs, dim=-1) - top_probs) < row_p
        keep[:, 0] = True
        picks = _inverse_cdf(top_probs * keep, uniforms[pending]).unsqueeze(1)
        chosen = top_ids.gather(1, picks).squeeze(1)
        done = (top_probs.sum(dim=-1) >= row_p.squeeze(1)) | (k == vocab)
        tokens[pending[done]] = chosen[done]
        pending = pending[~done]
    return tokens


def choose_tokens(
    logits: torch.Tensor, params: list[SamplingParams], generators: list[torch.Generator]
) -> list[int]:
    """Next token of each row of `logits` (B, V): argmax at temperature 0, else top-p sampling.

    Sampling is inverse-CDF with one uniform draw per row from that row's own generator, so a
    row's token depends only on its logits and its generator (not on the rest of the batch),
    and the whole batch is sampled with a few vectorized ops.
    """
    tokens = [0] * len(params)
    cold = [i for i, p in enumerate(params) if p.temperature <= 0]
    hot = [i for i, p in enumerate(params) if p.temperature > 0]
    device = logits.device
    if cold:
        rows = logits if len(cold) == len(params) else logits[torch.tensor(cold, device=device)]
        for i, token in zip(cold, rows.argmax(dim=-1).tolist(), strict=True):
            tokens[i] = token
    if hot:
        temps = torch.tensor([params[i].temperature for i in hot], device=device).unsqueeze(1)
        top_p = torch.tensor([params[i].top_p for i in hot], device=device).unsqueeze(1)
        uniforms = torch.cat([torch.rand(1, generator=generators[i]) for i in hot]).to(device)
        rows = logits if len(hot) == len(params) else logits[torch.tensor(hot, device=device)]
        for i, token in zip(
            hot, _sample(rows.float() / temps, top_p, uniforms).tolist(), strict=True
        ):
            tokens[i] = token
    return tokens


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
    """A transformers causal LM behind the async `LLM` interface (dynamic batching)."""

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        name: str,
        *,
        max_batch_size: int = 16,
        batch_wait_ms: float = 20.0,
        chat_template: bool = True,
        ignore_eos: bool = False,
        cache_identity: dict | None = None,
    ) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.name = name
        # what the response cache keys on (see models.model_identity); None: the name
        self.cache_identity = cache_identity
        self.max_batch_size = max(1, int(max_batch_size))
        self.batch_wait_s = max(0.0, float(batch_wait_ms)) / 1000
        self.chat_template = bool(chat_template) and tokenizer.chat_template is not None
        self.stop_ids = stop_token_ids(tokenizer, model)
        self.ignore_eos = ignore_eos  # benchmarks: always generate exactly max_new_tokens
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="wfopt-generate")
        self._lock = threading.Lock()  # one generation at a time, whichever thread asks
        self._queue: asyncio.Queue[_Request] | None = None
        self._worker: asyncio.Task | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.batches = 0  # batches decoded so far (tests and benchmarks read it)
        self.batch_sizes: list[int] = []  # size of each batch, in order

    @classmethod
    def from_config(cls, model_cfg: ModelConfig, hardware_cfg: HardwareConfig) -> LocalLLM:
        """Load the model and tokenizer named by `model_cfg` on `hardware_cfg`'s device."""
        from wfopt.models import load_causal_lm, load_tokenizer, model_identity

        model = load_causal_lm(model_cfg, dtype=hardware_cfg.dtype, device=hardware_cfg.device)
        llm = cls(
            model,
            load_tokenizer(model_cfg),
            model_cfg.name,
            max_batch_size=model_cfg.max_batch_size,
            batch_wait_ms=model_cfg.batch_wait_ms,
            chat_template=model_cfg.chat_template,
        )
        llm.cache_identity = model_identity(model_cfg, model, llm.chat_template)
        return llm

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
        """Generate from raw prompt text (for callers with their own prompt format)."""
        loop = asyncio.get_running_loop()
        if self._loop is not loop or self._worker is None or self._worker.done():
            # one queue and worker per event loop (each asyncio.run gets fresh ones)
            self._loop, self._queue = loop, asyncio.Queue()
            self._worker = loop.create_task(self._serve(self._queue))
        request = _Request(prompt, params, sample_index, loop.create_future(), time.perf_counter())
        self._queue.put_nowait(request)  # type: ignore[union-attr]
        return await request.future

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

    async def _serve(self, queue: asyncio.Queue[_Request]) -> None:
        loop = asyncio.get_running_loop()
        batch: list[_Request] = []
        try:
            while True:
                batch = []
                await self._collect(queue, batch)
                batch = [r for r in batch if not r.future.done()]  # drop callers that gave up
                if not batch:
                    continue
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
                now = time.perf_counter()
                for r, g in zip(batch, outputs, strict=True):
                    if not r.future.done():
                        r.future.set_result(
                            Completion(
                                text=g.text,
                                prompt_tokens=g.prompt_tokens,
                                completion_tokens=g.completion_tokens,
                                cost_usd=0.0,  # local compute: a known price of zero
                                latency_s=now - r.submitted,
                                prompt_ids=g.prompt_ids,
                                completion_ids=g.completion_ids,
                                stopped=g.stopped,
                            )
                        )
        finally:  # cancelled (aclose, loop shutdown): nobody must wait forever
            pending = batch + [queue.get_nowait() for _ in range(queue.qsize())]
            for r in pending:
                if not r.future.done():
                    r.future.set_exception(LLMError(f"{self.name}: backend closed"))

    async def aclose(self) -> None:
        """Stop the batching worker (queued requests fail); the model stays loaded."""
        worker, self._worker = self._worker, None
        if worker is not None and not worker.done():
            worker.cancel()
            try:
                await worker
            except (asyncio.CancelledError, RuntimeError):  # RuntimeError: other loop
                pass

    # -- batched decoding -----------------------------------------------------------------

    def generate_batch(
        self, prompts: list[str], params: list[SamplingParams], sample_indices: list[int]
    ) -> list[Generation]:
        """Decode prompts together (blocking; thread-safe): one `Generation` per prompt."""
        if not (len(prompts) == len(params) == len(sample_indices)):
            raise ValueError("prompts, params and sample_indices must have the same length")
        if not prompts:
            return []
        with self._lock, torch.inference_mode():
            self.batches += 1
            self.batch_sizes.append(len(prompts))
            return self._decode(prompts, params, sample_indices)

    def _left_padded(
        self, prompts: list[str], device: torch.device
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[list[int]]]:
        """(input_ids, attention_mask, position_ids, prompt ids) with left padding."""
        ids = [encode_prompt(p, self.tokenizer) for p in prompts]
        if any(not row for row in ids):
            raise ValueError("empty prompt: nothing to condition the generation on")
        width = max(len(row) for row in ids)
        pad = self.tokenizer.pad_token_id
        pad = self.tokenizer.eos_token_id if pad is None else pad
        input_ids = torch.tensor([[pad or 0] * (width - len(r)) + r for r in ids], device=device)
        attention = torch.tensor(
            [[0] * (width - len(r)) + [1] * len(r) for r in ids], device=device
        )
        positions = (attention.cumsum(-1) - 1).clamp(min=0)
        return input_ids, attention, positions, ids

    def _decode(
        self, prompts: list[str], params: list[SamplingParams], sample_indices: list[int]
    ) -> list[Generation]:
        from transformers import DynamicCache

        device = next(self.model.parameters()).device
        input_ids, attention, positions, prompt_ids = self._left_padded(prompts, device)
        generators = [
            torch.Generator().manual_seed(request_seed(p, i, prompt))
            for p, i, prompt in zip(params, sample_indices, prompts, strict=True)
        ]
        tokens: list[list[int]] = [[] for _ in prompts]
        stopped = [False] * len(prompts)
        active = [r for r, p in enumerate(params) if p.max_new_tokens > 0]  # batch row -> request
        if active:
            keep = torch.tensor(active, device=device)
            input_ids, attention, positions = input_ids[keep], attention[keep], positions[keep]
        cache = DynamicCache(config=self.model.config)
        step_ids = input_ids
        while active:
            out = self.model(
                input_ids=step_ids,
                attention_mask=attention,
                position_ids=positions,
                cache=cache,
                use_cache=True,
                logits_to_keep=1,  # the prefill needs only the last position's logits
            )
            chosen = choose_tokens(
                out.logits[:, -1, :],
                [params[r] for r in active],
                [generators[r] for r in active],
            )
            still = []
            for row, (r, token) in enumerate(zip(active, chosen, strict=True)):
                tokens[r].append(token)
                if token in self.stop_ids and not self.ignore_eos:
                    stopped[r] = True
                elif len(tokens[r]) < params[r].max_new_tokens:
                    still.append(row)
            if not still:
                break
            next_ids = torch.tensor(chosen, device=device).unsqueeze(1)
            if len(still) < len(active):  # finished rows leave the batch and the KV cache
                keep = torch.tensor(still, device=device)
                cache.batch_select_indices(keep)
                attention, positions, next_ids = attention[keep], positions[keep], next_ids[keep]
                active = [active[row] for row in still]
            step_ids = next_ids
            attention = torch.cat([attention, attention.new_ones(len(active), 1)], dim=1)
            positions = positions[:, -1:] + 1
        return [
            Generation(
                text=self.tokenizer.decode(
                    t[:-1] if stop else t, skip_special_tokens=True
                ),  # the stop token is not part of the answer
                prompt_tokens=len(ids),
                completion_tokens=len(t),
                stopped=stop,
                prompt_ids=list(ids),
                completion_ids=t,
            )
            for t, ids, stop in zip(tokens, prompt_ids, stopped, strict=True)
        ]
