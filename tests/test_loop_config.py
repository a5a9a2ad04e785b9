"""`wfopt.loop_config`: the checks of a loop's config, and the config a resumed run keeps."""

from __future__ import annotations

import pytest
from omegaconf import OmegaConf

from wfopt.config import LoopConfig
from wfopt.loop_config import resumed_config
from wfopt.loop_errors import LoopError


def test_bad_loop_config_is_a_clear_error(cli):
    result = cli("loop", "loop.episodes=0", "dry_run=true", expect_ok=False)
    assert result.returncode != 0 and "loop.episodes=0 (must be >= 1)" in result.stderr


def test_resume_keeps_the_runs_config_and_applies_dotted_overrides(tmp_path):
    saved = OmegaConf.structured(LoopConfig)
    saved.loop.episodes = 2
    saved.grpo.lr = 3e-5
    (tmp_path / ".hydra").mkdir()
    OmegaConf.save(saved, tmp_path / ".hydra" / "config.yaml")
    cfg = resumed_config(tmp_path, [f"resume={tmp_path}", "loop.episodes=5"])
    assert cfg.loop.episodes == 5 and cfg.grpo.lr == 3e-5 and cfg.resume == str(tmp_path)
    with pytest.raises(LoopError, match="model=qwen2_7b"):
        resumed_config(tmp_path, ["model=qwen2_7b"])
    with pytest.raises(LoopError, match="missing"):
        resumed_config(tmp_path / "elsewhere", [])
    old = OmegaConf.to_container(saved)
    old["executor"]["retry_backoff_s"] = 0.5  # a key an earlier wfopt had
    OmegaConf.save(OmegaConf.create(old), tmp_path / ".hydra" / "config.yaml")
    with pytest.raises(LoopError, match=r"retry_backoff_s.*the wfopt version that started it"):
        resumed_config(tmp_path, [])
