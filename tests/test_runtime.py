"""Process setup (wfopt/runtime.py): torch threads sized to the cores each job really has."""

from __future__ import annotations

import os
import re

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode

from wfopt import config as C
from wfopt.config import config_dir
from wfopt.runtime import concurrent_jobs, joblib_workers, torch_threads


@pytest.mark.parametrize(
    ("cpus", "jobs", "explicit", "env", "threads"),
    [
        (2, 1, None, None, 2),  # alone: every core
        (2, 2, None, None, 1),  # the measured case: 2 sweep jobs on 2 cores
        (16, 3, None, None, 5),  # 16 // 3
        (2, 4, None, None, 1),  # more jobs than cores: still one thread each
        (16, 2, 3, None, 3),  # hardware.num_threads wins ...
        (16, 2, 3, "1", 3),  # ... over everything
        (16, 1, None, "4", 4),  # a launcher's OMP_NUM_THREADS (accelerate, loop's training)
        (16, 2, None, "8", 8),  # a sweep's share wins over an inherited OMP_NUM_THREADS
        (8, 1, None, "junk", 8),  # unreadable: ignored
        (8, 1, None, "0", 8),
    ],
)
def test_torch_threads_worked_by_hand(cpus, jobs, explicit, env, threads):
    assert torch_threads(cpus, jobs, explicit, env)[0] == threads


def test_joblib_worker_count_follows_joblib():
    # n_jobs=-1: one per CPU; -2: all but one; None/0: sequential (joblib's own rules)
    assert [joblib_workers(n, 8) for n in (2, -1, -2, -8, -20, None)] == [2, 8, 7, 1, 1, 1]


@pytest.fixture
def hydra_job():
    """`hydra_job(*overrides, mode)`: a real compose of `wfopt evaluate` with its Hydra
    config set as a running job's (what `concurrent_jobs` reads inside a job)."""
    C.register_configs()
    GlobalHydra.instance().clear()

    def make(*overrides: str, mode: RunMode = RunMode.MULTIRUN) -> None:
        cfg = compose("evaluate", overrides=list(overrides), return_hydra_config=True)
        cfg.hydra.mode = mode
        HydraConfig.instance().set_config(cfg)

    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        yield make
    HydraConfig.instance().cfg = None
    GlobalHydra.instance().clear()


def test_concurrent_jobs_reads_the_joblib_launcher(hydra_job):
    hydra_job("hydra/launcher=joblib", "hydra.launcher.n_jobs=2")
    assert concurrent_jobs(cpus=2) == 2
    hydra_job("hydra/launcher=joblib")  # the launcher's default n_jobs=-1: one per CPU
    assert concurrent_jobs(cpus=6) == 6
    hydra_job()  # the basic launcher runs a sweep's jobs one after another
    assert concurrent_jobs(cpus=6) == 1
    hydra_job("hydra/launcher=joblib", "hydra.launcher.n_jobs=2", mode=RunMode.RUN)
    assert concurrent_jobs(cpus=6) == 1


def test_a_two_job_joblib_sweep_gives_each_job_its_share(cli, tmp_path):
    sweep = tmp_path / "sweep"
    cli(
        "evaluate",
        "-m",
        "workflow=io",
        "dataset.limit=1",
        "seed=0,1",
        "executor.cache=false",
        "executor.sampling.max_new_tokens=8",
        "tracking.wandb=false",
        "report=false",
        "hydra/launcher=joblib",
        "hydra.launcher.n_jobs=2",
        f"hydra.sweep.dir={sweep}",
    )
    cpus = len(os.sched_getaffinity(0))
    logs = sorted(sweep.glob("*/evaluate.log"))
    assert len(logs) == 2, list(sweep.rglob("*"))
    for log in logs:
        found = re.findall(r"torch threads: (\d+) \((.*?);", log.read_text())
        assert found == [(str(max(1, cpus // 2)), f"{cpus} CPU(s) / 2 sweep jobs at once")]
