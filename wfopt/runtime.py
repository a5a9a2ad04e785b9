"""Process-wide setup shared by every subcommand: logging, seeds, torch threads, and a
warning for each configured knob that cannot act in this command."""

from __future__ import annotations

import logging
import os
import random

from omegaconf import DictConfig

log = logging.getLogger(__name__)


def _command() -> str | None:
    """The running Hydra app's name (evaluate, search, train, loop); None outside Hydra."""
    from hydra.core.hydra_config import HydraConfig

    return HydraConfig.get().job.name if HydraConfig.initialized() else None


_warned: set[str] = set()


def warn_inert_knobs(cfg: DictConfig, command: str | None) -> list[str]:
    """Warn about settings that cannot act (config.inert_knobs), each once per run: processes
    this one starts (accelerate workers) see WFOPT_INERT_WARNED and stay quiet."""
    from wfopt.config import inert_knobs

    warned_by = os.environ.get("WFOPT_INERT_WARNED")
    if command is None or (warned_by and warned_by != str(os.getpid())):
        return []
    notes = [n for n in inert_knobs(cfg, command) if n not in _warned]
    for note in notes:
        log.warning("%s", note)
    _warned.update(notes)
    os.environ["WFOPT_INERT_WARNED"] = str(os.getpid())
    return notes


def setup_runtime(cfg: DictConfig) -> None:
    logging.getLogger().setLevel(cfg.get("log_level", "INFO"))
    for noisy in ("httpx", "urllib3", "transformers", "wandb"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    random.seed(cfg.seed)
    threads = cfg.hardware.get("num_threads")
    if threads:
        import torch

        torch.set_num_threads(int(threads))
    warn_inert_knobs(cfg, _command())
