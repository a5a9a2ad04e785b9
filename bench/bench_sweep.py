"""Two wfopt jobs on one machine: a Hydra joblib sweep (both at once) vs one after the other.

The same two jobs, `wfopt evaluate workflow=cot dataset.limit=N seed=0,1` (embedded SmolLM2,
response cache off), launched as one `-m` sweep in several arms:

- one after the other: the basic launcher (one job at a time, each with all the cores);
- one after the other + spinning: that with OMP_WAIT_POLICY=ACTIVE (wfopt sets PASSIVE
  unless the environment chose: idle OpenMP threads then sleep instead of spinning, which is
  what matters when other processes hold the cores);
- joblib: `hydra/launcher=joblib hydra.launcher.n_jobs=2`, the threads wfopt picks
  (runtime.torch_threads: the cores shared by the jobs at once);
- joblib + full pool: the same with `hardware.num_threads=<all cores>` in each job, what two
  unsized processes side by side get;
- joblib + full pool + spinning: that with OMP_WAIT_POLICY=ACTIVE.

`--code` runs the jobs from another checkout (one without this sizing: its "one after the
other" is the libgomp default wait policy, neither PASSIVE nor ACTIVE).

Reports each arm's median wall time, the ratio to "one after the other" (median of per-repeat
ratios; the arms rotate order between repeats), the torch threads each job logged, and the
1-minute load average before and after every run: other work on the machine skews all of it.

    .venv/bin/python -m bench sweep                   # full: dataset.limit=8, 3 repeats
    BENCH_QUICK=1 .venv/bin/python -m bench sweep     # limit 4, 1 repeat
    .venv/bin/python bench/bench_sweep.py --code ../main   # the jobs run another checkout
    .venv/bin/python bench/bench_sweep.py --arms "one after the other,joblib"

Writes the numbers as JSON to `--json` (default outputs/bench/sweep.json).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

REPO = Path(__file__).resolve().parents[1]
CPUS = len(os.sched_getaffinity(0))
JOBLIB = ["hydra/launcher=joblib", "hydra.launcher.n_jobs=2"]
FULL_POOL = [f"hardware.num_threads={CPUS}"]
# arm -> (extra overrides, extra environment)
ARMS: dict[str, tuple[list[str], dict[str, str]]] = {
    "one after the other": ([], {}),
    "one after the other + spinning": ([], {"OMP_WAIT_POLICY": "ACTIVE"}),
    "joblib": (JOBLIB, {}),
    "joblib + full pool": (JOBLIB + FULL_POOL, {}),
    "joblib + full pool + spinning": (JOBLIB + FULL_POOL, {"OMP_WAIT_POLICY": "ACTIVE"}),
}
QUICK = {"limit": 4, "repeats": 1}
OPENMP_VARS = ("OMP_NUM_THREADS", "OMP_WAIT_POLICY")  # each arm sets what it measures


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, default=8, help="dataset.limit per job")
    parser.add_argument("--repeats", type=int, default=3, help="runs of every arm")
    parser.add_argument("--workflow", default="cot")
    parser.add_argument("--arms", default=",".join(ARMS), help="comma-separated subset")
    parser.add_argument("--code", type=Path, default=REPO, help="the checkout the jobs run")
    parser.add_argument("--json", type=Path, default=REPO / "outputs" / "bench" / "sweep.json")
    if os.environ.get("BENCH_QUICK") == "1":
        parser.set_defaults(**QUICK)
    return parser.parse_args(argv)


def run_sweep(args: argparse.Namespace, arm: str, where: Path) -> dict[str, Any]:
    """One `wfopt evaluate -m` of the two jobs; wall time, load and what each job logged."""
    overrides, env = ARMS[arm]
    command = [
        sys.executable, "-m", "wfopt.cli", "evaluate", "-m",
        f"workflow={args.workflow}", f"dataset.limit={args.limit}", "seed=0,1",
        "executor.cache=false", "tracking.wandb=false", "report=false",
        f"hydra.sweep.dir={where}", *overrides,
    ]  # fmt: skip
    inherited = {k: v for k, v in os.environ.items() if k not in OPENMP_VARS}
    full_env = {
        **inherited,
        "PYTHONPATH": str(args.code.resolve()),
        "HF_HUB_OFFLINE": "1",
        "WANDB_MODE": "disabled",
        **env,
    }
    load_before = os.getloadavg()[0]
    start = time.perf_counter()
    done = subprocess.run(command, env=full_env, capture_output=True, text=True, cwd=where.parent)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        sys.exit(f"bench_sweep: {arm} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    threads = [
        m.group(1) if (m := re.search(r"torch threads: (\d+)", log.read_text())) else "?"
        for log in sorted(where.glob("*/evaluate.log"))
    ]
    return {
        "wall_s": wall,
        "threads": threads,
        "load_before": load_before,
        "load_after": os.getloadavg()[0],
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv or [])
    arms = [a for a in args.arms.split(",") if a]
    unknown = set(arms) - set(ARMS)
    if unknown:
        sys.exit(f"bench_sweep: unknown arm(s) {sorted(unknown)}; choose from {list(ARMS)}")
    console = Console(width=max(Console().width, 140))
    runs: dict[str, list[dict[str, Any]]] = {arm: [] for arm in arms}
    with tempfile.TemporaryDirectory() as tmp:
        for repeat in range(args.repeats):
            shift = repeat % len(arms)  # rotate: no arm always runs first (or last)
            for arm in arms[shift:] + arms[:shift]:
                result = run_sweep(args, arm, Path(tmp) / f"{repeat}-{arms.index(arm)}")
                runs[arm].append(result)
                console.print(
                    f"repeat {repeat + 1}/{args.repeats} {arm}: {result['wall_s']:.1f} s, "
                    f"torch threads {'/'.join(result['threads'])}, load "
                    f"{result['load_before']:.1f} -> {result['load_after']:.1f}"
                )
    base = arms[0]
    table = Table(
        title=f"2 jobs `wfopt evaluate workflow={args.workflow} dataset.limit={args.limit}` "
        f"on {CPUS} CPU(s), code {args.code}; median of {args.repeats}"
    )
    for column in ("arm", "median wall s", f"vs {base}", "torch threads", "walls (s)", "load"):
        table.add_column(column, justify="right")
    summary: dict[str, Any] = {}
    for arm in arms:
        walls = [r["wall_s"] for r in runs[arm]]
        ratios = [b["wall_s"] / r["wall_s"] for r, b in zip(runs[arm], runs[base], strict=True)]
        summary[arm] = {"median_wall_s": statistics.median(walls), "runs": runs[arm]}
        summary[arm]["speedup_vs_first"] = statistics.median(ratios)
        table.add_row(
            arm,
            f"{statistics.median(walls):.1f}",
            f"{statistics.median(ratios):.2f}x",
            "/".join(runs[arm][0]["threads"]),
            ", ".join(f"{w:.0f}" for w in walls),
            ", ".join(f"{r['load_before']:.1f}" for r in runs[arm]),
        )
    console.print(table)
    console.print(
        f"vs {base}: > 1 is faster. Load = 1-minute load average before each run; this "
        f"benchmark alone adds ~{CPUS}, more means other work shared the machine."
    )
    args.json.parent.mkdir(parents=True, exist_ok=True)
    settings = {k: str(v) for k, v in vars(args).items()}
    args.json.write_text(json.dumps({"settings": settings, "arms": summary}, indent=2))
    console.print(f"results in {args.json}")
    return summary


if __name__ == "__main__":
    main(sys.argv[1:])
