"""metrics.jsonl and a real offline W&B run."""

from __future__ import annotations

import json
import time

import pytest

from wfopt.config import TrackingConfig
from wfopt.tracking import Tracker, histogram_stats, wandb_mode


def test_histogram_stats_by_hand():
    stats = histogram_stats("a", [1.0, -1.0, 3.0])
    assert stats["a/mean"] == pytest.approx(1.0)
    assert stats["a/std"] == pytest.approx((8 / 3) ** 0.5)  # population std of (0, -2, 2)
    assert (stats["a/min"], stats["a/max"]) == (-1.0, 3.0)
    assert histogram_stats("e", [])["e/std"] == 0.0


def test_wandb_mode(monkeypatch):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    assert wandb_mode(TrackingConfig()) == "offline"
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    assert wandb_mode(TrackingConfig()) == "online"
    assert wandb_mode(TrackingConfig(wandb=False)) == "disabled"


def test_jsonl_only(tmp_path):
    with Tracker(tmp_path, TrackingConfig(wandb=False)) as tracker:
        tracker.log({"eval/accuracy": 0.25, "train/advantages": [1.0, -1.0]}, step=3)
        tracker.summary({"eval/accuracy": 0.25})
    lines = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert lines[0]["step"] == 3 and lines[0]["eval/accuracy"] == 0.25
    assert lines[0]["train/advantages/mean"] == 0.0 and lines[0]["train/advantages/max"] == 1.0
    assert lines[1] == {"summary": {"eval/accuracy": 0.25}}
    assert not (tmp_path / "wandb").exists()


def test_offline_wandb_run_contains_the_metrics(tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_MODE", raising=False)
    tracker = Tracker(tmp_path, TrackingConfig(mode="offline"), {"seed": 7}, job_type="test")
    run_id = tracker.wandb_run_id
    tracker.log({"eval/accuracy": 0.375, "train/advantages": [0.5, -0.5]}, step=0)
    tracker.finish()
    runs = list((tmp_path / "wandb").glob(f"offline-run-*-{run_id}/run-{run_id}.wandb"))
    assert len(runs) == 1
    # The .wandb file is a protobuf record log; metric names and values appear verbatim.
    # wandb-core (a separate process) may still be appending after finish() returns on a
    # loaded machine: wait for it, briefly.
    deadline = time.monotonic() + 20
    while b"0.375" not in (data := runs[0].read_bytes()) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert b"eval/accuracy" in data and b"0.375" in data
    assert b"train/advantages" in data and b"histogram" in data
