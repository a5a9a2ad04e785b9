"""`wfopt train`: GRPO on a trajectories file (the Hydra entry point `run`).

    wfopt train trajectories=outputs/.../trajectories.jsonl grpo=dr_grpo model.lora.enabled=true
    wfopt train trajectories=... resume=outputs/<run>/checkpoints/step-000040

Reads and validates the trajectories (a bad file exits with `<file>:<line>: <reason>`),
builds the dataset (advantages per complete group), loads the policy (full fine-tuning, or
LoRA through PEFT), trains with `GRPOTrainer`, logs every step through `Tracker`
(`metrics.jsonl` + W&B) and writes checkpoints under `<run_dir>/checkpoints/`.
"""

from __future__ import annotations

import copy
import logging
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from wfopt.grpo.advantages import ADVANTAGE_ESTIMATORS
from wfopt.grpo.checkpoint import (
    load_full_weights,
    load_trainer_state,
    read_summary,
    resolve_checkpoint,
    save_checkpoint,
)
from wfopt.grpo.data import TrajectoryDataset, TrajectoryError, read_trajectories
from wfopt.grpo.losses import LOSS_AGGREGATIONS
from wfopt.grpo.trainer import GRPOTrainer, base_model, planned_steps

log = logging.getLogger(__name__)


def check_config(g: Any) -> None:
    """Reject values the schema's types cannot catch, before any model is loaded."""
    problems = []
    if g.loss_agg not in LOSS_AGGREGATIONS:
        problems.append(f"grpo.loss_agg={g.loss_agg!r} (known: {', '.join(LOSS_AGGREGATIONS)})")
    if g.adv_estimator not in ADVANTAGE_ESTIMATORS:
        known = ", ".join(ADVANTAGE_ESTIMATORS)
        problems.append(f"grpo.adv_estimator={g.adv_estimator!r} (known: {known})")
    if g.schedule not in ("constant", "linear", "cosine"):
        problems.append(f"grpo.schedule={g.schedule!r} (constant, linear or cosine)")
    if g.truncation not in ("drop", "truncate"):
        problems.append(f"grpo.truncation={g.truncation!r} (drop or truncate)")
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
    if g.beta < 0 or g.clip_eps_low < 0 or g.clip_eps_high < 0:
        problems.append("grpo.beta and grpo.clip_eps_* must be >= 0")
    if problems:
        raise SystemExit("wfopt train: invalid config: " + "; ".join(problems))


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit(f"wfopt train: hardware.device={name} but no CUDA device is available")
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
    the frozen base in the compute dtype (PEFT keeps the adapters in fp32).
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
            from peft import LoraConfig, PeftModel, get_peft_model
        except ImportError:
            raise SystemExit("wfopt train: model.lora.enabled=true needs `peft`") from None

        model.requires_grad_(False)
        if checkpoint is not None:
            model = PeftModel.from_pretrained(model, str(checkpoint / "model"), is_trainable=True)
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
                raise SystemExit(f"wfopt train: {err}") from None
    if cfg.hardware.gradient_checkpointing:
        enable_activation_checkpointing(model)
    model.to(device)
    return model, ref_model, autocast


def run(cfg: DictConfig) -> float:
    """Hydra entry point of `wfopt train`; returns the last step's loss."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.utils import to_absolute_path

    from wfopt.runtime import setup_runtime
    from wfopt.tracking import Tracker

    setup_runtime(cfg)
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    g = cfg.grpo
    check_config(g)
    if not cfg.trajectories:
        raise SystemExit(
            "wfopt train: no trajectories; pass trajectories=PATH (the JSONL `wfopt search` writes)"
        )
    path = Path(to_absolute_path(cfg.trajectories))
    try:
        trajectories = read_trajectories(path)
    except TrajectoryError as err:
        raise SystemExit(f"wfopt train: {err}") from None

    checkpoint = None
    if cfg.resume:
        try:
            checkpoint = resolve_checkpoint(to_absolute_path(cfg.resume))
        except FileNotFoundError as err:
            raise SystemExit(f"wfopt train: resume={cfg.resume}: {err}") from None
        lora_ckpt = read_summary(checkpoint).get("lora")
        if lora_ckpt is not None and bool(lora_ckpt) != bool(cfg.model.lora.enabled):
            raise SystemExit(
                f"wfopt train: checkpoint {checkpoint} was trained with "
                f"model.lora.enabled={bool(lora_ckpt)}; pass the same setting to resume it"
            )

    from wfopt.models import load_tokenizer

    torch.manual_seed(g.seed)
    device = resolve_device(cfg.hardware.device)
    tokenizer = load_tokenizer(cfg.model)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    dataset = TrajectoryDataset(
        trajectories,
        tokenizer,
        g.max_length,
        max_response_length=g.max_response_length,
        truncation=g.truncation,
        norm_by_std=g.norm_by_std,
        eps=g.adv_eps,
        estimator=g.adv_estimator,
        chat_template=cfg.model.chat_template,
    )
    stats = dataset.stats
    log.info(
        "%s: %d groups -> %d samples (%d singleton groups skipped, %d all-equal groups, "
        "%d too long dropped, %d truncated)",
        path,
        stats["groups"],
        stats["samples"],
        stats["singleton_groups_skipped"],
        stats["zero_std_groups"],
        stats["dropped_too_long"],
        stats["truncated"],
    )
    if len(dataset) == 0:
        raise SystemExit(f"wfopt train: no trainable samples in {path} ({stats})")

    model, ref_model, autocast = build_policy(cfg, device, checkpoint)

    trainer = GRPOTrainer(
        model,
        g,
        ref_model=ref_model,
        device=device,
        autocast_dtype=autocast,
        total_steps=planned_steps(len(dataset), g),
        pad_token_id=int(tokenizer.pad_token_id),
    )
    if checkpoint is not None:
        trainer.load_state_dict(load_trainer_state(checkpoint))
        log.info("resumed from %s at step %d", checkpoint, trainer.step)

    tracker = Tracker(
        run_dir, cfg.tracking, OmegaConf.to_container(cfg, resolve=True), job_type="train"
    )
    tracker.log({f"data/{k}": v for k, v in stats.items()}, step=trainer.step)
    ckpt_root = run_dir / "checkpoints"
    # the resumed checkpoint counts as saved: the next one is due save_every steps later
    saved: dict[str, Any] = {"step": trainer.step, "path": checkpoint}
    extra = {"trajectories": str(path), "samples": len(dataset)}

    def save(tr: GRPOTrainer) -> None:
        saved["path"] = save_checkpoint(ckpt_root, tr.model, tokenizer, tr.state_dict(), extra)
        saved["step"] = tr.step
        log.info("checkpoint %s", saved["path"])

    def on_batch_end(tr: GRPOTrainer) -> None:
        if g.save_every and tr.step - saved["step"] >= g.save_every:
            save(tr)

    last = trainer.fit(
        dataset,
        on_step=lambda metrics: tracker.log(metrics, step=trainer.step),
        on_batch_end=on_batch_end,
        show_progress=cfg.show_progress,
    )
    if saved["path"] is None or saved["step"] != trainer.step:
        save(trainer)
    summary = {k: v for k, v in last.items() if not isinstance(v, list)}
    summary.update({"train/steps": trainer.step, "checkpoint": str(saved["path"])})
    tracker.summary(summary)
    tracker.finish()
    log.info("trained %d steps; checkpoint %s; metrics in %s", trainer.step, saved["path"], run_dir)
    return float(last.get("train/loss", 0.0))
