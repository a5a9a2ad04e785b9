"""Rows of KV-cached generation that join and leave one running batch (the local backend's math).

A `DecodeBatch` holds the rows decoded together: one transformers `DynamicCache`
(per layer keys/values of shape (rows, kv_heads, width, head_dim)), the attention mask
(rows, width) over the cached positions, and per row its next position and the token it
feeds next. Rows are right-aligned: a row whose history is shorter than `width` has masked
zeros in front, and each row carries its own position ids, so padding never shifts a row.

- `admit(rows)`: prefill new prompts together (left-padded), choose their first tokens, and
  merge their cache into the running one: whichever of the two is narrower is padded on the
  left with masked zeros, then the rows are stacked.
- `step()`: one decode step of every row: feed its next token, choose the one after.
- `evict()`: finished rows (stop token, their own `max_new_tokens`, or abandoned by their
  caller) leave the cache and the mask; columns no remaining row attends to are cut off.

Tokens: argmax at temperature 0, else top-p sampling by inverse CDF with one uniform draw per
row from that row's own generator, seeded from (seed, sample_index, prompt). A row's tokens
therefore depend on its own logits and generator only, never on which rows shared its batch
or when they joined. The logits themselves can differ in the last float bits with the batch's
width and composition (attention over a padded width reduces in another order); the tests
hold batched texts, greedy and sampled, equal to the same requests run alone.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

import torch

from wfopt.llm.base import SamplingParams

CANDIDATES = (64, 1024)  # top-p sampling looks for the nucleus among this many tokens first


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


def plan_admission(lengths: list[int], room: int, budget: int) -> int:
    """How many of the waiting prompts (token `lengths`, in arrival order) to prefill now.

    First come, first served, at most `room` (the free rows), and no more than `budget`
    padded tokens (count x longest): the prefill stalls every running row, so it is bounded.
    A lone prompt longer than the budget still goes (alone), or it would never run.
    """
    count, longest = 0, 0
    for length in lengths[: max(0, room)]:
        longest = max(longest, length)
        if count and (count + 1) * longest > budget:
            break
        count += 1
    return count


def left_pad(x: torch.Tensor, width: int, dim: int) -> torch.Tensor:
    """`x` with zeros prepended along `dim` up to `width` (itself if already that wide)."""
    missing = width - x.shape[dim]
    if missing <= 0:
        return x
    shape = list(x.shape)
    shape[dim] = missing
    return torch.cat([x.new_zeros(shape), x], dim=dim)


@dataclass(eq=False)
class Row:
    """One request being generated: its prompt, sampling, generator and tokens so far."""

    prompt_ids: list[int]
    params: SamplingParams
    generator: torch.Generator
    owner: Any = None  # whatever the caller tracks the row by (the backend's request)
    tokens: list[int] = field(default_factory=list)  # generated, the stop token included
    stopped: bool = False  # ended on a stop token
    done: bool = False  # leaves at the next eviction (finished, or its caller gave up)


class DecodeBatch:
    """The rows decoded together and their KV cache (see the module docstring)."""

    def __init__(self, model: Any, stop_ids: set[int], pad_id: int, ignore_eos: bool = False):
        from transformers import DynamicCache
        from transformers.cache_utils import DynamicLayer

        self.model = model
        self.stop_ids = stop_ids
        self.pad_id = pad_id
        self.ignore_eos = ignore_eos
        self.device = next(model.parameters()).device
        # merging and trimming edit each layer's keys/values along the sequence: only plain
        # full-attention layers keep all positions (a sliding window drops the oldest)
        layers = DynamicCache(config=model.config).layers
        self.mergeable = all(type(layer) is DynamicLayer for layer in layers)
        self.rows: list[Row] = []
        self.cache: Any = None
        self.attention = torch.zeros(0, 0, dtype=torch.long, device=self.device)  # (R, W)
        self.positions = torch.zeros(0, 1, dtype=torch.long, device=self.device)  # (R, 1)
        self.next_ids = torch.zeros(0, 1, dtype=torch.long, device=self.device)  # (R, 1)
        self._finished: list[Row] = []  # done before they ever entered the cache

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def width(self) -> int:
        """Cached positions per row (the longest history; shorter ones are left-padded)."""
        return self.attention.shape[1]

    def _choose(self, rows: list[Row], logits: torch.Tensor) -> torch.Tensor:
        """Append each row's next token (logits (R, V)); mark finished rows; (R, 1) ids."""
        chosen = choose_tokens(logits, [r.params for r in rows], [r.generator for r in rows])
        for row, token in zip(rows, chosen, strict=True):
            row.tokens.append(token)
            if token in self.stop_ids and not self.ignore_eos:
                row.stopped = row.done = True
            elif len(row.tokens) >= row.params.max_new_tokens:
                row.done = True
        return torch.tensor(chosen, device=self.device).unsqueeze(1)

    def admit(self, rows: list[Row]) -> None:
        """Prefill `rows` together and add them to the batch (their first token chosen)."""
        if any(not r.prompt_ids for r in rows):
            raise ValueError("empty prompt: nothing to condition the generation on")
        for row in rows:
            if row.params.max_new_tokens <= 0:
                row.done = True
                self._finished.append(row)
        rows = [r for r in rows if not r.done]
        if not rows:
            return
        if self.rows and not self.mergeable:
            raise ValueError(
                "continuous batching needs full-attention KV caches (this model has sliding-"
                "window layers): set model.batching=static"
            )
        from transformers import DynamicCache

        width = max(len(r.prompt_ids) for r in rows)
        ids = torch.tensor(
            [[self.pad_id] * (width - len(r.prompt_ids)) + r.prompt_ids for r in rows],
            device=self.device,
        )
        attention = torch.tensor(
            [[0] * (width - len(r.prompt_ids)) + [1] * len(r.prompt_ids) for r in rows],
            device=self.device,
        )
        positions = (attention.cumsum(-1) - 1).clamp(min=0)
        cache = DynamicCache(config=self.model.config)
        out = self.model(
            input_ids=ids,
            attention_mask=attention,
            position_ids=positions,
            cache=cache,
            use_cache=True,
            logits_to_keep=1,  # the prefill needs only the last position's logits
        )
        next_ids = self._choose(rows, out.logits[:, -1, :])
        if not self.rows:
            self.cache, self.attention = cache, attention
            self.positions, self.next_ids = positions[:, -1:] + 1, next_ids
        else:  # stack the newcomers under the running rows, both padded to a common width
            merged = max(self.width, width)
            for old, new in zip(self.cache.layers, cache.layers, strict=True):
                old.keys = torch.cat([left_pad(old.keys, merged, 2), left_pad(new.keys, merged, 2)])
                old.values = torch.cat(
                    [left_pad(old.values, merged, 2), left_pad(new.values, merged, 2)]
                )
            self.attention = torch.cat(
                [left_pad(self.attention, merged, 1), left_pad(attention, merged, 1)]
            )
            self.positions = torch.cat([self.positions, positions[:, -1:] + 1])
            self.next_ids = torch.cat([self.next_ids, next_ids])
        self.rows.extend(rows)

    def step(self) -> None:
        """One decode step of every row (none may be done: `evict` first)."""
        assert self.rows and not any(r.done for r in self.rows), "evict finished rows first"
        attention = torch.cat([self.attention, self.attention.new_ones(len(self.rows), 1)], 1)
        out = self.model(
            input_ids=self.next_ids,
            attention_mask=attention,
            position_ids=self.positions,
            cache=self.cache,
            use_cache=True,
        )
        self.attention, self.positions = attention, self.positions + 1
        self.next_ids = self._choose(self.rows, out.logits[:, -1, :])

    def evict(self) -> list[Row]:
        """Remove the rows marked done (from the cache too); return them, oldest first."""
        gone, self._finished = self._finished, []
        keep = [i for i, r in enumerate(self.rows) if not r.done]
        if len(keep) == len(self.rows):
            return gone
        gone += [r for r in self.rows if r.done]
        self.rows = [self.rows[i] for i in keep]
        if not keep:  # nothing left: drop the cache
            self.cache = None
            self.attention = self.attention[:0, :0]
            self.positions, self.next_ids = self.positions[:0], self.next_ids[:0]
            return gone
        index = torch.tensor(keep, device=self.device)
        self.cache.batch_select_indices(index)
        self.attention = self.attention[index]
        self.positions, self.next_ids = self.positions[index], self.next_ids[index]
        # columns that only the departed rows attended to: cut them off the left
        lead = int(self.attention.any(dim=0).int().argmax())
        if lead and self.mergeable:
            for layer in self.cache.layers:
                layer.keys, layer.values = layer.keys[:, :, lead:], layer.values[:, :, lead:]
            self.attention = self.attention[:, lead:]
        return gone
