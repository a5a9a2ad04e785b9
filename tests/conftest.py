"""Shared test fixtures: the real CLI, the real embedded model, isolated caches."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from wfopt.config import MCTSConfig

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
WFOPT = Path(sys.executable).with_name("wfopt")

# the smallest loop that still does everything: 2 episodes x 2 problems, 2 validation and
# 3 test problems, one baseline
TINY_LOOP = [
    "loop.episodes=2",
    "loop.problems_per_episode=2",
    "loop.val_problems=2",
    "loop.test_problems=3",
    "loop.baselines=[io]",
    "loop.feedback_problems=1",
    "loop.build_on=best_val",  # the next episode may go back to an earlier policy
    "loop.lr_decay=0.5",  # episode 2 trains at half of grpo.lr
    "mcts.policy_samples=1",
    "loop.policy_max_tokens=40",
    "mcts.iterations=1",
    "mcts.max_invalid_retries=0",
    "mcts.proposal_max_tokens=40",
    "executor.sampling.max_new_tokens=32",
    "dataset.num_problems=60",
    "grpo.max_steps=1",
    # its groups are mostly all-equal: under conf/loop.yaml's `positive` rule an episode would
    # often train nothing (tested on its own), and the resume test needs real steps
    "grpo.off_policy=as_on_policy",
    "grpo.micro_batch_size=2",
    "hardware.num_threads=1",
]


def mcts(**overrides) -> MCTSConfig:
    """An `mcts` config: the schema's defaults with `overrides`."""
    from omegaconf import OmegaConf

    from wfopt.config import MCTSConfig

    return OmegaConf.merge(OmegaConf.structured(MCTSConfig), overrides)  # type: ignore[return-value]


# under `pytest -n N` (make test) the workers share the cores: each, and every wfopt process it
# starts, gets its share of torch threads, set before torch is first imported (N pools of all
# cores would stall each other at every OpenMP barrier)
if os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1").isdigit():
    _workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if _workers > 1:
        _share = max(1, len(os.sched_getaffinity(0)) // _workers)
        os.environ.setdefault("OMP_NUM_THREADS", str(_share))


def pytest_configure(config):
    # W&B never goes online from tests; tests that check W&B ask for offline explicitly.
    os.environ.setdefault("WANDB_MODE", "disabled")
    os.environ.pop("WANDB_API_KEY", None)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")


def run_cli(*args: str, cwd: Path, timeout: float = 600, env: dict | None = None):
    """Run the installed `wfopt` console script; return the CompletedProcess."""
    full_env = {**os.environ, "WANDB_MODE": "offline", **(env or {})}
    return subprocess.run(
        [str(WFOPT), *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=full_env,
    )


@pytest.fixture
def cli(tmp_path):
    """`cli(*args)` runs wfopt in tmp_path; fails the test with the output on error."""

    def _run(*args: str, expect_ok: bool = True, **kwargs):
        result = run_cli(*args, cwd=tmp_path, **kwargs)
        if expect_ok and result.returncode != 0:
            pytest.fail(f"wfopt {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}")
        return result

    return _run


@pytest.fixture(scope="session")
def gsm8k_test_file() -> Path:
    path = SHARED_DATA / "gsm8k" / "test.jsonl"
    if not path.is_file():
        pytest.skip(f"shared GSM8K data not found at {path}")
    return path


@pytest.fixture(scope="session")
def embedded_llm():
    """The real embedded SmolLM2 behind the local batched backend (loaded once per session)."""
    from omegaconf import OmegaConf

    from wfopt.config import HardwareConfig, ModelConfig
    from wfopt.llm.local import LocalLLM

    cfg = OmegaConf.merge(
        OmegaConf.structured(ModelConfig), OmegaConf.load(REPO / "conf/model/smollm2_135m.yaml")
    )
    return LocalLLM.from_config(cfg, HardwareConfig())


@pytest.fixture
def dead_executor() -> list[str]:
    """Overrides that point the executor at an OpenAI-compatible URL nobody listens on."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return [
        "executor=openai",
        "executor.model=m",
        f"executor.base_url=http://127.0.0.1:{port}/v1",
        "executor.max_retries=1",
        "executor.timeout_s=2",
        "executor.cache=false",
    ]


@pytest.fixture(scope="session")
def resumed_loop(tmp_path_factory) -> dict:
    """One real TINY_LOOP run (W&B offline), SIGKILLed mid-episode once its first trajectory
    is written, then resumed to the end: the loop tests check the resume, the report tests
    the figures of the finished run (one run serves both). Under `pytest -n N` the workers
    share it through a file lock in their common temp root: made once, whoever comes first."""
    import json

    from filelock import FileLock

    shared = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        shared = shared.parent  # every worker's base temp lives under this one
    done = shared / "resumed-loop.json"
    with FileLock(str(done) + ".lock"):
        if done.is_file():
            made = json.loads(done.read_text())
        else:
            made = _resumed_loop(shared / "resumed-loop")
            done.write_text(json.dumps(made, default=str))
    made["run"], made["cache"] = Path(made["run"]), Path(made["cache"])
    made["searched_before"] = set(made["searched_before"])
    return made


def _resumed_loop(tmp: Path) -> dict:
    import json
    import signal
    import time

    from wfopt.loop_state import load_state

    tmp.mkdir(parents=True)
    run, cache = tmp / "run", tmp / "responses.sqlite"
    args = [*TINY_LOOP, f"executor.cache_path={cache}"]
    env = {**os.environ, "WANDB_MODE": "offline"}
    proc = subprocess.Popen(
        [str(WFOPT), "loop", *args, f"hydra.run.dir={run}"],
        cwd=tmp,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    first_episode = run / "episodes" / "000" / "trajectories.jsonl"
    deadline = time.monotonic() + 600
    try:
        while not (first_episode.is_file() and first_episode.read_text().count("\n") >= 1):
            assert proc.poll() is None, "the loop ended before it could be killed"
            assert time.monotonic() < deadline, "no trajectory written in time"
            time.sleep(0.2)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the whole process group, mid-episode
        proc.wait()
    killed = load_state(run)
    lines = [line for line in first_episode.read_text().splitlines() if line.strip()]
    searched_before = {json.loads(line)["problem_id"] for line in lines}
    result = run_cli("loop", *args, f"resume={run}", f"hydra.run.dir={tmp / 'resumed'}", cwd=tmp)
    if result.returncode != 0:
        pytest.fail(f"resumed loop failed:\n{result.stdout}\n{result.stderr}")
    return {
        "run": run,
        "cache": cache,
        "killed": killed,
        "searched_before": sorted(searched_before),
    }
