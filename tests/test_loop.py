"""`wfopt loop`: the seeded problem order, and real runs of the whole loop on the embedded
model, including a SIGKILL mid-episode and a resume, and an executor outage."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from conftest import TINY_LOOP as TINY

from wfopt.loop import episode_problems
from wfopt.loop_results import build_on
from wfopt.loop_state import load_state

WFOPT = Path(sys.executable).with_name("wfopt")


def test_episode_problems_follow_one_seeded_order_and_wrap():
    problems = list(range(10))
    first = episode_problems(problems, seed=1, start=0, count=4)
    second = episode_problems(problems, seed=1, start=4, count=4)
    third = episode_problems(problems, seed=1, start=8, count=4)
    assert len(set(first + second)) == 8  # consecutive episodes never repeat a problem
    assert third[2:] == first[:2]  # past the end: wraps around to the start
    assert episode_problems(problems, seed=1, start=0, count=4) == first
    assert episode_problems(problems, seed=2, start=0, count=4) != first


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
    # one optimizer step an episode (grpo.max_steps=1), the second at grpo.lr * loop.lr_decay
    lrs = [r["train/lr"] for r in _lines(run / "metrics.jsonl") if "train/lr" in r]
    assert lrs == pytest.approx([1e-5, 0.5e-5])
    # every episode's checkpoint is kept; the next episode would build on the best on validation
    assert all(Path(c).is_dir() for c in state["checkpoints"].values())
    assert state["checkpoint"] == build_on(state["results"], state["checkpoints"], "best_val")

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


@pytest.mark.parametrize(
    "processes",
    [
        ["hardware.distributed=no"],
        pytest.param(
            ["hardware.distributed=ddp", "hardware.num_processes=2"], marks=pytest.mark.slow
        ),
    ],
    ids=["in-process", "ddp"],
)
def test_an_episode_without_signal_keeps_the_policy(cli, tmp_path, processes):
    """Groups that leave nothing to train (here: trees of the seed alone, singletons) are no
    update, not a failed run: the episode keeps the policy it started from and is evaluated,
    whether it trains in the loop's process or under `accelerate launch`."""
    run = tmp_path / "run"
    result = cli(
        "loop",
        *TINY,
        *processes,
        "loop.episodes=1",
        "mcts.iterations=0",
        "mcts.policy_samples=0",
        "loop.feedback_problems=0",
        f"executor.cache_path={tmp_path / 'responses.sqlite'}",
        f"hydra.run.dir={run}",
    )
    assert "the policy is unchanged: no trainable samples" in result.stdout + result.stderr
    state = load_state(run)
    assert state["episode"] == 1 and state["checkpoint"] is None and state["train_step"] == 0
    assert not (run / "checkpoints").exists()
    rows = {(r["split"], r["label"]): r for r in state["results"]}
    untrained, episode = rows["validation", "untrained policy"], rows["validation", "episode 1"]
    assert episode["accuracy"] == untrained["accuracy"]  # the same policy, the same workflows


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
