"""wfopt/models.py: a model that cannot be loaded fails fast, with what is needed, before any
weights load (no hub retries for a minute, no traceback, no 30 GB allocation)."""

from __future__ import annotations

import json
import socket
import time

import pytest
import torch
from omegaconf import OmegaConf

from wfopt.config import ModelConfig
from wfopt.models import ModelLoadError, check_loadable, check_memory

# Qwen2-7B-Instruct's architecture (its config.json, without weights): 7,615,616,512 params
QWEN2_7B = {
    "architectures": ["Qwen2ForCausalLM"],
    "model_type": "qwen2",
    "hidden_size": 3584,
    "intermediate_size": 18944,
    "num_hidden_layers": 28,
    "num_attention_heads": 28,
    "num_key_value_heads": 4,
    "vocab_size": 152064,
    "tie_word_embeddings": False,
}


def config_dir(tmp_path, **config) -> str:
    directory = tmp_path / "model"
    directory.mkdir()
    (directory / "config.json").write_text(json.dumps(config))
    return str(directory)


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_memory_is_estimated_before_loading(tmp_path):
    """7,615,616,512 params x 4 bytes = 30.46 GB in fp32, 15.23 GB in bf16 (hand-worked)."""
    where = config_dir(tmp_path, **QWEN2_7B)
    with pytest.raises(ModelLoadError) as err:
        check_memory(where, torch.float32, "cpu", available=16 * 10**9)
    message = str(err.value)
    assert "7.62B parameters in float32 need ~30.5 GB" in message and "16.0 GB free" in message
    assert "model.dtype=bfloat16 (15.2 GB)" in message and "hardware=gpu" in message
    check_memory(where, torch.bfloat16, "cpu", available=16 * 10**9)  # fits: no error


def test_a_model_too_big_for_this_machine_fails_without_a_traceback(cli, tmp_path):
    # an embedding of 10^9 x 4096 rows: ~8.2T parameters, more than any machine's memory
    huge = {**QWEN2_7B, "num_hidden_layers": 1, "vocab_size": 10**9, "hidden_size": 4096}
    where = config_dir(tmp_path, **huge)
    start = time.perf_counter()
    result = cli(
        "evaluate",
        f"model.path={where}",
        "model.gguf_file=null",
        "dataset.limit=1",
        "tracking.wandb=false",
        "hardware=cpu",
        expect_ok=False,
    )
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert "parameters in float32 need" in result.stderr and "cpu has" in result.stderr
    print(f"failed after {time.perf_counter() - start:.1f} s")


def test_hub_id_offline_and_not_cached_fails_at_once(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    check_loadable.cache_clear()
    with pytest.raises(ModelLoadError, match=r"not in the HF cache.*HF_HUB_OFFLINE is set"):
        check_loadable("no-such-org/no-such-model")
    with pytest.raises(ModelLoadError, match="no such directory"):
        check_loadable(str(tmp_path / "missing" / "model"))


def test_design_card_command_without_weights_fails_fast_and_clearly(cli, tmp_path):
    """`wfopt loop model=qwen2_7b grpo.norm_by_std=true` on a machine without the weights and
    without network: one failed hub attempt (it was ~45 s of retries, 68 log lines, then a
    traceback), a message that says what is needed."""
    env = {
        "HF_HUB_OFFLINE": "0",
        "HF_ENDPOINT": f"http://127.0.0.1:{closed_port()}",
        "HF_HUB_CACHE": str(tmp_path / "hub"),
        "WANDB_MODE": "disabled",
    }
    start = time.perf_counter()
    result = cli("loop", "model=qwen2_7b", "grpo.norm_by_std=true", expect_ok=False, env=env)
    elapsed = time.perf_counter() - start
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert "Retrying" not in result.stderr
    assert "model.path=Qwen/Qwen2-7B-Instruct is not a local directory" in result.stderr
    assert "the hub is unreachable" in result.stderr
    print(f"failed after {elapsed:.1f} s, {len(result.stderr.splitlines())} stderr lines")
    assert elapsed < 60  # the process start and imports; no retry sleeps


def test_offline_hub_id_through_the_loaders(monkeypatch, tmp_path):
    from wfopt.models import load_tokenizer

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    check_loadable.cache_clear()
    cfg = OmegaConf.merge(
        OmegaConf.structured(ModelConfig), {"name": "x", "path": "no-such-org/no-such-model2"}
    )
    with pytest.raises(ModelLoadError, match=r"model\.path=/local/dir"):
        load_tokenizer(cfg)
