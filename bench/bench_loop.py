"""Evidence of learning: a longer `wfopt loop` on the embedded default, episode by episode.

Runs the real CLI (SmolLM2-135M as policy and frozen executor, built-in arithmetic) with a
bigger budget than `make run`, then prints the table the loop wrote: the untrained policy and
each episode on validation (the learning curve, and the episode selection), then on 200 test
problems (the test split of `bench_baselines`) the baseline workflows, the untrained policy
and the selected episode, with 95%
Wilson intervals and paired comparisons (difference [CI], p); then the feedback comparison
(`loop.feedback_problems`): 8 train problems no episode searched, searched with the untrained
and with the selected policy. Whatever the tables show is the result; nothing is filtered.

`WFOPT_BENCH_LOOP_ARGS` appends overrides (e.g. `loop.episodes=2` for a shorter run).
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from wfopt.loop_table import print_feedback, print_results

OVERRIDES = [  # on top of conf/loop.yaml (make run's setting: edit_share, GRPO one epoch)
    "loop.episodes=3",
    # 16 problems an episode, batches of 16 samples (the same steps per episode as 8 problems
    # in batches of 8): each step's gradient averages twice the problems
    "loop.problems_per_episode=16",
    "grpo.grad_accum_steps=4",
    "loop.val_problems=40",
    "loop.test_problems=200",
    "dataset.num_problems=1000",  # a test split of 200: bench_baselines' problems
    # the plain answer and the best single-operator workflow; programmer_vote, the best
    # hand-written one, is in bench_baselines' table on the same 200 problems
    "loop.baselines=[io,programmer]",
    "loop.feedback_problems=8",  # better policy -> better search: unseen train problems
    "mcts.concurrency=8",
]
RESULTS = Path(__file__).resolve().parents[1] / "outputs" / "bench"  # never tracked


def main() -> None:
    extra = shlex.split(os.environ.get("WFOPT_BENCH_LOOP_ARGS", ""))
    wfopt = Path(sys.executable).with_name("wfopt")
    run_dir = RESULTS / "loop_run"  # kept for bench_groups and `wfopt report`; replaced each run
    shutil.rmtree(run_dir, ignore_errors=True)
    RESULTS.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="wfopt-bench-loop-") as tmp:
        args = [
            str(wfopt),
            "loop",
            *OVERRIDES,
            *extra,
            f"executor.cache_path={Path(tmp) / 'responses.sqlite'}",  # a cold cache: real work
            f"hydra.run.dir={run_dir}",
        ]
        print("running:", " ".join(args[1:]), flush=True)
        start = time.perf_counter()
        env = {**os.environ, "WANDB_MODE": os.environ.get("WANDB_MODE", "offline")}
        subprocess.run(args, check=True, cwd=tmp, env=env)
        wall = time.perf_counter() - start
    rows = json.loads((run_dir / "results.json").read_text())
    state = json.loads((run_dir / "state.json").read_text())

    print_results(rows, f"held-out arithmetic, policy-written workflows ({wall / 60:.1f} min)")
    if state.get("feedback"):
        print_feedback(state["feedback"])

    out = RESULTS / "loop.json"
    out.write_text(
        json.dumps(
            {
                "overrides": OVERRIDES + extra,
                "wall_time_s": wall,
                "train_steps": state["train_step"],
                "rows": rows,
                "feedback": state.get("feedback"),
            },
            indent=2,
        )
    )
    print(f"results in {out}; the run in {run_dir}")


if __name__ == "__main__":
    main()
