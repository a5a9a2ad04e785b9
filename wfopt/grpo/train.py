"""`train_policy`: GRPO on a list of trajectories, callable in-process (`wfopt train`, `wfopt loop`).

    result = train_policy(cfg, trajectories, run_dir)                       # a fresh run
    result = train_policy(cfg, more, run_dir, init_checkpoint=result.checkpoint,
                          tracker=tracker)                                   # the next episode
    result = train_policy(cfg, trajectories, run_dir, resume_checkpoint=ckpt)  # after a crash

Builds the dataset (advantages per complete group), loads the policy (full fine-tuning, or LoRA
through PEFT), trains with `GRPOTrainer`, logs every optimizer step through a `Tracker`
(`metrics.jsonl` + W&B) and writes checkpoints under `<run_dir>/checkpoints/`.

Two ways to start from a checkpoint:

- `resume_checkpoint`: continue *the same run* exactly where it stopped: weights, optimizer,
  LR schedule, position in the data and RNG states. Pass the same trajectories.
- `init_checkpoint`: continue training *on new data* (the loop's next episode): weights and
  AdamW moments carry over, and so does the optimizer step counter, so checkpoint names and
  logged steps keep increasing across calls; the data position restarts at epoch 0. The LR
  schedule is built per call from the new dataset: `grpo.warmup_steps` counts global steps (it
  happens once, in the first call), and a linear/cosine decay runs over this call's planned
  steps (a warm restart each episode; the default constant schedule is simply `grpo.lr`).
  `grpo.max_steps` and `grpo.epochs` apply per call. The KL reference (`grpo.beta > 0`) stays
  the model of `cfg.model`, not the checkpoint.

Distributed (`hardware.distributed`, under `accelerate launch`): every process calls
`train_policy` with the same arguments; only the main process logs and writes checkpoints.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from wfopt.grpo.batching import planned_steps
from wfopt.grpo.checkpoint import (
    checkpoint_path,
    load_adapter,
    load_full_weights,
    load_trainer_state,
    read_summary,
    resolve_checkpoint,
    save_checkpoint,
)
from wfopt.grpo.data import Trajectory, TrajectoryDataset
from wfopt.grpo.model import base_model
from wfopt.grpo.trainer import GRPOTrainer
from wfopt.trajectory import SOURCE_KINDS, in_problem_order

if TYPE_CHECKING:
    from wfopt.tracking import Tracker

log = logging.getLogger(__name__)


class TrainingError(ValueError):
    """A config, checkpoint or data problem found before training starts (the message says
    which); `wfopt train` turns it into an exit with that message."""


class NothingToTrain(TrainingError):
    """The trajectories leave no sample to train on (e.g. every group's rewards are equal and
    `grpo.off_policy=positive` keeps no tree workflow): no signal, so no update. The loop
    keeps its policy for that episode; `wfopt train` exits with the message."""


@dataclass
class TrainResult:
    """What one `train_policy` call produced."""

    checkpoint: Path  # the checkpoint with the final weights and trainer state
    step: int  # optimizer steps of the trainer, counted across init_checkpoint calls
    metrics: dict[str, Any] = field(default_factory=dict)  # last step's scalar train/* metrics
    dataset_stats: dict[str, int] = field(default_factory=dict)  # TrajectoryDataset.stats


def with_norm_tokens(cfg: Any) -> Any:
    """`cfg.grpo` with Dr. GRPO's constant normalizer resolved: `grpo.norm_tokens`, else the
    policy's generation budget (`mcts.proposal_max_tokens`), so the constant matches the
    longest response the policy can write (not `max_response_length`, the training cap)."""
    g = cfg.grpo
    mcts = getattr(cfg, "mcts", None)
    if g.norm_tokens is not None or mcts is None:
        return g
    budget = int(mcts.proposal_max_tokens)
    if isinstance(g, DictConfig):
        return OmegaConf.merge(g, {"norm_tokens": budget})
    import dataclasses

    return dataclasses.replace(g, norm_tokens=budget)


def check_config(g: Any) -> None:
    """Reject values the schema's types cannot catch, before any model is loaded (its Enums
    already limit loss_agg, adv_estimator, schedule, truncation and off_policy to their
    choices)."""
    problems = []
    if g.off_policy_gamma <= 0:
        problems.append(f"grpo.off_policy_gamma={g.off_policy_gamma} (must be > 0)")
    for key in (
        "micro_batch_size",
        "grad_accum_steps",
        "num_iterations",
        "max_length",
        "max_response_length",
        "epochs",
    ):
        if getattr(g, key) < 1:
            problems.append(f"grpo.{key}={getattr(g, key)} (must be >= 1)")
    if g.norm_tokens is not None and g.norm_tokens < 1:
        problems.append(f"grpo.norm_tokens={g.norm_tokens} (must be >= 1, or null)")
    if g.beta < 0 or g.clip_eps_low < 0 or g.clip_eps_high < 0:
        problems.append("grpo.beta and grpo.clip_eps_* must be >= 0")
    if problems:
        raise TrainingError("invalid config: " + "; ".join(problems))


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise TrainingError(f"hardware.device={name} but no CUDA device is available")
    return torch.device(name)


def enable_activation_checkpointing(model: nn.Module) -> None:
    """Recompute each decoder layer in backward (non-reentrant: works with frozen inputs,
    i.e. LoRA, without marking embeddings as requiring grad)."""
    base = base_model(model)
    kwargs = {"use_reentrant": False}
    enable = getattr(base, "activation_checkpointing_enable", None)
    if enable is not None:  # transformers >= 5.2x; the old name warns there
        enable(activation_checkpointing_kwargs=kwargs)
    else:
        base.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


def build_policy(
    cfg: DictConfig, device: torch.device, checkpoint: Path | None
) -> tuple[nn.Module, nn.Module | None, torch.dtype | None]:
    """(policy, frozen reference or None, autocast dtype or None).

    Full fine-tuning keeps fp32 master weights and autocasts to bf16/fp16 on GPU; LoRA keeps
    the frozen base in the compute dtype (PEFT keeps the adapters in fp32). `checkpoint`: load
    its weights (the full weights, or the LoRA adapter) over the model of `cfg.model`.
    """
    from wfopt.models import load_causal_lm, resolve_dtype

    dtype_name = cfg.hardware.dtype if cfg.model.dtype == "auto" else cfg.model.dtype
    compute_dtype = resolve_dtype(dtype_name, str(device))
    autocast = compute_dtype if compute_dtype in (torch.bfloat16, torch.float16) else None
    lora = cfg.model.lora
    model = load_causal_lm(cfg.model, dtype=dtype_name, device=str(device))
    if not lora.enabled:
        model.float()  # fp32 master weights; the forward runs under autocast
    model.config.use_cache = False
    ref_model = None
    if lora.enabled:
        try:
            from peft import LoraConfig, get_peft_model
        except ImportError:
            raise TrainingError("model.lora.enabled=true needs `peft`") from None

        model.requires_grad_(False)
        if checkpoint is not None:
            model = load_adapter(model, checkpoint, is_trainable=True)
        else:
            peft_config = LoraConfig(
                r=lora.r,
                lora_alpha=lora.alpha,
                lora_dropout=lora.dropout,
                target_modules=list(lora.target_modules),
                task_type="CAUSAL_LM",
            )
            model = get_peft_model(model, peft_config)
    else:
        if cfg.grpo.beta > 0:  # the reference is the initial policy, also after a resume
            ref_model = copy.deepcopy(model).requires_grad_(False).eval()
            if autocast is not None:  # it only ever runs under autocast: store it that way
                ref_model.to(autocast)
        if checkpoint is not None:
            try:
                load_full_weights(model, checkpoint / "model")
            except ValueError as err:
                raise TrainingError(str(err)) from None
    if cfg.hardware.gradient_checkpointing:
        enable_activation_checkpointing(model)
    model.to(device)
    return model, ref_model, autocast


def _start_checkpoint(cfg: DictConfig, path: Path | str, what: str) -> Path:
    """The checkpoint directory of `path` (a checkpoint, or a run/checkpoints dir: its latest),
    checked to fit `model.lora.enabled`."""
    try:
        checkpoint = resolve_checkpoint(path)
    except FileNotFoundError as err:
        raise TrainingError(f"{what}={path}: {err}") from None
    lora_ckpt = read_summary(checkpoint).get("lora")
    if lora_ckpt is not None and bool(lora_ckpt) != bool(cfg.model.lora.enabled):
        raise TrainingError(
            f"checkpoint {checkpoint} was trained with model.lora.enabled={bool(lora_ckpt)}; "
            "pass the same setting to continue it"
        )
    return checkpoint


def train_policy(
    cfg: DictConfig,
    trajectories: Sequence[Trajectory],
    run_dir: str | Path,
    *,
    init_checkpoint: str | Path | None = None,
    resume_checkpoint: str | Path | None = None,
    tracker: Tracker | None = None,
    step_offset: int = 0,
    show_progress: bool = True,
    checkpoint_info: dict[str, Any] | None = None,
    first_step: int = 0,
) -> TrainResult:
    """GRPO on `trajectories` with the `model`, `grpo`, `hardware` and `tracking` parts of `cfg`.

    Checkpoints go to `<run_dir>/checkpoints/step-NNNNNN` (every `grpo.save_every` steps and at
    the end). `init_checkpoint` / `resume_checkpoint`: see the module docstring (at most one).
    `tracker`: where metrics go (the caller keeps it open); None: a new one on `run_dir`,
    finished on return. Every optimizer step is logged at `step_offset + trainer step`.
    `checkpoint_info`: extra fields for each checkpoint's `state.json` (e.g. the source file).
    `first_step`: count optimizer steps on from at least here (the loop, after going back to an
    earlier episode's weights: checkpoint names and logged steps keep increasing).
    Raises `TrainingError` for a bad config, checkpoint or dataset (nothing trainable).
    """
    from wfopt.grpo.distributed import make_accelerator
    from wfopt.models import load_tokenizer

    g = with_norm_tokens(cfg)
    check_config(g)
    if init_checkpoint is not None and resume_checkpoint is not None:
        raise TrainingError("pass init_checkpoint or resume_checkpoint, not both")
    checkpoint = None
    if resume_checkpoint is not None:
        checkpoint = _start_checkpoint(cfg, resume_checkpoint, "resume")
    elif init_checkpoint is not None:
        checkpoint = _start_checkpoint(cfg, init_checkpoint, "init_checkpoint")
    try:
        accelerator = make_accelerator(cfg.hardware)
    except ValueError as err:
        raise TrainingError(str(err)) from None
    main = accelerator is None or accelerator.is_main_process
    world_size = 1 if accelerator is None else accelerator.num_processes
    run_dir = Path(run_dir)

    torch.manual_seed(g.seed)
    device = resolve_device(cfg.hardware.device) if accelerator is None else accelerator.device
    tokenizer = load_tokenizer(cfg.model)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    dataset = TrajectoryDataset(
        in_problem_order(trajectories),
        tokenizer,
        g.max_length,
        max_response_length=g.max_response_length,
        truncation=g.truncation,
        norm_by_std=g.norm_by_std,
        eps=g.adv_eps,
        estimator=g.adv_estimator,
        chat_template=cfg.model.chat_template,
        off_policy=g.off_policy,
        drop_zero_std_groups=g.drop_zero_std_groups,
    )
    stats = dict(dataset.stats)
    if main:
        log.info(
            "%d groups -> %d samples (%d singleton groups skipped, %d all-equal groups "
            "(%d dropped), %d too long dropped, %d truncated, %d off-policy dropped); "
            "by source: %s; off-policy rule %s",
            stats["groups"],
            stats["samples"],
            stats["singleton_groups_skipped"],
            stats["zero_std_groups"],
            stats["zero_std_groups_dropped"],
            stats["dropped_too_long"],
            stats["truncated"],
            stats["dropped_off_policy"],
            ", ".join(f"{k}={stats[f'samples_{k}']}" for k in SOURCE_KINDS),
            g.off_policy,
        )
    if len(dataset) == 0:
        raise NothingToTrain(f"no trainable samples ({stats})")

    model, ref_model, autocast = build_policy(cfg, device, checkpoint)
    trainer = GRPOTrainer(
        model,
        g,
        ref_model=ref_model,
        device=device,
        autocast_dtype=autocast,
        total_steps=planned_steps(len(dataset), g, world_size),
        pad_token_id=int(tokenizer.pad_token_id),
        accelerator=accelerator,
    )
    if checkpoint is not None and resume_checkpoint is not None:
        trainer.load_state_dict(load_trainer_state(checkpoint))
        if main:
            log.info("resumed from %s at step %d", checkpoint, trainer.step)
    elif checkpoint is not None:
        trainer.continue_from(load_trainer_state(checkpoint))
        if main:
            log.info("continuing %s at step %d on new data", checkpoint, trainer.step)
    if resume_checkpoint is None and first_step > trainer.step:
        # only the numbering moves: no warmup is skipped, the schedule counts this call's steps
        trainer.step = trainer.start_step = first_step

    owns_tracker = tracker is None and main
    if owns_tracker:
        from wfopt.tracking import Tracker

        config = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else None
        tracker = Tracker(run_dir, cfg.tracking, config, job_type="train")
    if not main:
        tracker = None
    if tracker is not None:
        tracker.log({f"data/{k}": v for k, v in stats.items()}, step=step_offset + trainer.step)

    ckpt_root = run_dir / "checkpoints"
    # the starting checkpoint counts as saved: the next one is due save_every steps later
    saved: dict[str, Any] = {"step": trainer.step, "path": checkpoint}
    extra = {"samples": len(dataset), **(checkpoint_info or {})}

    def save(tr: GRPOTrainer) -> None:
        weights = tr.gather_policy_weights()  # sharded runs: collectives on every process
        state = tr.state_dict()
        if main:
            path = save_checkpoint(ckpt_root, tr.model, tokenizer, state, extra, weights)
            log.info("checkpoint %s", path)
        if accelerator is not None:
            accelerator.wait_for_everyone()
        saved.update(step=tr.step, path=checkpoint_path(ckpt_root, tr.step))

    def on_step(metrics: dict[str, Any]) -> None:
        if tracker is not None:
            tracker.log(metrics, step=step_offset + trainer.step)

    def on_batch_end(tr: GRPOTrainer) -> None:
        if g.save_every and tr.step - saved["step"] >= g.save_every:
            save(tr)

    try:
        last = trainer.fit(
            dataset, on_step=on_step, on_batch_end=on_batch_end, show_progress=show_progress
        )
        if saved["path"] is None or saved["step"] != trainer.step:
            save(trainer)
        metrics = {k: v for k, v in last.items() if not isinstance(v, list)}
        if owns_tracker and tracker is not None:
            tracker.summary(
                {**metrics, "train/steps": trainer.step, "checkpoint": str(saved["path"])}
            )
    finally:
        if owns_tracker and tracker is not None:
            tracker.finish()
        if accelerator is not None:
            accelerator.free_memory()  # drop its references to this call's model/optimizer
    if main:
        log.info(
            "trained to step %d; checkpoint %s; run dir %s", trainer.step, saved["path"], run_dir
        )
    return TrainResult(
        checkpoint=Path(saved["path"]),
        step=trainer.step,
        metrics=metrics,
        dataset_stats=stats,
    )
