"""`wfopt export`: after a real (small) `wfopt train` with LoRA on the embedded model, the
exported directory is a plain HF model whose logits equal those of the policy wfopt samples."""

from __future__ import annotations

import json

import pytest
import torch
from omegaconf import OmegaConf

from wfopt.baselines import load_baseline

PROBLEMS = ["What is 12 * 7 + 3?", "Compute 45 - 17 * 2."]


def test_exported_lora_policy_has_the_sampled_policys_logits(cli, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    from wfopt.config import HardwareConfig, ModelConfig
    from wfopt.grpo.checkpoint import resolve_checkpoint
    from wfopt.llm.local import stop_token_ids
    from wfopt.models import load_causal_lm
    from wfopt.policy import build_policy_prompt, encode_prompt_and_response, load_policy_llm

    good, bad = load_baseline("programmer"), load_baseline("io")
    groups = [
        {"problem": p, "problem_id": i, "workflow_codes": [good, bad], "rewards": [1.0, 0.0]}
        for i, p in enumerate(PROBLEMS)
    ]
    traj = tmp_path / "trajectories.jsonl"
    traj.write_text("".join(json.dumps(g) + "\n" for g in groups))
    run = tmp_path / "train"
    cli(
        "train",
        f"trajectories={traj}",
        "model.lora.enabled=true",
        "model.lora.r=4",
        "grpo.lr=1e-3",  # big enough that the merged weights visibly differ from the base
        "grpo.max_steps=1",
        "grpo.micro_batch_size=4",
        "hardware.num_threads=1",
        "show_progress=false",
        "tracking.wandb=false",
        f"hydra.run.dir={run}",
    )
    # the train run's report (reusing this run): its curves are the logged steps
    cli("report", str(run))
    metrics = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    steps = [m for m in metrics if "train/pg_loss" in m]
    drawn = json.loads((run / "report_data.json").read_text())["report_train_curves.png"]
    for key in ("train/pg_loss", "train/entropy", "train/reward_mean"):
        assert drawn[key]["lines"][key]["x"] == [float(m["step"]) for m in steps]
        assert drawn[key]["lines"][key]["y"] == pytest.approx([m[key] for m in steps])

    out = tmp_path / "exported"
    result = cli("export", str(run), str(out))
    assert str(out) in result.stdout
    files = {p.name for p in out.iterdir()}
    assert {"config.json", "model.safetensors", "generation_config.json"} <= files
    assert "adapter_config.json" not in files  # merged: no PEFT needed to load it
    assert json.loads((out / "wfopt_export.json").read_text())["lora_merged"] is True

    # the policy exactly as `wfopt evaluate policy=RUN` samples from it
    model_cfg = OmegaConf.merge(
        OmegaConf.structured(ModelConfig), OmegaConf.load(run / ".hydra" / "config.yaml").model
    )
    hardware = OmegaConf.structured(HardwareConfig)
    sampled = load_policy_llm(model_cfg, hardware, resolve_checkpoint(run))
    exported = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(out)

    prompt = build_policy_prompt(PROBLEMS[0], sampled.tokenizer)
    ids, _ = encode_prompt_and_response(prompt, good, sampled.tokenizer)
    assert encode_prompt_and_response(prompt, good, tokenizer)[0] == ids  # same tokenizer
    batch = torch.tensor([ids])
    with torch.no_grad():
        want = sampled.model(batch).logits
        got = exported(batch).logits
        base = load_causal_lm(model_cfg)(batch).logits
    diff = (got - want).abs().max().item()
    changed = (want - base).abs().max().item()
    print(f"exported vs sampled policy: max |logit diff| = {diff:.3g}; vs base {changed:.3g}")
    assert diff < 1e-4  # fp32 tolerance
    assert changed > 1e-3  # the LoRA update is in the exported weights, not just the base

    generation = GenerationConfig.from_pretrained(out)
    assert set(generation.eos_token_id) == stop_token_ids(sampled.tokenizer, sampled.model)
    assert tokenizer.convert_tokens_to_ids("<|im_end|>") in generation.eos_token_id

    again = cli("export", str(run), str(out), expect_ok=False)
    assert again.returncode != 0 and "not empty" in again.stderr


def test_export_without_a_checkpoint_is_a_clear_error(cli, tmp_path):
    result = cli("export", str(tmp_path), str(tmp_path / "out"), expect_ok=False)
    assert result.returncode != 0 and "no checkpoint found" in result.stderr
    assert not (tmp_path / "out").exists()


def test_export_of_a_checkpoint_outside_its_run_names_the_problem(tmp_path):
    from wfopt.export import ExportError, run_config

    checkpoint = tmp_path / "step-000001"
    checkpoint.mkdir()
    with pytest.raises(ExportError, match=r"no \.hydra/config\.yaml"):
        run_config(checkpoint)
