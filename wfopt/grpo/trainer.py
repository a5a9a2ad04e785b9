"""`GRPOTrainer`: optimizer steps of the GRPO loss on batches of tokenized trajectories.

One optimizer step (`train_step`) takes a collated batch of `micro_batch_size *
grad_accum_steps` samples (advantages already computed over complete groups by
`TrajectoryDataset`), splits it into micro-batches (each trimmed to its own width), and
accumulates gradients with the *whole batch's* token and sequence counts as normalizers, so the
update equals one big-batch step for every `loss_agg`. `train_on_batch` first caches the old
log-probs (when `num_iterations > 1`) and the reference log-probs (when `beta > 0`) for the
batch, then runs `num_iterations` steps on it. `fit` loops over epochs in a seeded order that a
resumed run reproduces.

Log-probs come from the backbone's last hidden states through the fused, chunked LM-head
projection of `wfopt.grpo.logprobs` (only response positions are projected; logits are never
stored). Models whose head is not a plain linear layer (logit soft-capping, scaling) fall back
to the logits path. Dropout is switched off: a GRPO ratio needs the same function for the old
and the new log-probs.
"""

from __future__ import annotations

import contextlib
import logging
import math
import random
import time
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import Tensor, nn

from wfopt.grpo.data import TrajectoryDataset, collate_samples
from wfopt.grpo.logprobs import token_log_probs, token_log_probs_from_hidden
from wfopt.grpo.losses import policy_loss

log = logging.getLogger(__name__)

SEQ_KEYS = ("input_ids", "attention_mask", "response_mask", "old_log_probs", "ref_log_probs")
# config attributes that transform logits after the LM head (the fused path would skip them)
_LOGIT_TRANSFORMS = (
    "final_logit_softcapping",
    "logit_scale",
    "logits_scaling",
    "output_multiplier",
    "lm_head_multiplier",
)


# ---------------------------------------------------------------- model plumbing


def base_model(model: nn.Module) -> nn.Module:
    """The transformers model under a PEFT wrapper (LoRA layers included), else `model`."""
    get_base = getattr(model, "get_base_model", None)
    return get_base() if callable(get_base) else model


def fused_head_supported(model: nn.Module) -> bool:
    """Whether log-probs may be computed as `log_softmax(hidden @ W.T + b)` of the backbone."""
    base = base_model(model)
    head = base.get_output_embeddings() if hasattr(base, "get_output_embeddings") else None
    if not isinstance(head, nn.Linear):
        return False
    if not hasattr(base, getattr(base, "base_model_prefix", "") or "\0"):
        return False
    config = base.config
    config = config.get_text_config() if hasattr(config, "get_text_config") else config
    return all(getattr(config, key, None) in (None, 1, 1.0) for key in _LOGIT_TRANSFORMS)


def position_ids(attention_mask: Tensor) -> Tensor:
    """Positions counted over real tokens, so left and right padding give the same numbers."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def sequence_log_probs(
    model: nn.Module,
    batch: dict[str, Tensor],
    *,
    fused: bool = True,
    entropy_grad: bool = False,
    chunk_size: int = 512,
) -> tuple[Tensor, Tensor]:
    """(log_probs, entropy) `(B, T)` of the response tokens of `batch` under `model`."""
    ids, attn, mask = batch["input_ids"], batch["attention_mask"], batch["response_mask"]
    inputs = {
        "input_ids": ids,
        "attention_mask": attn,
        "position_ids": position_ids(attn),
        "use_cache": False,
    }
    if fused:
        base = base_model(model)
        hidden = getattr(base, base.base_model_prefix)(**inputs).last_hidden_state
        head = base.get_output_embeddings()
        lp, ent = token_log_probs_from_hidden(
            hidden, head.weight, ids, mask, head.bias, chunk_size=chunk_size
        )
        return lp, ent if entropy_grad else ent.detach()
    logits = model(**inputs).logits
    lp, ent = token_log_probs(logits, ids, mask, entropy_grad=entropy_grad, chunk_size=chunk_size)
    assert ent is not None
    return lp, ent


def disable_dropout(model: nn.Module) -> None:
    """Dropout off everywhere (modules and attention), whatever train()/eval() says."""
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = 0.0
        if isinstance(getattr(module, "attention_dropout", None), float):
            module.attention_dropout = 0.0


def lr_lambda(warmup_steps: int, total_steps: int, schedule: str) -> Callable[[int], float]:
    """LR multiplier per step: linear warmup to 1, then constant, linear or cosine to 0."""
    if schedule not in ("constant", "linear", "cosine"):
        raise ValueError(f"unknown schedule {schedule!r}; use constant, linear or cosine")

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        if schedule == "constant":
            return 1.0
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        if schedule == "linear":
            return 1.0 - progress
        return 0.5 * (1.0 + math.cos(math.pi * progress))

    return factor


def make_optimizer(params: list[nn.Parameter], lr: float, weight_decay: float = 0.0):
    """AdamW, fused (one kernel over all parameters, no per-step temporaries; ~5x faster on
    CPU than the foreach default here) where this torch supports it for these parameters."""
    try:
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, fused=True)
    except (RuntimeError, TypeError, ValueError):
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)


def planned_steps(num_samples: int, cfg: Any) -> int:
    """Optimizer steps of a full run: epochs x batches x num_iterations, capped by max_steps."""
    batch_size = cfg.micro_batch_size * cfg.grad_accum_steps
    steps = cfg.epochs * math.ceil(num_samples / batch_size) * cfg.num_iterations
    return min(steps, cfg.max_steps) if cfg.max_steps else steps


def _trim(batch: dict[str, Tensor]) -> tuple[dict[str, Tensor], slice]:
    """Drop columns that are padding in every row (either side); returns the kept slice."""
    used = batch["attention_mask"].bool().any(0).nonzero()
    cols = slice(int(used.min()), int(used.max()) + 1) if used.numel() else slice(0, 0)
    return {k: (v[:, cols] if k in SEQ_KEYS else v) for k, v in batch.items()}, cols


def _micro_batches(batch: dict[str, Tensor], size: int) -> Iterator[tuple[slice, dict]]:
    n = batch["input_ids"].shape[0]
    for start in range(0, n, size):
        rows = slice(start, min(start + size, n))
        yield rows, {k: v[rows] for k, v in batch.items()}


# ---------------------------------------------------------------- trainer


class GRPOTrainer:
    """GRPO updates of `model` (full fine-tuning, or LoRA through PEFT).

    `cfg` is a `GRPOConfig` (or its DictConfig). `ref_model`: a frozen reference for `beta > 0`
    under full fine-tuning; with LoRA leave it None, the reference is the same model with its
    adapters disabled. `autocast_dtype`: bf16/fp16 mixed precision on GPU (None = off).
    """

    def __init__(
        self,
        model: nn.Module,
        cfg: Any,
        *,
        ref_model: nn.Module | None = None,
        device: str | torch.device = "cpu",
        autocast_dtype: torch.dtype | None = None,
        total_steps: int = 1,
        pad_token_id: int = 0,
    ) -> None:
        self.model = model
        self.cfg = cfg
        self.ref_model = ref_model
        self.device = torch.device(device)
        self.autocast_dtype = autocast_dtype
        self.pad_token_id = pad_token_id
        self.is_peft = callable(getattr(model, "disable_adapter", None))
        disable_dropout(model)
        if ref_model is not None:
            disable_dropout(ref_model)
            ref_model.eval().requires_grad_(False)
        self.params = [p for p in model.parameters() if p.requires_grad]
        if not self.params:
            raise ValueError("the model has no trainable parameters")
        self.optimizer = make_optimizer(self.params, cfg.lr, cfg.weight_decay)
        self.total_steps = total_steps
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lr_lambda(cfg.warmup_steps, total_steps, cfg.schedule)
        )
        self.step = 0  # optimizer steps done
        self.epoch = 0  # position in the data, for resuming
        self.batch_in_epoch = 0
        self.fused = fused_head_supported(model) and self._fused_matches_logits()
        if not self.fused:
            log.info("log-probs from full logits (this model's head is not a plain linear layer)")

    # ------------------------------------------------------------ log-probs

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    def _log_probs(
        self, model: nn.Module, batch: dict[str, Tensor], entropy_grad: bool = False
    ) -> tuple[Tensor, Tensor]:
        with self._autocast():
            return sequence_log_probs(
                model,
                batch,
                fused=self.fused,
                entropy_grad=entropy_grad,
                chunk_size=self.cfg.logprob_chunk_size,
            )

    def _fused_matches_logits(self) -> bool:
        """Guard for exotic heads: fused and logits paths must agree on a tiny input."""
        vocab = base_model(self.model).get_output_embeddings().weight.shape[0]
        ids = torch.arange(12, device=self.device).unsqueeze(0) * 7919 % vocab
        batch = {
            "input_ids": ids,
            "attention_mask": torch.ones_like(ids),
            "response_mask": (torch.arange(12, device=self.device) >= 4).long().unsqueeze(0),
        }
        with torch.no_grad(), self._autocast():
            fused, _ = sequence_log_probs(self.model, batch, fused=True)
            full, _ = sequence_log_probs(self.model, batch, fused=False)
        tol = 1e-3 if self.autocast_dtype is None else 5e-2
        ok = bool(torch.allclose(fused, full, atol=tol, rtol=tol))
        if not ok:
            log.warning("fused LM-head log-probs disagree with the model's logits; not using them")
        return ok

    @torch.no_grad()
    def batch_log_probs(self, batch: dict[str, Tensor], reference: bool = False) -> Tensor:
        """Log-probs `(B, T)` of a whole batch without gradient, micro-batch by micro-batch:
        the current policy, or the reference (`reference=True`)."""
        out = torch.zeros(batch["input_ids"].shape, dtype=torch.float32, device=self.device)
        for rows, micro in _micro_batches(batch, self.cfg.micro_batch_size):
            micro, cols = _trim(micro)
            if not reference:
                lp, _ = self._log_probs(self.model, micro)
            elif self.ref_model is not None:
                lp, _ = self._log_probs(self.ref_model, micro)
            elif not self.is_peft:
                raise ValueError("beta > 0 with full fine-tuning needs a frozen ref_model")
            else:
                with self.model.disable_adapter():
                    lp, _ = self._log_probs(self.model, micro)
            out[rows, cols] = lp
        return out

    # ------------------------------------------------------------ updates

    def to_device(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        return {k: v.to(self.device) for k, v in batch.items()}

    def train_on_batch(self, batch: dict[str, Tensor]) -> list[dict[str, Any]]:
        """`num_iterations` optimizer steps on one batch, old/ref log-probs cached once."""
        return list(self.iterate_batch(batch))

    def iterate_batch(self, batch: dict[str, Tensor]) -> Iterator[dict[str, Any]]:
        """`train_on_batch`, yielding each step's metrics as soon as the step is done."""
        batch = self.to_device(batch)
        if self.cfg.num_iterations > 1 and "old_log_probs" not in batch:
            batch["old_log_probs"] = self.batch_log_probs(batch)
        if self.cfg.beta > 0 and "ref_log_probs" not in batch:
            batch["ref_log_probs"] = self.batch_log_probs(batch, reference=True)
        for _ in range(self.cfg.num_iterations):
            yield self.train_step(batch)

    def train_step(self, batch: dict[str, Tensor]) -> dict[str, Any]:
        """One optimizer step on `batch` (collated, any size); returns `train/*` metrics.

        Uses `batch["old_log_probs"]` / `batch["ref_log_probs"]` when present (else old =
        current detached, i.e. rho = 1; ref computed here when beta > 0).
        """
        cfg = self.cfg
        start = time.perf_counter()
        batch = self.to_device(batch)
        if cfg.beta > 0 and "ref_log_probs" not in batch:
            batch["ref_log_probs"] = self.batch_log_probs(batch, reference=True)
        self.model.train()
        num_tokens = batch["response_mask"].sum()
        num_seqs = batch["input_ids"].shape[0]
        sums = {"loss": 0.0, "pg_loss": 0.0, "entropy": 0.0, "kl": 0.0, "clip_ratio": 0.0}
        for _, micro in _micro_batches(batch, cfg.micro_batch_size):
            micro, _ = _trim(micro)
            lp, ent = self._log_probs(self.model, micro, entropy_grad=cfg.entropy_coef != 0)
            out = policy_loss(
                lp,
                micro["response_mask"],
                micro["advantages"],
                micro.get("old_log_probs"),
                micro.get("ref_log_probs"),
                ent,
                clip_eps_low=cfg.clip_eps_low,
                clip_eps_high=cfg.clip_eps_high,
                beta=cfg.beta,
                entropy_coef=cfg.entropy_coef,
                loss_agg=cfg.loss_agg,
                num_tokens=num_tokens,
                num_seqs=num_seqs,
                max_response_length=cfg.max_response_length,
            )
            out["loss"].backward()
            for key in sums:
                sums[key] += float(out[key].detach())

        max_norm = cfg.max_grad_norm if cfg.max_grad_norm and cfg.max_grad_norm > 0 else math.inf
        grad_norm = float(torch.nn.utils.clip_grad_norm_(self.params, max_norm))
        lr = self.scheduler.get_last_lr()[0]
        skipped = not math.isfinite(grad_norm)
        if skipped:
            log.warning("step %d: non-finite gradient norm, update skipped", self.step + 1)
        else:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        self.step += 1

        rewards = batch["rewards"].float()
        elapsed = time.perf_counter() - start
        return {
            "train/loss": sums["loss"],
            "train/pg_loss": sums["pg_loss"],
            "train/entropy": sums["entropy"],
            "train/kl": sums["kl"],
            "train/clip_ratio": sums["clip_ratio"],
            "train/grad_norm": grad_norm,
            "train/lr": lr,
            "train/advantages": batch["advantages"].tolist(),
            "train/reward_mean": float(rewards.mean()),
            "train/reward_std": float(rewards.std(unbiased=False)),
            "train/frac_reward_zero_std": float((batch["group_reward_std"] == 0).float().mean()),
            "train/response_tokens": int(num_tokens),
            "train/tokens_per_s": float(batch["attention_mask"].sum()) / max(elapsed, 1e-9),
            "train/step_time_s": elapsed,
            "train/skipped": int(skipped),
        }

    # ------------------------------------------------------------ epochs

    def epoch_order(self, num_samples: int, epoch: int) -> list[int]:
        """The sample order of an epoch: a permutation fixed by (seed, epoch)."""
        generator = torch.Generator().manual_seed(self.cfg.seed * 100_003 + epoch)
        return torch.randperm(num_samples, generator=generator).tolist()

    def fit(
        self,
        dataset: TrajectoryDataset,
        *,
        on_step: Callable[[dict[str, Any]], None] | None = None,
        on_batch_end: Callable[[GRPOTrainer], None] | None = None,
        show_progress: bool = True,
    ) -> dict[str, Any]:
        """Train over `cfg.epochs` from the current position; returns the last metrics.

        `on_step(metrics)` after every optimizer step (logging); `on_batch_end(trainer)` after
        every batch (checkpointing happens between batches, where no old log-probs are cached).
        """
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        cfg = self.cfg
        batch_size = cfg.micro_batch_size * cfg.grad_accum_steps
        last: dict[str, Any] = {}
        progress = Progress(
            "[progress.description]{task.description}",
            BarColumn(),
            MofNCompleteColumn(),
            "loss {task.fields[loss]:+.4f}  reward {task.fields[reward]:.3f}",
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            disable=not show_progress,
        )
        with progress:
            task = progress.add_task(
                "grpo", total=self.total_steps, completed=self.step, loss=0.0, reward=0.0
            )
            while self.epoch < cfg.epochs:
                order = self.epoch_order(len(dataset), self.epoch)
                batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
                while self.batch_in_epoch < len(batches):
                    if cfg.max_steps and self.step >= cfg.max_steps:
                        return last
                    indices = batches[self.batch_in_epoch]
                    batch = collate_samples([dataset[i] for i in indices], self.pad_token_id)
                    for metrics in self.iterate_batch(batch):
                        metrics["train/epoch"] = self.epoch
                        last = metrics
                        if on_step is not None:
                            on_step(metrics)
                        progress.update(
                            task,
                            completed=self.step,
                            loss=metrics["train/loss"],
                            reward=metrics["train/reward_mean"],
                        )
                    self.batch_in_epoch += 1
                    if on_batch_end is not None:
                        on_batch_end(self)
                self.epoch += 1
                self.batch_in_epoch = 0
        return last

    # ------------------------------------------------------------ state

    def state_dict(self) -> dict[str, Any]:
        """Optimizer, scheduler, position and RNG states (weights are saved separately)."""
        import numpy as np

        state = {
            "step": self.step,
            "epoch": self.epoch,
            "batch_in_epoch": self.batch_in_epoch,
            "total_steps": self.total_steps,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "rng": {
                "torch": torch.get_rng_state(),
                "python": random.getstate(),
                "numpy": np.random.get_state(),
            },
        }
        if torch.cuda.is_available():
            state["rng"]["cuda"] = torch.cuda.get_rng_state_all()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        import numpy as np

        self.step = int(state["step"])
        self.epoch = int(state["epoch"])
        self.batch_in_epoch = int(state["batch_in_epoch"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        rng = state.get("rng", {})
        if "torch" in rng:
            torch.set_rng_state(rng["torch"])
        if "python" in rng:
            random.setstate(rng["python"])
        if "numpy" in rng:
            np.random.set_state(rng["numpy"])
        if "cuda" in rng and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(rng["cuda"])
