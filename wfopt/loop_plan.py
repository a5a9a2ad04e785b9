"""The dry run of `wfopt loop` (`dry_run=true`): budgets and upper bounds on LLM calls,
computed from the config alone (`plan`) and printed as a table (`print_plan`); nothing is
loaded."""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig


def plan(
    cfg: DictConfig, n_train: int | None = None, n_eval: tuple[int, int] | None = None
) -> dict:
    """Budgets and upper bounds on LLM calls, from the config alone."""
    lp, m = cfg.loop, cfg.mcts
    per_tree_evals = 1 + m.iterations + m.policy_samples
    asks_policy = m.get("edit_share", 0.0) < 1  # edit_share=1: every expansion is an edit
    per_tree_proposals = m.policy_samples + asks_policy * m.iterations * (1 + m.max_invalid_retries)
    problems = lp.episodes * lp.problems_per_episode
    runs = problems * per_tree_evals * m.rollouts
    evals = ((lp.episodes + 1) * lp.val_problems + 2 * lp.test_problems) * lp.eval_samples
    evals *= 1 + lp.eval_invalid_retries  # at most: every workflow invalid, written again
    return {
        "episodes": lp.episodes,
        "training problems per episode": lp.problems_per_episode,
        "training problems available": n_train,
        "validation problems (per episode)": f"{lp.val_problems} ({cfg.dataset.name}/validation"
        + (f", {n_eval[0]} available)" if n_eval is not None else ")"),
        "test problems (once, at the end)": f"{lp.test_problems} ({cfg.dataset.name}/test"
        + (f", {n_eval[1]} available)" if n_eval is not None else ")"),
        "baselines (test)": ", ".join(lp.baselines) or "-",
        "workflow evaluations per tree (max)": per_tree_evals,
        "workflow runs, all episodes (max)": runs,
        "executor calls, search (max)": runs * m.max_operator_calls,
        "policy samples, search (max)": problems * per_tree_proposals,
        "policy samples, held-out evaluations (max)": evals,
        "GRPO steps per episode": cfg.grpo.max_steps if cfg.grpo.max_steps else "all samples",
        "GRPO lr per episode": ", ".join(
            f"{cfg.grpo.lr * lp.get('lr_decay', 1.0) ** e:.3g}" for e in range(lp.episodes)
        ),
        "feedback search (after the test)": (
            f"{feedback} unseen train problems x 2 policies"
            if (feedback := lp.get("feedback_problems", 0))
            else "-"
        ),
        "policy": f"{cfg.model.name} ({cfg.model.path}), LoRA={cfg.model.lora.enabled}",
        "executor": f"{cfg.executor.backend}"
        + (f" {cfg.executor.model} at {cfg.executor.base_url}" if cfg.executor.base_url else ""),
        "hardware": f"{cfg.hardware.device} {cfg.hardware.dtype}, "
        f"distributed={cfg.hardware.distributed} x{cfg.hardware.num_processes}",
    }


def print_plan(rows: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="wfopt loop plan (dry run: nothing loaded)", show_header=False)
    table.add_column("", style="bold")
    table.add_column("")
    for key, value in rows.items():
        table.add_row(key, "-" if value is None else str(value))
    Console().print(table)
