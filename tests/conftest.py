"""Shared test fixtures: the real CLI, the real embedded model, isolated caches."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
WFOPT = Path(sys.executable).with_name("wfopt")


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
