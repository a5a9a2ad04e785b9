"""A training job in its own processes: `accelerate launch ... -m wfopt.grpo.launch JOB.json`.

`wfopt loop` searches and evaluates in one process but trains on several when
`hardware.distributed` is set: `launch_training` writes a job file (the resolved config, the
trajectory files, the checkpoint to continue from, where to write), launches this module on
every process and forwards the job's per-step metrics to the loop's tracker. Each process runs
`main`, that is `train_policy`; the main process writes `result.json` next to the job file
(or, when the trajectories leave nothing to train, the reason, raised again in the loop's
process as `NothingToTrain`).
"""

from __future__ import annotations

import dataclasses
import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from omegaconf import DictConfig, OmegaConf

from wfopt.config import TrainConfig, config_dir
from wfopt.grpo.data import read_trajectories
from wfopt.grpo.train import NothingToTrain, TrainingError, train_policy
from wfopt.runtime import setup_runtime, threads_per_process

if TYPE_CHECKING:
    from wfopt.tracking import Tracker

ACCELERATE_CONFIGS = {"ddp": "ddp.yaml", "fsdp": "fsdp.yaml", "deepspeed": "deepspeed_zero3.yaml"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def launch_training(
    cfg: DictConfig,
    trajectories: list[Path],
    train_dir: Path,
    *,
    init_checkpoint: str | None,
    first_step: int,
    checkpoint_info: dict[str, Any],
    tracker: Tracker,
) -> dict[str, Any]:
    """Train under `accelerate launch` (`hardware.distributed`, `hardware.num_processes`) in
    `train_dir`; its per-step metrics are forwarded to `tracker`. Returns the new checkpoint
    and the global train step after it (`{"checkpoint", "train_step"}`); raises
    `NothingToTrain` as `train_policy` does, and `TrainingError` when the job fails (its
    output is in `train_dir/train.log`)."""
    hw = cfg.hardware
    train_dir.mkdir(parents=True, exist_ok=True)
    (train_dir / "result.json").unlink(missing_ok=True)
    (train_dir / "metrics.jsonl").unlink(missing_ok=True)  # a crashed try's partial log
    config = OmegaConf.to_container(cfg, resolve=True)
    # the training job's config: the loop's own keys (loop, resume, report, ...) left out
    train_keys = {f.name for f in dataclasses.fields(TrainConfig)} - {"resume"}
    config = {k: v for k, v in config.items() if k in train_keys}  # type: ignore[union-attr]
    config["tracking"]["wandb"] = False  # type: ignore[index]  # the loop's process logs to W&B
    job = {
        "config": config,
        "trajectories": [str(f) for f in trajectories],
        "run_dir": str(train_dir),
        "init_checkpoint": init_checkpoint,
        "first_step": first_step,
        "checkpoint_info": checkpoint_info,
    }
    job_file = train_dir / "job.json"
    job_file.write_text(json.dumps(job, indent=2))
    accelerate_config = hw.accelerate_config or str(
        config_dir() / "accelerate" / ACCELERATE_CONFIGS[hw.distributed]
    )
    command = [
        sys.executable, "-m", "accelerate.commands.launch",
        "--config_file", accelerate_config,
        "--num_processes", str(hw.num_processes),
        "--main_process_ip", "127.0.0.1",
        "--main_process_port", str(_free_port()),
        "-m", "wfopt.grpo.launch", str(job_file),
    ]  # fmt: skip
    threads = hw.num_threads or threads_per_process(hw.num_processes)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    with (train_dir / "train.log").open("w") as out:
        done = subprocess.run(command, stdout=out, stderr=subprocess.STDOUT, env=env)
    if done.returncode != 0 or not (train_dir / "result.json").is_file():
        raise TrainingError(
            f"distributed training failed (exit code {done.returncode}); "
            f"see {train_dir / 'train.log'}"
        )
    result = json.loads((train_dir / "result.json").read_text())
    if "nothing_to_train" in result:
        raise NothingToTrain(result["nothing_to_train"])
    for line in (train_dir / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        if "step" in record:
            step = record.pop("step")
            record.pop("time", None)
            tracker.log(record, step=step)
    return {"checkpoint": result["checkpoint"], "train_step": result["step"]}


def main(argv: list[str]) -> None:
    if len(argv) != 1:
        sys.exit("usage: python -m wfopt.grpo.launch JOB.json")
    job_file = Path(argv[0])
    job = json.loads(job_file.read_text())
    cfg = OmegaConf.merge(OmegaConf.structured(TrainConfig), job["config"])
    setup_runtime(cfg)
    trajectories = [t for f in job["trajectories"] for t in read_trajectories(f)]
    try:
        result = train_policy(
            cfg,
            trajectories,
            job["run_dir"],
            init_checkpoint=job.get("init_checkpoint"),
            show_progress=False,
            checkpoint_info=job.get("checkpoint_info"),
            first_step=int(job.get("first_step", 0)),
        )
    except NothingToTrain as err:  # every process reads the same data: all of them end here
        out: dict[str, Any] = {"nothing_to_train": str(err)}
    else:
        out = {
            "checkpoint": str(result.checkpoint),
            "step": result.step,
            "metrics": result.metrics,
            "dataset_stats": result.dataset_stats,
        }
    if int(os.environ.get("RANK", "0")) == 0:
        tmp = job_file.with_name(".result.json.tmp")
        tmp.write_text(json.dumps(out, default=str))
        os.replace(tmp, job_file.with_name("result.json"))


if __name__ == "__main__":
    main(sys.argv[1:])
