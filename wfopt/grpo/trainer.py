"""`GRPOTrainer`: optimizer steps of the GRPO loss on batches of tokenized trajectories.

One optimizer step (`train_step`) takes a collated batch of `micro_batch_size *
grad_accum_steps` samples (advantages already computed over complete groups by
`TrajectoryDataset`), splits it into micro-batches (each trimmed to its own width), and
accumulates gradients with the *whole batch's* token and sequence counts as normalizers, so the
update equals one big-batch step for every `loss_agg`. `train_on_batch` first caches the old
log-probs (when `num_iterations > 1`) and the reference log-probs (when `beta > 0`) for the
batch, then runs `num_iterations` steps on it. `fit` loops over epochs in a seeded order that a
resumed run reproduces.

Distributed (an `accelerate.Accelerator` on N processes: DDP, FSDP or DeepSpeed): every rank
walks the same global batches (`micro_batch_size * grad_accum_steps * N` samples each) and
trains on a disjoint shard of each one (rows `rank, rank + N, ...`). The normalizers (response
tokens, sequences) are those of the whole global batch, which every rank knows, and each rank's
loss is multiplied by N to undo the gradient averaging of the all-reduce: the synchronized
gradient is the sum of every rank's additive share, i.e. exactly the single-process gradient of
the global batch. Every rank runs the same number of micro-batches (a rank whose shard runs out
runs zero-weight dummies), so the collectives of DDP/FSDP/DeepSpeed line up; only the last
micro-batch of a step synchronizes gradients.

Log-probs come from the backbone's last hidden states through the fused, chunked LM-head
projection of `wfopt.grpo.logprobs` (only response positions are projected; logits are never
stored). Models whose head is not a plain linear layer (logit soft-capping, scaling) fall back
to the logits path. Dropout is switched off: a GRPO ratio needs the same function for the old
and the new log-probs.

Around the update step: the policy's log-probs (`model.py`), AdamW and the LR schedule
(`optimizer.py`), batch sizes, epoch order and micro-batches (`batching.py`), the step's
metrics beyond the loss (`metrics.py`), sharded state for checkpoints (`distributed.py`).
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

from wfopt.console import progress_bar
from wfopt.grpo.batching import (
    epoch_order,
    global_batch_size,
    rank_micro_batches,
    select_rows,
    trim_padding,
)
from wfopt.grpo.data import TrajectoryDataset, collate_samples
from wfopt.grpo.distributed import (
    fill_deepspeed_config,
    full_optimizer_state,
    gather_state_dict,
    is_full_optimizer_state,
    is_sharded,
    load_full_optimizer_state,
)
from wfopt.grpo.losses import policy_loss
from wfopt.grpo.metrics import SourceSums, frac_zero_std_groups
from wfopt.grpo.model import (
    LogProbModel,
    base_model,
    disable_dropout,
    fused_head_supported,
    sequence_log_probs,
)
from wfopt.grpo.optimizer import lr_lambda, make_optimizer

log = logging.getLogger(__name__)


class GRPOTrainer:
    """GRPO updates of `model` (full fine-tuning, or LoRA through PEFT).

    `cfg` is a `GRPOConfig` (or its DictConfig). `ref_model`: a frozen reference for `beta > 0`
    under full fine-tuning; with LoRA leave it None, the reference is the same model with its
    adapters disabled. `autocast_dtype`: bf16/fp16 mixed precision on GPU (None = off).
    `total_steps`: the optimizer steps this run plans (the horizon of a linear/cosine decay).
    `accelerator`: an `accelerate.Accelerator` for multi-process training (DDP, FSDP,
    DeepSpeed); the trainer prepares its model and optimizer with it. None: this process alone.
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
        accelerator: Any | None = None,
    ) -> None:
        self.model = model  # the policy itself (saved, and where LoRA adapters are toggled)
        self.cfg = cfg
        self.ref_model = ref_model
        self.accelerator = accelerator
        self.device = torch.device(device) if accelerator is None else accelerator.device
        self.rank = 0 if accelerator is None else accelerator.process_index
        self.world_size = 1 if accelerator is None else accelerator.num_processes
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
        self.fused = fused_head_supported(model) and self._fused_matches_logits()
        if not self.fused:
            log.info("log-probs from full logits (this model's head is not a plain linear layer)")
        # every forward of the policy goes through this module (wrapped by DDP/FSDP/DeepSpeed)
        self.log_prob_model: nn.Module = LogProbModel(
            model, fused=self.fused, chunk_size=cfg.logprob_chunk_size
        )
        self.base_optimizer = make_optimizer(self.params, cfg.lr, cfg.weight_decay)
        self.optimizer: Any = self.base_optimizer
        # parameters and optimizer state split across processes (FSDP, DeepSpeed): saving
        # gathers them (see gather_policy_weights, _optimizer_state)
        self.sharded = False
        if accelerator is not None:
            fill_deepspeed_config(accelerator, cfg.micro_batch_size, cfg.max_grad_norm)
            self.log_prob_model, self.optimizer = accelerator.prepare(
                self.log_prob_model, self.base_optimizer
            )
            self.sharded = is_sharded(accelerator)
        self.total_steps = total_steps
        self.step = 0  # optimizer steps done, counted across runs that continue this optimizer
        self.start_step = 0  # the step this run (this dataset) started at
        self.epoch = 0  # position in the data, for resuming
        self.batch_in_epoch = 0
        self.scheduler = self._make_scheduler()

    def _make_scheduler(self) -> torch.optim.lr_scheduler.LambdaLR:
        """This run's LR schedule. The warmup counts global optimizer steps, so it happens once
        however many runs continue the optimizer; a linear/cosine decay spans this run's
        `total_steps` (a run continued on new data restarts it, like a warm restart)."""
        warmup = max(0, self.cfg.warmup_steps - self.start_step)
        return torch.optim.lr_scheduler.LambdaLR(
            self.base_optimizer, lr_lambda(warmup, self.total_steps, self.cfg.schedule)
        )

    # ------------------------------------------------------------ log-probs

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    def _log_probs(
        self, micro: dict[str, Tensor], *, entropy_grad: bool = False, reference: bool = False
    ) -> tuple[Tensor, Tensor]:
        """(log_probs, entropy) `(B, T)` of a micro-batch: the policy, or the reference."""
        inputs = {k: micro[k] for k in ("input_ids", "attention_mask", "response_mask")}
        with self._autocast():
            if not reference:
                return self.log_prob_model(**inputs, entropy_grad=entropy_grad)
            if self.ref_model is not None:
                return sequence_log_probs(
                    self.ref_model,
                    inputs,
                    fused=self.fused,
                    chunk_size=self.cfg.logprob_chunk_size,
                )
            if not self.is_peft:
                raise ValueError("beta > 0 with full fine-tuning needs a frozen ref_model")
            with self.model.disable_adapter():
                return self.log_prob_model(**inputs)

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
        the current policy, or the reference (`reference=True`). Distributed: only this
        process's rows are filled (the rows of other processes stay 0; it never reads them)."""
        out = torch.zeros(batch["input_ids"].shape, dtype=torch.float32, device=self.device)
        plan = rank_micro_batches(
            out.shape[0], self.cfg.micro_batch_size, self.rank, self.world_size
        )
        for rows in plan:
            if not rows and reference and self.ref_model is not None:
                continue  # a local model: no collective to keep in step
            micro, cols = trim_padding(select_rows(batch, rows))
            lp, _ = self._log_probs(micro, reference=reference)
            if rows:
                out[torch.tensor(rows, device=self.device), cols] = lp
        return out

    # ------------------------------------------------------------ updates

    def to_device(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        return {k: v.to(self.device) for k, v in batch.items()}

    @contextlib.contextmanager
    def _gradient_sync(self, sync: bool) -> Iterator[None]:
        """Around one micro-batch's forward and backward: gradients are synchronized across
        processes only when `sync` (a step's last micro-batch); before, they accumulate."""
        accelerator = self.accelerator
        if accelerator is None:
            yield
            return
        accelerator.sync_gradients = sync  # DeepSpeed: the gradient-accumulation boundary
        with contextlib.nullcontext() if sync else accelerator.no_sync(self.log_prob_model):
            yield

    def _backward(self, loss: Tensor) -> None:
        if self.accelerator is None:
            loss.backward()
        else:
            self.accelerator.backward(loss)

    def _clip_grad_norm(self, max_norm: float) -> float | None:
        """Clip the global gradient norm; returns it before clipping (None: DeepSpeed, which
        clips by its own config, did not report it)."""
        if self.accelerator is None:
            norm = torch.nn.utils.clip_grad_norm_(self.params, max_norm)
        else:  # FSDP needs all the prepared module's parameters to find it
            params = list(self.log_prob_model.parameters())
            norm = self.accelerator.clip_grad_norm_(params, max_norm)
        return None if norm is None else float(norm)

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
        current detached, i.e. rho = 1; ref computed here when beta > 0). Distributed, `batch`
        is the whole global batch on every process; each trains on its shard of the rows, and
        the metrics are those of the whole batch.
        """
        cfg = self.cfg
        start = time.perf_counter()
        batch = self.to_device(batch)
        if cfg.beta > 0 and "ref_log_probs" not in batch:
            batch["ref_log_probs"] = self.batch_log_probs(batch, reference=True)
        self.log_prob_model.train()
        # normalizers of the whole batch: each micro-batch loss is its additive share
        num_tokens = batch["response_mask"].sum()
        num_seqs = batch["input_ids"].shape[0]
        keys = ("loss", "pg_loss", "entropy", "kl", "clip_ratio")
        sums = dict.fromkeys(keys, 0.0)
        by_source = SourceSums(self.device)
        plan = rank_micro_batches(num_seqs, cfg.micro_batch_size, self.rank, self.world_size)
        for i, rows in enumerate(plan):
            micro, _ = trim_padding(select_rows(batch, rows))
            with self._gradient_sync(i == len(plan) - 1):
                lp, ent = self._log_probs(micro, entropy_grad=cfg.entropy_coef != 0)
                if not rows:
                    # no rows of this process left: a forward/backward through every
                    # parameter that keeps the collectives in step and adds exactly 0
                    self._backward(lp.sum() * 0.0)
                    continue
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
                    # Dr. GRPO's constant: the generation budget (train_policy fills it in)
                    max_response_length=getattr(cfg, "norm_tokens", None)
                    or cfg.max_response_length,
                    off_policy=micro.get("off_policy"),
                    off_policy_gamma=cfg.off_policy_gamma,
                    per_row="source_ids" in micro,
                )
                # x world_size undoes the all-reduce's average: the synchronized gradient is
                # the sum of every process's shares
                scale = self.world_size
                self._backward(out["loss"] if scale == 1 else out["loss"] * scale)
            for key in keys:
                sums[key] += float(out[key].detach())
            if "source_ids" in micro:
                by_source.add(micro, out["pg_seq_sum"], lp.detach())
        if self.world_size > 1:  # every process's shares add up to the batch's values
            local = torch.tensor([sums[k] for k in keys], dtype=torch.float64, device=self.device)
            sums = dict(zip(keys, self.accelerator.reduce(local, "sum").tolist(), strict=True))
            by_source.reduce(self.accelerator)

        max_norm = cfg.max_grad_norm if cfg.max_grad_norm and cfg.max_grad_norm > 0 else math.inf
        norm = self._clip_grad_norm(max_norm)
        grad_norm = math.nan if norm is None else norm
        lr = self.scheduler.get_last_lr()[0]
        skipped = norm is not None and not math.isfinite(norm)
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
            "train/frac_reward_zero_std": frac_zero_std_groups(
                batch["group_ids"], batch["group_reward_std"]
            ),
            "train/response_tokens": int(num_tokens),
            "train/tokens_per_s": float(batch["attention_mask"].sum()) / max(elapsed, 1e-9),
            "train/step_time_s": elapsed,
            "train/skipped": int(skipped),
            **by_source.metrics(batch, float(num_tokens)),
        }

    # ------------------------------------------------------------ epochs

    def epoch_order(self, num_samples: int, epoch: int) -> list[int]:
        """The sample order of an epoch: a permutation fixed by (seed, epoch)."""
        return epoch_order(num_samples, self.cfg.seed, epoch)

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
        Both run on every process. `cfg.max_steps` counts the steps of this run.
        """
        cfg = self.cfg
        batch_size = global_batch_size(cfg, self.world_size)
        last: dict[str, Any] = {}
        progress = progress_bar(
            "loss {task.fields[loss]:+.4f}  reward {task.fields[reward]:.3f}",
            show_progress and self.rank == 0,
            time_remaining=True,
        )
        with progress:
            task = progress.add_task(
                "grpo",
                total=self.total_steps,
                completed=self.step - self.start_step,
                loss=0.0,
                reward=0.0,
            )
            while self.epoch < cfg.epochs:
                order = self.epoch_order(len(dataset), self.epoch)
                batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
                while self.batch_in_epoch < len(batches):
                    if cfg.max_steps and self.step - self.start_step >= cfg.max_steps:
                        return last
                    indices = batches[self.batch_in_epoch]
                    batch = collate_samples([dataset[i] for i in indices], self.pad_token_id)
                    for metrics in self._steps_within_budget(self.iterate_batch(batch)):
                        metrics["train/epoch"] = self.epoch
                        last = metrics
                        if on_step is not None:
                            on_step(metrics)
                        progress.update(
                            task,
                            completed=self.step - self.start_step,
                            loss=metrics["train/loss"],
                            reward=metrics["train/reward_mean"],
                        )
                    self.batch_in_epoch += 1
                    if on_batch_end is not None:
                        on_batch_end(self)
                self.epoch += 1
                self.batch_in_epoch = 0
        return last

    def _steps_within_budget(self, steps: Iterator[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        """`steps`, cut at `max_steps` even inside a batch's `num_iterations` (the rest of
        that batch is skipped; its position counts as done, so a resume goes on after it)."""
        for metrics in steps:
            yield metrics
            if self.cfg.max_steps and self.step - self.start_step >= self.cfg.max_steps:
                return

    # ------------------------------------------------------------ state

    def gather_policy_weights(self) -> dict[str, Tensor] | None:
        """The policy's full state dict when its parameters are sharded (FSDP, DeepSpeed
        ZeRO-3), for saving: a collective, every process must call it (the tensors are
        complete on the main process). None when `self.model` can be saved as it is."""
        if not self.sharded:
            return None
        # the policy is `LogProbModel.policy` inside the prepared module
        return gather_state_dict(self.accelerator, self.log_prob_model, self.model, "policy.")

    def _optimizer_state(self) -> Any:
        """The optimizer state to save: `optimizer.state_dict()`; sharded, that of
        `full_optimizer_state` (FSDP: the full state gathered to the main process, keyed by
        parameter name, a collective; DeepSpeed: None, not saved)."""
        if not self.sharded:
            return self.optimizer.state_dict()
        return full_optimizer_state(self.accelerator, self.log_prob_model, self.base_optimizer)

    def state_dict(self) -> dict[str, Any]:
        """Optimizer, scheduler, position and RNG states (weights are saved separately).
        Under FSDP a collective (call it on every process); DeepSpeed runs save no optimizer
        state (`optimizer: None`)."""
        import numpy as np

        state = {
            "step": self.step,
            "start_step": self.start_step,
            "epoch": self.epoch,
            "batch_in_epoch": self.batch_in_epoch,
            "batch_size": global_batch_size(self.cfg, self.world_size),
            "total_steps": self.total_steps,
            "optimizer": self._optimizer_state(),
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

    def _load_optimizer_state(self, state: dict[str, Any]) -> None:
        saved = state.get("optimizer")
        if is_full_optimizer_state(saved):  # saved by an FSDP run
            load_full_optimizer_state(self.log_prob_model, self.base_optimizer, saved)
        elif saved is not None and self.sharded:
            log.warning(
                "an unsharded run's optimizer state cannot seed a sharded one: AdamW restarts"
            )
        elif saved is not None:
            self.optimizer.load_state_dict(saved)
        else:
            log.warning("the checkpoint has no optimizer state (DeepSpeed run): AdamW restarts")

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resume a run exactly where `state` left it (same data, same batch size)."""
        import numpy as np

        self.step = int(state["step"])
        self.start_step = int(state.get("start_step", 0))
        self.epoch = int(state["epoch"])
        self.batch_in_epoch = int(state["batch_in_epoch"])
        saved_batch = state.get("batch_size")
        batch = global_batch_size(self.cfg, self.world_size)
        if saved_batch is not None and int(saved_batch) != batch:
            log.warning(
                "resuming a run of %d-sample batches with %d-sample batches (processes x "
                "micro_batch_size x grad_accum_steps): the rest of the epoch is batched anew",
                saved_batch,
                batch,
            )
        self.scheduler = self._make_scheduler()  # its warmup depends on start_step
        self._load_optimizer_state(state)
        self.scheduler.load_state_dict(state["scheduler"])
        for group, lr in zip(
            self.base_optimizer.param_groups, self.scheduler.get_last_lr(), strict=True
        ):
            group["lr"] = lr
        rng = state.get("rng", {})
        if "torch" in rng:
            torch.set_rng_state(rng["torch"])
        if "python" in rng:
            random.setstate(rng["python"])
        if "numpy" in rng:
            np.random.set_state(rng["numpy"])
        if "cuda" in rng and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(rng["cuda"])

    def continue_from(self, state: dict[str, Any]) -> None:
        """Continue a previous run's optimizer on a new dataset (e.g. the next loop episode).

        The AdamW moments and the step counter carry over; the position in the data restarts
        at epoch 0; lr and weight decay are this config's, and the LR schedule restarts for
        this run (see `_make_scheduler`: no second warmup, a decay over this run's steps).
        """
        self.step = self.start_step = int(state["step"])
        self.epoch = self.batch_in_epoch = 0
        self._load_optimizer_state(state)
        for group in self.base_optimizer.param_groups:
            group.pop("initial_lr", None)  # the new scheduler starts from cfg.lr
            group["lr"] = self.cfg.lr
            group["weight_decay"] = self.cfg.weight_decay
        self.scheduler = self._make_scheduler()
