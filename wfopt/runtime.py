"""Process-wide setup shared by every subcommand: logging, seeds, torch threads."""

from __future__ import annotations

import logging
import os
import random

from omegaconf import DictConfig


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
