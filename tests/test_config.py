"""The config schema (wfopt/config.py): typed choices, help on every key, presets that only
say what differs from the schema, warnings for knobs that cannot act, hardware by machine."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import yaml
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf

from wfopt import config as C
from wfopt.cli import detect_hardware, with_default_hardware
from wfopt.config import config_dir

CONF = config_dir()

# every choice key of issue 11, with one allowed value
CHOICE_KEYS = {
    "mcts.selection": "uct",
    "mcts.scope": "problem",
    "mcts.proposer": "edits",
    "grpo.loss_agg": "token_mean",
    "grpo.adv_estimator": "rloo",
    "grpo.schedule": "cosine",
    "grpo.truncation": "truncate",
    "hardware.distributed": "ddp",
    "hardware.device": "auto",
    "executor.backend": "local",
    "dataset.name": "gsm8k",
    "dataset.scorer": "exact",
    "tracking.mode": "offline",
}


@pytest.fixture
def composed():
    """`composed(command, *overrides)`: the command's real primary config, composed in-process."""
    C.register_configs()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        yield lambda command, *overrides: compose(command, overrides=list(overrides))
    GlobalHydra.instance().clear()


def test_a_typo_in_any_choice_fails_at_compose_naming_key_and_choices(composed):
    for key, good in CHOICE_KEYS.items():
        cfg = composed("loop", f"{key}={good}")
        assert OmegaConf.select(cfg, key) == good  # compares as the plain string
        with pytest.raises(Exception) as err:
            composed("loop", f"{key}={good}X")
        message = f"{err.value} {err.value.__cause__}"  # what Hydra prints
        assert f"full_key: {key}" in message and "expected one of [" in message, message
        schema_value = OmegaConf.select(OmegaConf.structured(C.LoopConfig), key)
        for allowed in type(schema_value).values():
            assert allowed in message


def test_choices_match_the_registries_they_pick_from():
    from wfopt.datasets import NAMES, SCORERS, SPLITS
    from wfopt.grpo.advantages import ADVANTAGE_ESTIMATORS
    from wfopt.grpo.losses import LOSS_AGGREGATIONS

    assert sorted(C.LossAgg.values()) == sorted(LOSS_AGGREGATIONS)
    assert sorted(C.AdvEstimator.values()) == sorted(ADVANTAGE_ESTIMATORS)
    assert C.Scorer.values() == list(SCORERS) and C.DatasetName.values() == list(NAMES)
    assert C.Split.values() == list(SPLITS)
    assert f"{C.Selection.uct}" == str(C.Selection.uct) == "uct" and C.Selection.uct == "uct"


def test_every_key_has_help_and_wfopt_keys_shows_it(cli):
    for command, schema in C.COMMAND_SCHEMAS.items():
        missing = [key for key, _, _, help_text in C.describe_keys(schema) if not help_text]
        assert not missing, f"{command}: keys without help: {missing}"
    out = cli("keys", "train", "grpo.loss_agg").stdout
    assert "token_mean | seq_mean_token_mean | seq_mean_token_sum_norm" in out
    assert "Dr. GRPO" in out and "grpo.lr" not in out
    assert "wfopt keys" in cli("evaluate", "--help").stdout


def _leaves(node: dict, prefix: str = "") -> dict[str, object]:
    out: dict[str, object] = {}
    for key, value in node.items():
        if isinstance(value, dict):
            out.update(_leaves(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


# a group option's identity: what the option is, even where it equals the schema default
IDENTITY = {"dataset.name", "executor.backend"}


def test_presets_do_not_restate_schema_defaults():
    schema = OmegaConf.to_container(OmegaConf.structured(C.LoopConfig), enum_to_str=True)
    restated = []
    for file in sorted(CONF.glob("*/*.yaml")) + sorted(CONF.glob("*.yaml")):
        if file.parent.name == "accelerate":
            continue  # accelerate's own files, not wfopt config
        data = yaml.safe_load(file.read_text()) or {}
        group = file.parent.name if file.parent != CONF else ""
        if group == "workflow":
            continue  # not in LoopConfig (EvaluateConfig only): checked below
        for key, value in _leaves(
            {k: v for k, v in data.items() if k not in ("defaults", "hydra")}
        ).items():
            full = f"{group}.{key}" if group else key
            default = OmegaConf.select(OmegaConf.create(schema), full, default="<absent>")
            if value == default and full not in IDENTITY:
                restated.append(f"{file.relative_to(CONF)}: {key}")
    workflow_defaults = dataclasses.asdict(C.WorkflowConfig())
    for file in sorted(CONF.glob("workflow/*.yaml")):
        data = yaml.safe_load(file.read_text()) or {}
        restated += [
            f"{file.name}: {k}"
            for k, v in data.items()
            if workflow_defaults[k] == v and k != "name"
        ]
    assert not restated, restated


def test_knobs_that_cannot_act_are_named(composed):
    assert C.inert_knobs(composed("train", "grpo=dr_grpo"), "train") == []  # the preset is fixed
    notes = C.inert_knobs(composed("train", "grpo.clip_eps_high=0.28"), "train")
    assert len(notes) == 1 and "grpo.clip_eps_high=0.28" in notes[0]
    assert "num_iterations=1" in notes[0]
    assert (
        C.inert_knobs(
            composed("train", "grpo.clip_eps_high=0.28", "grpo.num_iterations=2"), "train"
        )
        == []
    )
    lora = ("model.lora.enabled=true", "model.lora.dropout=0.1")
    assert any(
        "model.lora.dropout=0.1" in n for n in C.inert_knobs(composed("loop", *lora), "loop")
    )
    assert C.inert_knobs(composed("evaluate", *lora), "evaluate") == []  # evaluate trains nothing
    dropped = C.inert_knobs(
        composed("search", "mcts.keep_invalid_samples=false", "mcts.invalid_reward=0"), "search"
    )
    assert dropped == [
        "mcts.invalid_reward=0.0 has no effect with mcts.keep_invalid_samples=false: no "
        "invalid sample joins a group"
    ]
    assert C.inert_knobs(composed("search", "mcts.invalid_reward=0"), "search") == []
    notes = C.inert_knobs(composed("search", "mcts.aflow_lambda=0.5"), "search")
    assert notes == ["mcts.aflow_lambda has no effect with mcts.selection=uct"]
    norm = C.inert_knobs(composed("train", "grpo.norm_tokens=100"), "train")
    assert len(norm) == 1 and "loss_agg=seq_mean_token_mean" in norm[0]


def test_inert_knobs_are_warned_once(composed, caplog, monkeypatch):
    from wfopt import runtime

    monkeypatch.delenv("WFOPT_INERT_WARNED", raising=False)
    monkeypatch.setattr(runtime, "_warned", set())
    cfg = composed("train", "grpo.clip_eps_low=0.1")
    with caplog.at_level("WARNING"):
        assert len(runtime.warn_inert_knobs(cfg, "train")) == 1
        assert runtime.warn_inert_knobs(cfg, "train") == []  # once per run
    assert caplog.text.count("grpo.clip_eps_low=0.1 has no effect") == 1
    monkeypatch.setenv("WFOPT_INERT_WARNED", "1")  # a worker started by the warning process
    monkeypatch.setattr(runtime, "_warned", set())
    assert runtime.warn_inert_knobs(cfg, "train") == []


def test_dr_grpo_normalizer_is_the_generation_budget(composed):
    from wfopt.grpo.train import with_norm_tokens

    cfg = composed("train", "grpo=dr_grpo")
    assert with_norm_tokens(cfg).norm_tokens == cfg.mcts.proposal_max_tokens == 160
    cfg = composed("train", "grpo=dr_grpo", "mcts.proposal_max_tokens=96")
    assert with_norm_tokens(cfg).norm_tokens == 96
    assert with_norm_tokens(composed("train", "grpo.norm_tokens=200")).norm_tokens == 200


def test_hardware_defaults_to_what_the_machine_has(cli):
    choice, why = detect_hardware()
    assert choice == ("gpu" if torch.cuda.is_available() else "cpu") and why
    args, picked = with_default_hardware(["--cfg", "job", "dataset.limit=2"])
    assert args == ["--cfg", "job", f"hardware={choice}", "dataset.limit=2"]
    assert picked.startswith(f"hardware={choice} (")
    for explicit in (["hardware=cpu"], ["hardware=gpu", "x=1"], ["-m", "hardware=cpu,gpu"]):
        assert with_default_hardware(explicit) == (explicit, None)  # the user's choice wins
    resume = ["resume=outputs/run"]  # a resumed loop keeps its own config, hardware included
    assert with_default_hardware(resume, "loop") == (resume, None)
    shown = yaml.safe_load(cli("evaluate", "--cfg", "job").stdout)["hardware"]
    assert shown["device"] == ("cuda" if choice == "gpu" else "cpu")
    assert shown["dtype"] == ("bfloat16" if choice == "gpu" else "float32")
    forced = yaml.safe_load(cli("evaluate", "hardware=gpu", "--cfg", "job").stdout)["hardware"]
    assert forced["device"] == "cuda"
