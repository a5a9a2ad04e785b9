"""The loop's `state.json`: where a run stands (episode, problem cursor, policy checkpoint,
global train step, W&B run id, the results table), written atomically after every step so
that `resume=RUN_DIR` continues a killed run."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from wfopt.loop_errors import LoopError

STATE_FILE = "state.json"


def new_state() -> dict[str, Any]:
    return {
        "episode": 0,  # episodes completed
        "cursor": 0,  # training problems consumed
        "checkpoint": None,  # the current policy (None: untrained)
        "train_step": 0,  # optimizer steps so far (W&B step of the next metrics)
        "trained": None,  # {"episode", "checkpoint", "train_step"}: trained, not yet evaluated
        "wandb_run_id": None,
        "results": [],  # one row per held-out evaluation (the final table)
        "scores": {},  # "<split>/<label>" -> per-problem scores (for the paired comparisons)
    }


def save_state(run_dir: Path, state: dict[str, Any]) -> None:
    """Write `state.json` atomically: a reader sees the old state or the new, never a mix."""
    tmp = run_dir / f".{STATE_FILE}.tmp"
    with tmp.open("w", encoding="utf-8") as f:
        json.dump(state, f, indent=2)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, run_dir / STATE_FILE)


def load_state(run_dir: Path) -> dict[str, Any]:
    path = run_dir / STATE_FILE
    if not path.is_file():
        raise LoopError(f"resume={run_dir}: no {STATE_FILE} there (not a wfopt loop run?)")
    try:
        return {**new_state(), **json.loads(path.read_text())}
    except json.JSONDecodeError as err:
        raise LoopError(f"{path}: unreadable ({err})") from None
