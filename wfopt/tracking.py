"""One metrics sink: `metrics.jsonl` in the run dir always, Weights & Biases when enabled.

W&B runs online when `WANDB_API_KEY` is set and offline otherwise (`tracking.mode=auto`), so a
run on a laptop with no network still leaves a W&B directory that `wandb sync` can upload.
List-valued metrics (e.g. `train/advantages`) become W&B histograms and are written to the
JSONL file as their mean/std/min/max.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from pathlib import Path
from typing import Any

from wfopt.config import TrackingConfig

log = logging.getLogger(__name__)


def _json_default(value: Any) -> Any:
    if hasattr(value, "item"):
        return value.item()
    if hasattr(value, "tolist"):
        return value.tolist()
    return str(value)


def histogram_stats(name: str, values: list[float]) -> dict[str, float]:
    """mean/std/min/max of a list metric (population std; empty -> NaN-free zeros)."""
    if not values:
        return {f"{name}/mean": 0.0, f"{name}/std": 0.0, f"{name}/min": 0.0, f"{name}/max": 0.0}
    mean = sum(values) / len(values)
    var = sum((v - mean) ** 2 for v in values) / len(values)
    return {
        f"{name}/mean": mean,
        f"{name}/std": math.sqrt(var),
        f"{name}/min": min(values),
        f"{name}/max": max(values),
    }


def sweep_group() -> str | None:
    """`<command>-<sweep dir name>` inside a Hydra multirun (each job its own W&B run, grouped
    by sweep), else None."""
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        hydra_cfg = HydraConfig.get()
    except (ImportError, ValueError):  # not inside a Hydra app
        return None
    if hydra_cfg.mode != RunMode.MULTIRUN:
        return None
    return f"{hydra_cfg.job.name}-{Path(hydra_cfg.sweep.dir).name}"


def wandb_mode(cfg: TrackingConfig) -> str:
    if not cfg.wandb or cfg.mode == "disabled":
        return "disabled"
    if cfg.mode == "auto":
        return "online" if os.environ.get("WANDB_API_KEY") else "offline"
    return cfg.mode


class Tracker:
    """Log metrics to `<run_dir>/metrics.jsonl` and, if enabled, to a W&B run."""

    def __init__(
        self,
        run_dir: str | Path,
        cfg: TrackingConfig,
        config: dict[str, Any] | None = None,
        job_type: str = "run",
        run_id: str | None = None,
    ) -> None:
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.path = self.run_dir / "metrics.jsonl"
        self._file = self.path.open("a", encoding="utf-8")
        self._wandb = None
        mode = wandb_mode(cfg)
        if mode != "disabled":
            import wandb

            self._wandb = wandb.init(
                project=cfg.project,
                entity=cfg.entity,
                group=cfg.group or sweep_group(),
                tags=list(cfg.tags),
                job_type=job_type,
                dir=str(self.run_dir),
                config=config,
                mode=mode,
                id=run_id,
                resume="allow" if run_id else None,
                settings=wandb.Settings(silent=True, console="off"),
            )
            log.info("W&B run %s (%s) in %s", self._wandb.id, mode, self.run_dir)

    @property
    def wandb_run_id(self) -> str | None:
        return self._wandb.id if self._wandb is not None else None

    def log(self, metrics: dict[str, Any], step: int | None = None) -> None:
        flat: dict[str, Any] = {}
        for key, value in metrics.items():
            if isinstance(value, (list, tuple)):
                flat.update(histogram_stats(key, [float(v) for v in value]))
            else:
                flat[key] = value
        record = {"time": time.time(), **({"step": step} if step is not None else {}), **flat}
        self._file.write(json.dumps(record, default=_json_default) + "\n")
        self._file.flush()
        if self._wandb is not None:
            import wandb

            payload = {
                k: wandb.Histogram(v) if isinstance(v, (list, tuple)) else v
                for k, v in metrics.items()
            }
            payload.update({k: v for k, v in flat.items() if k not in metrics})
            self._wandb.log(payload, step=step)

    def summary(self, metrics: dict[str, Any]) -> None:
        """Final values: written as one `summary` record and to the W&B run summary."""
        self._file.write(json.dumps({"summary": metrics}, default=_json_default) + "\n")
        self._file.flush()
        if self._wandb is not None:
            self._wandb.summary.update(metrics)

    def log_report(
        self, images: dict[str, Path], columns: list[str], rows: list[list[Any]]
    ) -> None:
        """A report's figures as W&B images (`report/<name>`) and its results as a
        `wandb.Table` (`report/results`); nothing without W&B (the files are in the run dir)."""
        if self._wandb is None:
            return
        import wandb

        payload: dict[str, Any] = {f"report/{k}": wandb.Image(str(v)) for k, v in images.items()}
        cells = [[v if isinstance(v, (int, float, str, type(None))) else json.dumps(v) for v in r]
                 for r in rows]  # fmt: skip
        payload["report/results"] = wandb.Table(columns=columns, data=cells)
        self._wandb.log(payload)

    def finish(self) -> None:
        self._file.close()
        if self._wandb is not None:
            self._wandb.finish()
            self._wandb = None

    def __enter__(self) -> Tracker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.finish()
