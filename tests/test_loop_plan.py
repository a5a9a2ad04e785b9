"""`wfopt.loop_plan`: the dry run's budgets, by hand and through `wfopt loop dry_run=true`."""

from __future__ import annotations

from omegaconf import OmegaConf

from wfopt.loop_plan import plan


def test_plan_counts_by_hand():
    cfg = OmegaConf.create(
        {
            "loop": {
                "episodes": 3,
                "problems_per_episode": 5,
                "val_problems": 10,
                "test_problems": 20,
                "eval_samples": 2,
                "eval_invalid_retries": 1,
                "baselines": ["io"],
                "lr_decay": 0.5,
            },
            "mcts": {
                "policy_samples": 4,
                "iterations": 6,
                "max_invalid_retries": 2,
                "rollouts": 2,
                "max_operator_calls": 20,
            },
            "grpo": {"max_steps": None, "lr": 1e-5},
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
    # (written again once at most when invalid)
    assert rows["policy samples, held-out evaluations (max)"] == (4 * 10 + 2 * 20) * 2 * 2
    assert rows["feedback search (after the test)"] == "-"
    assert rows["GRPO lr per episode"] == "1e-05, 5e-06, 2.5e-06"  # grpo.lr * lr_decay**e
    cfg.mcts.edit_share, cfg.loop.feedback_problems = 1.0, 8  # no expansion asks the policy
    rows = plan(cfg)
    assert rows["policy samples, search (max)"] == 15 * 4
    assert rows["feedback search (after the test)"] == "8 unseen train problems x 2 policies"


def test_dry_run_prints_the_plan_and_loads_nothing(cli, tmp_path):
    run = tmp_path / "dry"
    result = cli("loop", "dry_run=true", "model=qwen2_7b", f"hydra.run.dir={run}")
    assert "wfopt loop plan" in result.stdout and "qwen2_7b" in result.stdout
    assert not (run / "state.json").exists()
