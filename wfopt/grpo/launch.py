"""A training job in its own processes: `accelerate launch ... -m wfopt.grpo.launch JOB.json`.

`wfopt loop` searches and evaluates in one process but trains on several when
`hardware.distributed` is set: it writes a job file (the resolved config, the trajectory
files, the checkpoint to continue from, where to write) and launches this module on every
process. Each runs `train_policy`; the main process writes `result.json` next to the job file.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from omegaconf import OmegaConf


def main(argv: list[str]) -> None:
    from wfopt.config import TrainConfig
    from wfopt.grpo.data import read_trajectories
    from wfopt.grpo.train import train_policy
    from wfopt.runtime import setup_runtime

    if len(argv) != 1:
        sys.exit("usage: python -m wfopt.grpo.launch JOB.json")
    job_file = Path(argv[0])
    job = json.loads(job_file.read_text())
    cfg = OmegaConf.merge(OmegaConf.structured(TrainConfig), job["config"])
    setup_runtime(cfg)
    trajectories = [t for f in job["trajectories"] for t in read_trajectories(f)]
    result = train_policy(
        cfg,
        trajectories,
        job["run_dir"],
        init_checkpoint=job.get("init_checkpoint"),
        show_progress=False,
        checkpoint_info=job.get("checkpoint_info"),
        first_step=int(job.get("first_step", 0)),
    )
    if int(os.environ.get("RANK", "0")) == 0:
        out = {
            "checkpoint": str(result.checkpoint),
            "step": result.step,
            "metrics": result.metrics,
            "dataset_stats": result.dataset_stats,
        }
        tmp = job_file.with_name(".result.json.tmp")
        tmp.write_text(json.dumps(out, default=str))
        os.replace(tmp, job_file.with_name("result.json"))


if __name__ == "__main__":
    main(sys.argv[1:])
