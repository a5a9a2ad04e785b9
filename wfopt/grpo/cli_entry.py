"""`wfopt train`: GRPO on a trajectories file (the Hydra entry point `run`).

    wfopt train trajectories=outputs/.../trajectories.jsonl grpo=dr_grpo model.lora.enabled=true
    wfopt train trajectories=... resume=outputs/<run>/checkpoints/step-000040
    accelerate launch --config_file conf/accelerate/ddp.yaml -m wfopt.cli train \
        hardware=multi_gpu hydra.run.dir=outputs/grpo-ddp trajectories=...

Reads and validates the trajectories (a bad file exits with `<file>:<line>: <reason>`) and
hands them to `wfopt.grpo.train.train_policy`, which does the training (and is what other
commands call in-process); every problem it reports ends the command with its message.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from omegaconf import DictConfig

from wfopt.grpo.checkpoint import resolve_checkpoint
from wfopt.grpo.data import TrajectoryError, read_trajectories
from wfopt.grpo.train import TrainingError, train_policy

log = logging.getLogger(__name__)


def run(cfg: DictConfig) -> float:
    """Hydra entry point of `wfopt train`; returns the last step's loss."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.utils import to_absolute_path

    from wfopt.runtime import setup_runtime

    setup_runtime(cfg)
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    if not cfg.trajectories:
        raise SystemExit(
            "wfopt train: no trajectories; pass trajectories=PATH (the JSONL `wfopt search` writes)"
        )
    path = Path(to_absolute_path(cfg.trajectories))
    try:
        trajectories = read_trajectories(path)
    except TrajectoryError as err:
        raise SystemExit(f"wfopt train: {err}") from None
    resume = None
    if cfg.resume:
        try:
            resume = resolve_checkpoint(to_absolute_path(cfg.resume))
        except FileNotFoundError as err:
            raise SystemExit(f"wfopt train: resume={cfg.resume}: {err}") from None
    if os.environ.get("RANK", "0") == "0":  # under accelerate launch: the main process only
        log.info("training on %s (%d trajectories)", path, len(trajectories))
    try:
        result = train_policy(
            cfg,
            trajectories,
            run_dir,
            resume_checkpoint=resume,
            show_progress=cfg.show_progress,
            checkpoint_info={"trajectories": str(path)},
        )
    except TrainingError as err:
        raise SystemExit(f"wfopt train: {err}") from None
    return float(result.metrics.get("train/loss", 0.0))
