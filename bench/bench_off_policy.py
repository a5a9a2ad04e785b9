"""How the off-policy rule shapes a GRPO step, on a real search's trajectories.

One `wfopt search` on training problems (the embedded SmolLM2 as policy and executor, the
policy's own samples as the root's first children, edits and the seed in the tree), then the
same few GRPO steps from the same untrained weights under each `grpo.off_policy` rule. Reported
per source (`policy_sample`, `search`, `edit`, `seed`): trained samples, response tokens and
their share of `train/pg_loss` (token-mean shares add up to it). Whatever it shows is printed;
nothing is filtered.

`WFOPT_BENCH_OFF_POLICY_ARGS` appends search overrides.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

from omegaconf import OmegaConf

SEARCH = [
    "dataset.split=train",
    "dataset.limit=8",
    "mcts.iterations=3",
    "mcts.policy_samples=4",
    "mcts.max_invalid_retries=1",
    "mcts.rollouts=1",
    "mcts.concurrency=8",
    "executor.sampling.max_new_tokens=128",
]
STEPS = 3
RULES = ("as_on_policy", "shaped", "drop")
RESULTS = Path(__file__).resolve().parents[1] / "outputs" / "bench"  # never tracked


def main() -> None:
    from wfopt.config import config_dir
    from wfopt.grpo.data import read_trajectories
    from wfopt.grpo.train import train_policy
    from wfopt.trajectory import SOURCE_KINDS

    extra = shlex.split(os.environ.get("WFOPT_BENCH_OFF_POLICY_ARGS", ""))
    wfopt = Path(sys.executable).with_name("wfopt")
    out: dict = {"search": SEARCH + extra, "steps": STEPS, "rules": {}}
    with tempfile.TemporaryDirectory(prefix="wfopt-bench-offpolicy-") as tmp:
        run = Path(tmp) / "search"
        env = {**os.environ, "WANDB_MODE": "disabled"}
        subprocess.run(
            [str(wfopt), "search", *SEARCH, *extra, f"hydra.run.dir={run}",
             f"executor.cache_path={Path(tmp) / 'cache.sqlite'}"],
            check=True, cwd=tmp, env=env,
        )  # fmt: skip
        trajectories = read_trajectories(run / "trajectories.jsonl")
        groups = [t.rewards for t in trajectories]
        out["groups"] = len(groups)
        out["groups_nonzero_std"] = sum(max(r) > min(r) for r in groups)
        cfg = OmegaConf.load(run / ".hydra" / "config.yaml")
        base = OmegaConf.merge(
            OmegaConf.load(config_dir() / "grpo" / "default.yaml"),
            {"max_steps": STEPS, "micro_batch_size": 4, "grad_accum_steps": 2},
        )
        for rule in RULES:
            train_cfg = OmegaConf.merge(
                cfg, {"grpo": {**OmegaConf.to_container(base), "off_policy": rule}}
            )
            train_cfg.tracking.wandb = False
            result = train_policy(train_cfg, trajectories, Path(tmp) / rule, show_progress=False)
            steps = [
                json.loads(line)
                for line in (Path(tmp) / rule / "metrics.jsonl").read_text().splitlines()
            ]
            steps = [m for m in steps if "train/pg_loss" in m]
            per_source: dict = defaultdict(lambda: defaultdict(float))
            for m in steps:
                for kind in SOURCE_KINDS:
                    for field in ("samples", "response_tokens", "pg_loss_share"):
                        per_source[kind][field] += m.get(f"train/source/{kind}/{field}", 0.0)
            out["rules"][rule] = {
                "dataset": result.dataset_stats,
                "per_source": {k: dict(v) for k, v in per_source.items()},
                "pg_loss": sum(m["train/pg_loss"] for m in steps),
                "grad_norm_mean": sum(m["train/grad_norm"] for m in steps) / len(steps),
            }
    print(f"{out['groups']} groups, {out['groups_nonzero_std']} with reward variance")
    print(f"{'rule':<14}{'source':<15}{'samples':>8}{'tokens':>8}{'token %':>9}{'pg share':>10}")
    for rule, r in out["rules"].items():
        tokens = sum(v["response_tokens"] for v in r["per_source"].values()) or 1.0
        for kind, v in r["per_source"].items():
            if not v["samples"]:
                continue
            print(
                f"{rule:<14}{kind:<15}{v['samples']:>8.0f}{v['response_tokens']:>8.0f}"
                f"{100 * v['response_tokens'] / tokens:>8.1f}%{v['pg_loss_share']:>+10.4f}"
            )
        print(f"{rule:<14}{'(total)':<15}{'':>8}{tokens:>8.0f}{'':>9}{r['pg_loss']:>+10.4f}")
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "off_policy.json").write_text(json.dumps(out, indent=2))
    print(f"results in {RESULTS / 'off_policy.json'}")


if __name__ == "__main__":
    main()
