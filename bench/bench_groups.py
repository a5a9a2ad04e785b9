"""Do the search's rewards carry the difference? Group statistics of a loop or search run.

Reads every `trajectories.jsonl` under a run directory (`WFOPT_BENCH_GROUPS_RUN`, default:
the newest `bench_loop` run kept in outputs/bench/loop_run) and prints, over the groups GRPO
trains on: how many have non-zero reward variance, and the mean GRPO advantage (default
config: A = (r - mean) / (std + eps) per group) of workflows by what they call: invalid ones,
valid ones that call `programmer`, and valid ones that do not. A setting where workflows
matter gives the `programmer` class the higher mean advantage; nothing is filtered.
"""

from __future__ import annotations

import os
import statistics
from pathlib import Path

from wfopt.grpo.advantages import grpo_advantages
from wfopt.trajectory import read_trajectories
from wfopt.workflow import InvalidWorkflow, operators_used, parse_policy_workflow, parse_workflow

RESULTS = Path(__file__).resolve().parents[1] / "outputs" / "bench"


def workflow_class(code: str, source: str | None) -> str:
    """Policy samples are held to the policy's rules (as the search scored them)."""
    parse = parse_policy_workflow if str(source).startswith("policy") else parse_workflow
    try:
        parse(code)
    except InvalidWorkflow:
        return "invalid"
    return "calls programmer" if "programmer" in operators_used(code) else "no programmer"


def main() -> None:
    run = Path(os.environ.get("WFOPT_BENCH_GROUPS_RUN", RESULTS / "loop_run"))
    files = sorted(run.rglob("trajectories.jsonl"))
    if not files:  # `make bench` runs this before bench_loop has made a run: say so, go on
        print(f"skipped: no trajectories.jsonl under {run} (set WFOPT_BENCH_GROUPS_RUN)")
        return
    groups = [t for f in files for t in read_trajectories(f)]
    rewards, ids, classes = [], [], []
    for g, t in enumerate(groups):
        rewards += t.rewards
        ids += [g] * len(t.rewards)
        classes += [workflow_class(c, s) for c, s in zip(t.workflow_codes, t.sources, strict=True)]
    import torch

    adv = grpo_advantages(torch.tensor(rewards, dtype=torch.float64), ids).tolist()
    varied = sum(len(set(t.rewards)) > 1 for t in groups)
    print(f"{run}: {len(groups)} groups, {len(rewards)} workflows")
    print(f"groups with non-zero reward variance: {varied}/{len(groups)}")
    print(f"{'class':<18}{'workflows':>10}{'mean reward':>13}{'mean advantage':>16}")
    for name in ("calls programmer", "no programmer", "invalid"):
        rows = [i for i, c in enumerate(classes) if c == name]
        if rows:
            r = statistics.fmean(rewards[i] for i in rows)
            a = statistics.fmean(adv[i] for i in rows)
            print(f"{name:<18}{len(rows):>10}{r:>13.3f}{a:>+16.3f}")


if __name__ == "__main__":
    main()
