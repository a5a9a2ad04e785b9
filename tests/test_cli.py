"""The real `wfopt` console script: routing, Hydra help, config composition and errors."""

from __future__ import annotations

import yaml


def test_top_level_help_lists_subcommands(cli):
    out = cli("--help").stdout
    for command in ("search", "evaluate", "train", "loop"):
        assert command in out


def test_hydra_help_lists_config_groups(cli):
    out = cli("evaluate", "--help").stdout
    assert "Configuration groups" in out
    for group in ("model:", "dataset:", "mcts:", "grpo:", "hardware:", "executor:", "workflow:"):
        assert group in out
    assert "smollm2_135m" in out and "qwen2_7b" in out and "multi_gpu" in out


def test_cfg_job_shows_composed_overrides(cli):
    out = cli("evaluate", "dataset=gsm8k", "dataset.limit=20", "model=qwen2_7b", "--cfg", "job")
    cfg = yaml.safe_load(out.stdout)
    assert cfg["dataset"]["name"] == "gsm8k" and cfg["dataset"]["limit"] == 20
    assert cfg["model"]["path"] == "Qwen/Qwen2-7B-Instruct" and cfg["model"]["lora"]["enabled"]
    assert "grpo" not in cfg and "mcts" not in cfg  # evaluate composes only what it uses
    search = yaml.safe_load(cli("search", "--cfg", "job").stdout)
    assert "mcts" in search and "grpo" not in search


def test_every_group_option_composes(cli):
    cli("train", "grpo=dr_grpo", "--cfg", "job")
    for override in (
        "hardware=gpu",
        "hardware=multi_gpu",
        "executor=openai",
        "model=qwen2_5_0_5b_instruct",
        "model=qwen2_5_7b_instruct",
        "dataset=humaneval",
        "workflow=cot_sc",
    ):
        cli("evaluate", override, "--cfg", "job")


def test_typo_in_override_names_the_key(cli):
    result = cli("evaluate", "dataset.limt=3", expect_ok=False)
    assert result.returncode != 0
    assert "limt" in result.stderr and "DatasetConfig" in result.stderr


def test_wrong_type_names_the_key(cli):
    result = cli("evaluate", "dataset.limit=abc", expect_ok=False)
    assert result.returncode != 0
    assert "dataset.limit" in result.stderr


def test_unknown_group_option_is_listed(cli):
    result = cli("evaluate", "model=gpt9", expect_ok=False)
    assert result.returncode != 0
    assert "smollm2_135m" in result.stderr


def test_every_subcommand_composes_its_primary_config(cli):
    for command, key in (("search", "mcts"), ("train", "grpo"), ("loop", "loop")):
        cfg = yaml.safe_load(cli(command, "--cfg", "job").stdout)
        assert key in cfg and cfg["model"]["name"] == "smollm2_135m"
    loop = yaml.safe_load(cli("loop", "grpo.norm_by_std=false", "--cfg", "job").stdout)
    assert loop["grpo"]["norm_by_std"] is False and loop["loop"]["episodes"] >= 1
