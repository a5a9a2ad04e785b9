"""`wfopt loop`: state, plan, and real runs of the whole loop on the embedded model,
including a SIGKILL mid-episode and a resume, and an executor outage."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from conftest import TINY_LOOP as TINY
from omegaconf import OmegaConf

from wfopt.loop import (
    LoopError,
    build_on,
    episode_problems,
    load_state,
    new_state,
    plan,
    save_state,
)

WFOPT = Path(sys.executable).with_name("wfopt")


def test_state_is_saved_atomically_and_read_back(tmp_path):
    state = new_state()
    state.update(episode=3, cursor=18, checkpoint="/x/step-000004", wandb_run_id="abc")
    save_state(tmp_path, state)
    assert load_state(tmp_path) == state
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]  # no temp file left
    (tmp_path / "state.json").write_text("{broken")
    with pytest.raises(LoopError, match="unreadable"):
        load_state(tmp_path)
    with pytest.raises(LoopError, match=r"no state\.json"):
        load_state(tmp_path / "missing")


def test_episode_problems_follow_one_seeded_order_and_wrap():
    problems = list(range(10))
    first = episode_problems(problems, seed=1, start=0, count=4)
    second = episode_problems(problems, seed=1, start=4, count=4)
    third = episode_problems(problems, seed=1, start=8, count=4)
    assert len(set(first + second)) == 8  # consecutive episodes never repeat a problem
    assert third[2:] == first[:2]  # past the end: wraps around to the start
    assert episode_problems(problems, seed=1, start=0, count=4) == first
    assert episode_problems(problems, seed=2, start=0, count=4) != first


def test_next_episode_builds_on_the_best_validation_policy_so_far():
    rows = [
        {"split": "validation", "episode": 0, "accuracy": 0.10},
        {"split": "validation", "episode": 1, "accuracy": 0.00},
    ]
    checkpoints = {"1": "ckpt-1"}
    assert build_on(rows, checkpoints, "last") == "ckpt-1"
    assert build_on(rows, checkpoints, "best_val") is None  # back to the untrained policy
    rows.append({"split": "validation", "episode": 2, "accuracy": 0.10})
    checkpoints["2"] = "ckpt-2"
    assert build_on(rows, checkpoints, "best_val") == "ckpt-2"  # a tie: the later one
    rows += [
        {"split": "validation", "episode": 3, "accuracy": 0.05},
        {"split": "test", "episode": 3, "accuracy": 0.90},  # test rows never choose
    ]
    checkpoints["3"] = "ckpt-3"
    assert build_on(rows, checkpoints, "best_val") == "ckpt-2"
    assert build_on(rows, checkpoints, "last") == "ckpt-3"


def test_plan_counts_by_hand():
    cfg = OmegaConf.create(
        {
            "loop": {
                "episodes": 3,
                "problems_per_episode": 5,
                "val_problems": 10,
                "test_problems": 20,
                "eval_samples": 2,
                "baselines": ["io"],
            },
            "mcts": {
                "policy_samples": 4,
                "iterations": 6,
                "max_invalid_retries": 2,
                "rollouts": 2,
                "max_operator_calls": 20,
            },
            "grpo": {"max_steps": None},
            "dataset": {"name": "arithmetic"},
            "model": {"name": "m", "path": "p", "lora": {"enabled": False}},
            "executor": {"backend": "same_as_policy", "base_url": None},
            "hardware": {
                "device": "cpu",
                "dtype": "float32",
                "distributed": "no",
                "num_processes": 1,
            },
        }
    )
    rows = plan(cfg)
    assert rows["workflow evaluations per tree (max)"] == 1 + 6 + 4
    assert rows["workflow runs, all episodes (max)"] == 15 * 11 * 2
    assert rows["policy samples, search (max)"] == 15 * (4 + 6 * 3)
    # validation before and after each of 3 episodes, test for the untrained and selected
    assert rows["policy samples, held-out evaluations"] == (4 * 10 + 2 * 20) * 2
    assert rows["feedback search (after the test)"] == "-"
    cfg.mcts.edit_share, cfg.loop.feedback_problems = 1.0, 8  # no expansion asks the policy
    rows = plan(cfg)
    assert rows["policy samples, search (max)"] == 15 * 4
    assert rows["feedback search (after the test)"] == "8 unseen train problems x 2 policies"


def test_dry_run_prints_the_plan_and_loads_nothing(cli, tmp_path):
    run = tmp_path / "dry"
    result = cli("loop", "dry_run=true", "model=qwen2_7b", f"hydra.run.dir={run}")
    assert "wfopt loop plan" in result.stdout and "qwen2_7b" in result.stdout
    assert not (run / "state.json").exists()


def test_bad_loop_config_is_a_clear_error(cli):
    result = cli("loop", "loop.episodes=0", "dry_run=true", expect_ok=False)
    assert result.returncode != 0 and "loop.episodes=0 (must be >= 1)" in result.stderr


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_loop_killed_mid_episode_resumes_without_loss_or_duplicates(resumed_loop, cli, tmp_path):
    run, killed = resumed_loop["run"], resumed_loop["killed"]
    cache = resumed_loop["cache"]
    first_episode = run / "episodes" / "000" / "trajectories.jsonl"
    assert killed["episode"] == 0 and killed["trained"] is None
    searched_before = resumed_loop["searched_before"]
    state = load_state(run)
    assert state["episode"] == 2 and state["trained"] is None
    assert state["wandb_run_id"] == killed["wandb_run_id"]  # the same W&B run, resumed
    for episode in ("000", "001"):
        ids = [r["problem_id"] for r in _lines(run / "episodes" / episode / "trajectories.jsonl")]
        assert len(ids) == len(set(ids)) == 2  # nothing lost, nothing twice
    after = {r["problem_id"]: r for r in _lines(first_episode)}
    assert searched_before <= set(after)
    rows = [(row["split"], row["label"]) for row in state["results"]]
    selected = state["results"][-1]["episode"]
    assert rows == [
        ("validation", "untrained policy"),
        ("validation", "episode 1"),
        ("validation", "episode 2"),
        ("test", "baseline io"),
        ("test", "untrained policy"),
        ("test", f"episode {selected} (selected)"),
    ]
    val = {r["episode"]: r["accuracy"] for r in state["results"][1:3]}
    best = max(val.values())  # chosen on validation, ties to the later episode
    assert val[selected] == best and selected == max(e for e, a in val.items() if a == best)
    final = state["results"][-1]
    assert final["n"] == 3 and set(final) >= {"vs_untrained", "vs_best_baseline"}
    untrained, io = state["scores"]["test/untrained policy"], state["scores"]["test/baseline io"]
    mine = state["scores"][f"test/episode {selected} (selected)"]
    assert final["vs_best_baseline"]["diff"] == pytest.approx((sum(mine) - sum(io)) / 3)
    assert final["vs_untrained"]["diff"] == pytest.approx((sum(mine) - sum(untrained)) / 3)
    assert Path(state["checkpoint"]).is_dir()

    # the feedback comparison: one train problem no episode searched, once per policy
    feedback = state["feedback"]
    assert list(feedback) == ["untrained policy", f"episode {selected}"]
    trained_ids = {
        r["problem_id"]
        for e in ("000", "001")
        for r in _lines(run / "episodes" / e / "trajectories.jsonl")
    }
    searched = []
    for label, arm in feedback.items():
        (line,) = _lines(run / "feedback" / label.replace(" ", "_") / "trajectories.jsonl")
        searched.append(line["problem_id"])
        first = arm["first_solve"][0]
        assert arm["problems"] == 1 and arm["solved_fraction"] == (first is not None)
        assert first is None or 1 <= first <= len(line["workflow_codes"])
    assert searched[0] == searched[1] and searched[0] not in trained_ids
    assert json.loads((run / "feedback.json").read_text()) == feedback

    metrics = _lines(run / "metrics.jsonl")
    assert any("train/pg_loss" in m for m in metrics)
    assert any("eval/valid_rate" in m for m in metrics)
    # test-phase metrics come after the last training step (W&B drops earlier steps)
    train_steps = [m["step"] for m in metrics if "train/pg_loss" in m]
    test_steps = [
        m["step"] for m in metrics if "test_baseline/io/accuracy" in m or "test/accuracy" in m
    ]
    assert len(test_steps) == 3 and min(test_steps) >= max(train_steps)

    # the trained policy can be scored on its own
    result = cli(
        "evaluate",
        f"policy={run}",
        "dataset.limit=2",
        "dataset.num_problems=60",
        "policy_max_tokens=40",
        "executor.sampling.max_new_tokens=32",
        f"executor.cache_path={cache}",
        f"hydra.run.dir={tmp_path / 'eval'}",
    )
    summary = json.loads((tmp_path / "eval" / "summary.json").read_text())
    records = _lines(tmp_path / "eval" / "results.jsonl")
    assert summary["n"] == len(records) == 2, result.stdout
    # every record is a workflow the trained policy wrote, and the valid rate counts them
    assert all(r["workflow_source"].startswith("async def solve(problem):") for r in records)
    valid = [r["error"] != "invalid" for r in records]
    assert summary["valid_rate"] == pytest.approx(sum(valid) / 2)


def test_executor_outage_fails_the_episode_clearly(cli, tmp_path, dead_executor):
    run = tmp_path / "run"
    result = cli("loop", *TINY, *dead_executor, f"hydra.run.dir={run}", expect_ok=False)
    assert result.returncode != 0
    assert "the executor failed" in result.stderr and f"resume={run}" in result.stderr
    state = load_state(run)
    # the untrained policy's validation row may be complete (its workflows can all be invalid,
    # needing no executor); nothing of the episode is recorded
    assert state["episode"] == 0 and state["trained"] is None
    assert [r["label"] for r in state["results"]] in ([], ["untrained policy"])
    trajectories = run / "episodes" / "000" / "trajectories.jsonl"
    assert not trajectories.exists() or not trajectories.read_text().strip()


def test_resume_keeps_the_runs_config_and_applies_dotted_overrides(tmp_path):
    from wfopt.config import LoopConfig
    from wfopt.loop import resumed_config

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


@pytest.mark.slow
def test_loop_trains_each_episode_on_two_processes(cli, tmp_path):
    """hardware.distributed=ddp: search and evaluation in the loop's process, GRPO under
    `accelerate launch` on 2 CPU processes (gloo); its metrics reach the loop's log."""
    run = tmp_path / "run"
    cli(
        "loop",
        *TINY,
        "loop.episodes=1",
        "hardware.distributed=ddp",
        "hardware.num_processes=2",
        f"executor.cache_path={tmp_path / 'responses.sqlite'}",
        f"hydra.run.dir={run}",
    )
    state = load_state(run)
    train_dir = run / "episodes" / "000" / "train"
    assert state["episode"] == 1 and state["checkpoint"].startswith(str(train_dir))
    assert json.loads((train_dir / "result.json").read_text())["step"] == state["train_step"] >= 1
    assert any("train/pg_loss" in m for m in _lines(run / "metrics.jsonl"))
