"""GRPO with the real embedded model and tokenizer: data, log-probs, learning, checkpoints, CLI."""

from __future__ import annotations

import copy
import dataclasses
import itertools
import json
import math
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from wfopt.baselines import load_baseline
from wfopt.config import GRPOConfig, ModelConfig
from wfopt.datasets.arithmetic import generate
from wfopt.grpo import (
    GRPOTrainer,
    TrajectoryDataset,
    TrajectoryError,
    collate_samples,
    read_trajectories,
)
from wfopt.grpo.checkpoint import (
    load_full_weights,
    load_trainer_state,
    resolve_checkpoint,
    save_checkpoint,
)
from wfopt.grpo.model import sequence_log_probs
from wfopt.policy import (
    PROMPT_TEMPLATE,
    RESPONSE_PREFIX,
    build_policy_prompt,
    encode_prompt_and_response,
    policy_response,
)
from wfopt.trajectory import Trajectory

REPO = Path(__file__).resolve().parents[1]
GOOD = [load_baseline("programmer"), load_baseline("cot_sc")]
BAD = [load_baseline("io"), load_baseline("self_refine")]
PROBLEMS = ["What is 12 * 7 + 3?", "Compute 45 - 17 * 2."]


def model_config() -> ModelConfig:
    cfg = OmegaConf.merge(
        OmegaConf.structured(ModelConfig), OmegaConf.load(REPO / "conf/model/smollm2_135m.yaml")
    )
    return cfg  # type: ignore[return-value]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One torch thread: on a shared 2-core machine, two OpenMP threads that wait for each
    other at every barrier run several times slower than one (measured here: 4.7 s vs 2.5 s
    per step under load)."""
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(saved)


@pytest.fixture(scope="module")
def policy():
    """(model, tokenizer): the embedded SmolLM2-135M-Instruct, fp32 on CPU. Tests that
    update weights work on a deep copy."""
    from wfopt.models import load_causal_lm, load_tokenizer

    torch.manual_seed(0)
    cfg = model_config()
    tokenizer = load_tokenizer(cfg)
    model = load_causal_lm(cfg, dtype="float32", device="cpu")
    return model, tokenizer


@pytest.fixture(scope="module")
def tokenizer(policy):
    return policy[1]


def trajectories(n_good: int = 2, n_bad: int = 2) -> list[dict]:
    return [
        {
            "problem": p,
            "problem_id": i,
            "workflow_codes": GOOD[:n_good] + BAD[:n_bad],
            "rewards": [1.0] * n_good + [0.0] * n_bad,
        }
        for i, p in enumerate(PROBLEMS)
    ]


def write_jsonl(path: Path, records: list) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


# ---------------------------------------------------------------- prompt and dataset


def test_one_prompt_builder_plain_and_chat(tokenizer):
    plain = build_policy_prompt("2+2?")
    assert plain == PROMPT_TEMPLATE.format(problem="2+2?") + "\n" + RESPONSE_PREFIX
    chat = build_policy_prompt("2+2?", tokenizer)
    assert PROMPT_TEMPLATE.format(problem="2+2?") in chat
    assert "ensemble(problem, candidates)" in chat  # operator docs in the system turn
    assert chat.endswith("<|im_start|>assistant\n" + RESPONSE_PREFIX)


def test_prompt_ends_where_the_tokenizer_ends_a_token(tokenizer):
    """The prompt/body boundary is a token boundary of the whole text: the body tokenized
    alone continues the prompt's ids exactly as the whole workflow tokenized at once does
    (a prompt ending in the body's indent split `\\n    return` into ids the policy never
    writes)."""
    from wfopt.baselines import list_baselines, load_baseline

    for problem, name in zip(PROBLEMS * 5, list_baselines(), strict=False):
        prompt = build_policy_prompt(problem, tokenizer)
        code = load_baseline(name)
        ids, _ = encode_prompt_and_response(prompt, code, tokenizer, add_eos=False)
        whole = tokenizer(prompt + policy_response(code), add_special_tokens=False)["input_ids"]
        assert ids == whole, name


def test_response_mask_covers_exactly_code_and_eos(tokenizer):
    ds = TrajectoryDataset(trajectories(), tokenizer, max_length=1024)
    assert len(ds) == 8
    for sample in ds:
        ids, mask = sample["input_ids"], sample["response_mask"].bool()
        assert mask.sum() > 0 and not mask[0]
        # contiguous: prompt then response
        first = int(mask.nonzero()[0])
        assert mask[first:].all() and not mask[:first].any()
        body = policy_response(sample["workflow_code"])
        assert sample["workflow_code"] == RESPONSE_PREFIX + body
        assert tokenizer.decode(ids[mask]) == body + tokenizer.eos_token
        assert int(ids[-1]) == tokenizer.eos_token_id
        prompt = build_policy_prompt(sample["problem"], tokenizer)
        assert tokenizer.decode(ids[~mask]) == prompt
        assert sample["attention_mask"].sum() == ids.numel()
        # the policy-side helper builds the very same sample
        same_ids, same_mask = encode_prompt_and_response(prompt, sample["workflow_code"], tokenizer)
        assert same_ids == ids.tolist() and same_mask == sample["response_mask"].tolist()
    # advantages come from the whole group: [1, 1, 0, 0] -> +-0.866
    assert [round(s["advantage"], 3) for s in ds][:4] == [0.866, 0.866, -0.866, -0.866]
    assert {s["group_id"] for s in ds} == {0, 1}


def test_singletons_skipped_and_counted(tokenizer):
    records = [
        *trajectories(),
        {"problem": "1+1?", "problem_id": "solo", "workflow_codes": [GOOD[0]], "rewards": [1.0]},
        {"problem": "2+2?", "problem_id": "flat", "workflow_codes": GOOD, "rewards": [0.5, 0.5]},
    ]
    ds = TrajectoryDataset(records, tokenizer, max_length=1024)
    assert ds.stats["singleton_groups_skipped"] == 1
    assert ds.stats["zero_std_groups"] == 1
    assert ds.stats["groups_used"] == 3 and len(ds) == 10
    assert "1+1?" not in {s["problem"] for s in ds}
    flat = [s for s in ds if s["problem"] == "2+2?"]
    assert [s["advantage"] for s in flat] == [0.0, 0.0]
    assert [s["group_reward_std"] for s in flat] == [0.0, 0.0]


def test_truncation_policy_never_cuts_the_prompt(tokenizer):
    records = trajectories(1, 1)
    prompt_len = len(tokenizer(build_policy_prompt(PROBLEMS[0], tokenizer))["input_ids"])
    body = policy_response(GOOD[0])  # what the policy writes after the prompt's header
    code_len = len(tokenizer(body, add_special_tokens=False)["input_ids"])
    limit = prompt_len + code_len  # one short of body + EOS for GOOD[0]
    dropped = TrajectoryDataset(records, tokenizer, max_length=limit)
    assert dropped.stats["dropped_too_long"] >= 2  # GOOD[0] for both problems
    assert all(s["input_ids"].numel() <= limit for s in dropped)
    cut = TrajectoryDataset(records, tokenizer, max_length=limit, truncation="truncate")
    assert cut.stats["truncated"] >= 2 and cut.stats["dropped_too_long"] == 0
    for s in cut:
        assert s["input_ids"].numel() <= limit
        mask = s["response_mask"].bool()
        prompt = build_policy_prompt(s["problem"], tokenizer)
        assert tokenizer.decode(s["input_ids"][~mask]) == prompt  # prompt intact
        text = tokenizer.decode(s["input_ids"][mask])
        if s["workflow_code"] == GOOD[0]:
            assert body.startswith(text) and tokenizer.eos_token not in text
    # the response cap counts code + EOS
    capped = TrajectoryDataset(records, tokenizer, max_length=4096, max_response_length=code_len)
    assert GOOD[0] not in {s["workflow_code"] for s in capped}
    # no room for a single code token: dropped even when truncating
    none = TrajectoryDataset(records, tokenizer, max_length=prompt_len, truncation="truncate")
    assert len(none) == 0 and none.stats["dropped_too_long"] == 4


@pytest.mark.parametrize(
    "lines,reason",
    [
        (
            [
                '{"problem": "a", "problem_id": 1, "workflow_codes": ["x", "y"], "rewards": [1, 0]}',
                "{oops",
            ],
            ":2: invalid JSON",
        ),
        (
            ['{"problem": "a", "problem_id": 1, "workflow_codes": ["x", "y"], "rewards": [1]}'],
            ":1: list lengths differ: 2 workflow_codes but 1 rewards",
        ),
        (
            [
                '{"problem": "a", "problem_id": 1, "workflow_codes": ["x", "y"], "rewards": [1, NaN]}'
            ],
            ":1: rewards[1] is not finite",
        ),
        (
            ["", '{"problem": "a", "workflow_codes": [], "rewards": []}'],
            ":2: missing field 'problem_id'",
        ),
        (
            [
                '{"problem": "a", "problem_id": 1, "workflow_codes": ["x"], "rewards": [1], "costs": [1, 2]}'
            ],
            ":1: list lengths differ",
        ),
        (['["not", "an", "object"]'], ":1: expected a JSON object"),
        ([""], "no trajectories"),
    ],
)
def test_bad_trajectory_files_name_file_line_reason(tmp_path, lines, reason):
    path = tmp_path / "t.jsonl"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(TrajectoryError) as info:
        read_trajectories(path)
    assert str(path) in str(info.value) and reason in str(info.value)


# ---------------------------------------------------------------- log-probs on the model


def test_model_log_probs_fused_equal_full_log_softmax_any_padding(policy):
    model, tokenizer = policy
    ds = TrajectoryDataset(trajectories(1, 1), tokenizer, max_length=1024)
    samples = list(ds)
    right = collate_samples(samples, tokenizer.pad_token_id)
    with torch.no_grad():
        fused, ent = sequence_log_probs(model, right, fused=True)
        logits = model(input_ids=right["input_ids"], attention_mask=right["attention_mask"]).logits
        full = torch.log_softmax(logits[:, :-1].float(), -1)
        naive = full.gather(-1, right["input_ids"][:, 1:, None]).squeeze(-1)
        naive = torch.cat([torch.zeros(4, 1), naive], 1) * right["response_mask"]
        assert torch.allclose(fused, naive, atol=1e-4)
        assert (ent[right["response_mask"].bool()] > 0).all()
        # left padding (positions from the attention mask) and extra padding change nothing
        left = collate_samples(samples, tokenizer.pad_token_id, padding_side="left")
        lp_left, _ = sequence_log_probs(model, left, fused=True)
        for i in range(4):
            m_r, m_l = right["response_mask"][i].bool(), left["response_mask"][i].bool()
            assert torch.allclose(fused[i][m_r], lp_left[i][m_l], atol=1e-4)
        wide = {k: v for k, v in right.items()}
        for key, fill in (("input_ids", tokenizer.pad_token_id), ("attention_mask", 0)):
            wide[key] = torch.nn.functional.pad(right[key], (0, 7), value=fill)
        wide["response_mask"] = torch.nn.functional.pad(right["response_mask"], (0, 7))
        lp_wide, _ = sequence_log_probs(model, wide, fused=True)
        assert torch.allclose(lp_wide[:, : fused.shape[1]], fused, atol=1e-4)


# ---------------------------------------------------------------- training


def mean_log_probs(model, batch) -> tuple[float, float]:
    """Mean per-token log-prob of positive- and of negative-advantage workflows."""
    with torch.no_grad():
        lp, _ = sequence_log_probs(model, batch)
    per_seq = lp.sum(-1) / batch["response_mask"].sum(-1)
    adv = batch["advantages"]
    return per_seq[adv > 0].mean().item(), per_seq[adv < 0].mean().item()


def test_learning_raises_positive_and_lowers_negative_workflows(policy, tmp_path):
    model, tokenizer = copy.deepcopy(policy[0]), policy[1]
    path = write_jsonl(tmp_path / "trajectories.jsonl", trajectories(1, 1))
    ds = TrajectoryDataset(path, tokenizer, max_length=1024, chat_template=False)
    batch = collate_samples(list(ds), tokenizer.pad_token_id)
    cfg = GRPOConfig(lr=1e-5, micro_batch_size=2, grad_accum_steps=2)
    trainer = GRPOTrainer(model, cfg, pad_token_id=tokenizer.pad_token_id, total_steps=3)
    pos0, neg0 = mean_log_probs(model, batch)
    for _ in range(3):
        metrics = trainer.train_step(batch)
    pos1, neg1 = mean_log_probs(model, batch)
    print(
        f"\nlearning (SmolLM2-135M, full FT, lr 1e-5, 3 steps): mean log-prob per token "
        f"positive {pos0:.4f} -> {pos1:.4f} ({pos1 - pos0:+.4f}), "
        f"negative {neg0:.4f} -> {neg1:.4f} ({neg1 - neg0:+.4f})"
    )
    assert pos1 - pos0 > 0.1
    assert neg0 - neg1 > 0.1
    assert metrics["train/response_tokens"] == int(batch["response_mask"].sum())
    assert math.isfinite(metrics["train/grad_norm"]) and metrics["train/lr"] == 1e-5


def test_split_invariance_on_the_model(policy):
    """micro-batches of 1 with accumulation = one batch of 4: same loss and gradient norm."""
    tokenizer = policy[1]
    ds = TrajectoryDataset(trajectories(1, 1), tokenizer, max_length=1024, chat_template=False)
    batch = collate_samples(list(ds), tokenizer.pad_token_id)
    out = {}
    for micro in (4, 1):
        cfg = GRPOConfig(
            micro_batch_size=micro, lr=0.0, loss_agg="seq_mean_token_mean", max_grad_norm=0
        )
        trainer = GRPOTrainer(policy[0], cfg, pad_token_id=tokenizer.pad_token_id)
        out[micro] = trainer.train_step(batch)  # lr = 0: the shared model does not change
    for key in ("train/loss", "train/pg_loss", "train/entropy"):
        assert out[1][key] == pytest.approx(out[4][key], rel=1e-5, abs=1e-7), key
    assert out[1]["train/grad_norm"] == pytest.approx(out[4]["train/grad_norm"], rel=1e-4)


def test_lora_reference_and_cached_old_log_probs(policy):
    """LoRA + beta: the reference is the adapter-free model (KL exactly 0 before the first
    update, > 0 after); num_iterations=2 reuses cached old log-probs, so the second update
    sees rho != 1; `fit` reports each step as it happens."""
    from peft import LoraConfig, get_peft_model

    model, tokenizer = copy.deepcopy(policy[0]), policy[1]
    model = get_peft_model(
        model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], lora_dropout=0.1)
    )
    # hand-made workflows (no sampled ids) trained as on-policy: the clip acts on them
    ds = TrajectoryDataset(
        trajectories(1, 1),
        tokenizer,
        max_length=1024,
        chat_template=False,
        off_policy="as_on_policy",
    )
    cfg = GRPOConfig(
        lr=1e-3,
        beta=0.1,
        num_iterations=2,
        micro_batch_size=4,
        clip_eps_low=0.01,
        clip_eps_high=0.01,
    )
    trainer = GRPOTrainer(model, cfg, pad_token_id=tokenizer.pad_token_id, total_steps=2)
    seen = []
    trainer.fit(ds, on_step=lambda m: seen.append((trainer.step, m)), show_progress=False)
    assert [step for step, _ in seen] == [1, 2]  # one batch of 4, two iterations on it
    first, second = (m for _, m in seen)
    assert first["train/kl"] == 0.0 and first["train/clip_ratio"] == 0.0
    assert second["train/kl"] > 0.0
    assert second["train/clip_ratio"] > 0.0  # the old log-probs are from before update 1
    assert trainer.step == 2


# ---------------------------------------------------------------- checkpoints


def tiny_lm(seed: int = 0):
    """A randomly initialized 2-layer Llama (vocab 32): trainer mechanics in milliseconds."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=32,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        attention_dropout=0.1,
    )
    return LlamaForCausalLM(config)


def tiny_samples(n: int, response_len: int = 3) -> list[dict]:
    """`n` samples: 2 prompt tokens + `response_len` response tokens, advantages +1/-1."""
    out = []
    for i in range(n):
        ids = torch.tensor([1, 2 + i % 5] + [3 + (i + t) % 20 for t in range(response_len)])
        out.append(
            {
                "input_ids": ids,
                "attention_mask": torch.ones_like(ids),
                "response_mask": torch.tensor([0, 0] + [1] * response_len),
                "advantage": 1.0 if i % 2 == 0 else -1.0,
                "reward": float(i % 2 == 0),
                "group_reward_std": 0.5,
                "group_id": i // 2,
            }
        )
    return out


def test_max_steps_stops_exactly_inside_a_batch():
    """2 batches x 3 iterations = 6 steps; max_steps=4 stops after 4 (it ran 6: the cap was
    checked once per batch), and the cut batch counts as done."""
    cfg = GRPOConfig(num_iterations=3, max_steps=4, micro_batch_size=2, lr=1e-3)
    trainer = GRPOTrainer(tiny_lm(), cfg, total_steps=4)
    steps = []
    trainer.fit(tiny_samples(4), on_step=steps.append, show_progress=False)
    assert trainer.step == len(steps) == 4
    assert (trainer.epoch, trainer.batch_in_epoch) == (1, 0)  # both batches done
    unlimited = GRPOTrainer(tiny_lm(), dataclasses.replace(cfg, max_steps=None), total_steps=6)
    unlimited.fit(tiny_samples(4), show_progress=False)
    assert unlimited.step == 6


def test_dr_grpo_loss_divides_by_norm_tokens():
    """At rho = 1, pg_loss = -sum_b A_b * len_b / (B * norm_tokens): hand-worked 0 for
    balanced +1/-1 advantages, so unbalance them: A = (+1, +1, -1, +1), len 3 each, B = 4,
    norm_tokens = 6 -> -(3 + 3 - 3 + 3) / 24 = -0.25 (with 512 it would be -6/2048)."""
    samples = tiny_samples(4)
    samples[3]["advantage"] = 1.0
    cfg = GRPOConfig(loss_agg="seq_mean_token_sum_norm", norm_tokens=6, micro_batch_size=4, lr=0.0)
    trainer = GRPOTrainer(tiny_lm(), cfg, total_steps=1)
    metrics = trainer.train_step(collate_samples(samples, 0))
    assert metrics["train/pg_loss"] == pytest.approx(-0.25, abs=1e-6)


def test_lora_dropout_is_off_during_grpo_and_warned_about():
    """LoRA's dropout would make old and new log-probs differ at rho = 1: the trainer turns it
    off (and config.inert_knobs warns that model.lora.dropout cannot act)."""
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(
        tiny_lm(), LoraConfig(r=4, lora_alpha=8, lora_dropout=0.3, target_modules=["q_proj"])
    )
    dropouts = [m for n, m in model.named_modules() if isinstance(m, torch.nn.Dropout)]
    assert dropouts and all(m.p == 0.3 for m in dropouts)
    GRPOTrainer(model, GRPOConfig(), total_steps=1)
    assert all(m.p == 0.0 for m in dropouts)
    assert all(
        m.attention_dropout == 0.0 for m in model.modules() if hasattr(m, "attention_dropout")
    )


def test_full_finetuning_checkpoint_roundtrip(policy, tmp_path):
    model, tokenizer = copy.deepcopy(policy[0]), policy[1]
    ds = TrajectoryDataset(trajectories(1, 1), tokenizer, max_length=1024, chat_template=False)
    batch = collate_samples(list(ds)[:2], tokenizer.pad_token_id)
    cfg = GRPOConfig(lr=1e-4, micro_batch_size=2)
    trainer = GRPOTrainer(model, cfg, pad_token_id=tokenizer.pad_token_id, total_steps=5)
    trainer.train_step(batch)
    trainer.batch_in_epoch = 1
    path = save_checkpoint(tmp_path / "checkpoints", model, tokenizer, trainer.state_dict())
    assert path.name == "step-000001" and resolve_checkpoint(tmp_path) == path
    assert not list((tmp_path / "checkpoints").glob(".tmp-*"))  # nothing half-written left
    fresh = copy.deepcopy(policy[0])
    load_full_weights(fresh, path / "model")
    for (name, a), b in zip(model.named_parameters(), fresh.parameters(), strict=True):
        assert torch.equal(a, b), name
    resumed = GRPOTrainer(fresh, cfg, pad_token_id=tokenizer.pad_token_id, total_steps=5)
    resumed.load_state_dict(load_trainer_state(path))
    assert (resumed.step, resumed.epoch, resumed.batch_in_epoch) == (1, 0, 1)
    # the same next update from the original and the resumed trainer
    a, b = trainer.train_step(batch), resumed.train_step(batch)
    assert a["train/grad_norm"] == pytest.approx(b["train/grad_norm"], rel=1e-5)
    for p, q in zip(model.parameters(), fresh.parameters(), strict=True):
        assert torch.allclose(p, q, atol=1e-7)


# ---------------------------------------------------------------- CLI end to end

TRAIN_NAMES = [
    "train/advantages",
    "train/pg_loss",
    "train/entropy",
    "train/kl",
    "train/clip_ratio",
    "train/grad_norm",
    "train/lr",
    "train/reward_mean",
    "train/reward_std",
    "train/frac_reward_zero_std",
    "train/response_tokens",
    "train/tokens_per_s",
]


def test_wfopt_train_cli_end_to_end_and_resume(cli, tmp_path):
    records = [
        *trajectories(1, 1),
        {"problem": "9-1?", "problem_id": "s", "workflow_codes": [GOOD[0]], "rewards": [1.0]},
    ]
    traj = write_jsonl(tmp_path / "trajectories.jsonl", records)
    common = [
        f"trajectories={traj}",
        "model.lora.enabled=true",
        "model.lora.r=4",
        "grpo.micro_batch_size=2",
        "grpo.grad_accum_steps=1",
        "grpo.lr=1e-4",
        "grpo.max_length=512",
        "show_progress=false",
        "hardware.num_threads=1",
        "tracking.wandb=true",
        "tracking.mode=offline",
    ]
    run1 = tmp_path / "run1"
    cli("train", *common, f"hydra.run.dir={run1}", "grpo.epochs=1")
    ckpt = run1 / "checkpoints" / "step-000002"  # 4 samples / batch 2 = 2 steps
    assert (ckpt / "model" / "adapter_model.safetensors").is_file()
    assert (ckpt / "model" / "tokenizer.json").is_file()
    assert (ckpt / "trainer_state.pt").is_file()
    assert (run1 / "checkpoints" / "latest").read_text().strip() == "step-000002"
    records = [json.loads(x) for x in (run1 / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in records if "train/pg_loss" in r]
    assert [r["step"] for r in steps] == [1, 2]
    data = next(r for r in records if "data/samples" in r)
    assert data["data/samples"] == 4 and data["data/singleton_groups_skipped"] == 1
    for name in TRAIN_NAMES:
        key = name + "/mean" if name == "train/advantages" else name
        assert key in steps[0], name
    assert steps[0]["train/frac_reward_zero_std"] == 0.0
    wandb_files = list(run1.glob("wandb/offline-run-*/run-*.wandb"))
    assert len(wandb_files) == 1
    blob = wandb_files[0].read_bytes()
    for name in TRAIN_NAMES:
        assert name.encode() in blob, name
    assert b"histogram" in blob

    run2 = tmp_path / "run2"
    cli("train", *common, f"hydra.run.dir={run2}", "grpo.epochs=2", f"resume={run1}")
    resumed = [json.loads(x) for x in (run2 / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in resumed if "train/pg_loss" in r] == [3, 4]
    assert (run2 / "checkpoints" / "step-000004" / "trainer_state.pt").is_file()
    state = torch.load(run2 / "checkpoints/step-000004/trainer_state.pt", weights_only=False)
    assert (state["step"], state["epoch"], state["batch_in_epoch"]) == (4, 2, 0)


def test_wfopt_train_cli_bad_inputs_exit_with_a_message(cli, tmp_path):
    missing = cli("train", f"trajectories={tmp_path / 'nope.jsonl'}", expect_ok=False)
    assert missing.returncode != 0
    assert "nope.jsonl: no such trajectories file" in missing.stderr
    assert "Traceback" not in missing.stderr
    bad = write_jsonl(tmp_path / "bad.jsonl", [trajectories()[0]])
    with bad.open("a") as f:
        f.write('{"problem": "x", "problem_id": 2, "workflow_codes": ["a"], "rewards": [NaN]}\n')
    corrupt = cli("train", f"trajectories={bad}", expect_ok=False)
    assert corrupt.returncode != 0
    assert f"{bad}:2: rewards[0] is not finite" in corrupt.stderr
    assert "Traceback" not in corrupt.stderr
    none = cli("train", expect_ok=False)
    assert "trajectories=PATH" in none.stderr


# ---------------------------------------------------------------- learning that shows
# GRPO on groups whose rewards hold a known difference (`programmer` scores 1, `io` 0: a fixed
# rule standing in for the executor) makes the policy more likely to write the better workflow
# on problems it never saw. Exact measure: the log-odds log P(better) - log P(worse) of the two
# bodies under the policy's prompt (the longer `programmer` body starts ~80 nats behind).

BETTER, WORSE = load_baseline("programmer"), load_baseline("io")


def log_odds(model, tokenizer, problems: list[str]) -> float:
    """Mean over `problems` of log P(BETTER | prompt) - log P(WORSE | prompt) under `model`."""
    rows = [Trajectory(p, i, [BETTER, WORSE], [0.0, 0.0]) for i, p in enumerate(problems)]
    data = TrajectoryDataset(rows, tokenizer, max_length=1024)
    batch = collate_samples(list(data), tokenizer.pad_token_id)
    with torch.no_grad():
        log_probs, _ = sequence_log_probs(model, batch)
    totals = (log_probs * batch["response_mask"]).sum(-1).view(len(problems), 2)
    return (totals[:, 0] - totals[:, 1]).mean().item()


@pytest.mark.parametrize(
    "off_policy, loss_agg",
    [("as_on_policy", "seq_mean_token_mean"), ("shaped", "token_mean")],  # the defaults; 0.2's
)
def test_grpo_makes_the_better_workflow_more_likely_on_unseen_problems(
    policy, off_policy, loss_agg
):
    model, tokenizer = copy.deepcopy(policy[0]), policy[1]
    problems = [p.question for p in generate(4, seed=3)]
    train, held_out = problems[:2], problems[2:]
    groups = [Trajectory(p, i, [BETTER, WORSE], [1.0, 0.0]) for i, p in enumerate(train)]
    data = TrajectoryDataset(groups, tokenizer, 1024, off_policy=off_policy)  # no ids: off-policy
    batch = collate_samples(list(data), tokenizer.pad_token_id)
    cfg = GRPOConfig(lr=1e-5, micro_batch_size=4, off_policy=off_policy, loss_agg=loss_agg)
    trainer = GRPOTrainer(model, cfg, pad_token_id=tokenizer.pad_token_id, total_steps=3)
    curve = [log_odds(model, tokenizer, held_out)]
    for _ in range(3):
        trainer.train_step(batch)
        curve.append(log_odds(model, tokenizer, held_out))
    print(f"\nlog-odds programmer vs io on 2 unseen problems, per GRPO step: {curve}")
    assert all(b > a for a, b in itertools.pairwise(curve)), curve  # every step
    assert curve[-1] - curve[0] > 10.0, curve  # measured (shaped): -83.6 -> -52.8
