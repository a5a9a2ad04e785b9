"""Which workflows beat `io` on the embedded default, measured well enough to tell.

Every workflow of WORKFLOWS on the same 200 test problems of built-in arithmetic, for each
generator setting of SETTINGS, with SmolLM2-135M as the executor (one `wfopt evaluate -m`
sweep per setting, a cold response cache). Reported per workflow: accuracy [95% Wilson CI],
mean tokens per problem, and the paired difference against `io` on the same problems
[95% paired-bootstrap CI] with McNemar's exact p. Whatever it shows is printed; nothing is
filtered.

`WFOPT_BENCH_BASELINES_SETTINGS` picks settings by name (comma-separated);
`WFOPT_BENCH_BASELINES_WORKFLOWS` overrides the workflow list.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from wfopt.stats import compare_paired, wilson_interval

N = 200
WORKFLOWS = ["io", "io_vote", "cot", "cot_sc", "programmer", "programmer_vote", "self_refine"]
SETTINGS = {
    # the embedded default (DatasetConfig): "What is a op b?", operands in [1, 99], + - * /
    "default": [],
    # wfopt 0.1's default: stories, instructions and expressions, 2-3 operands in [1, 20]
    "wfopt_0_1": [
        "dataset.templates=[story,instructions,expression]",
        "dataset.max_operands=3",
        "dataset.max_value=20",
    ],
}
RESULTS = Path(__file__).resolve().parents[1] / "outputs" / "bench"  # never tracked


def _scores(job: Path) -> dict[str, float]:
    rows = [json.loads(line) for line in (job / "results.jsonl").read_text().splitlines() if line]
    return {str(r["problem_id"]): float(r["score"]) for r in rows}


def main() -> None:
    chosen = os.environ.get("WFOPT_BENCH_BASELINES_SETTINGS", ",".join(SETTINGS)).split(",")
    workflows = os.environ.get("WFOPT_BENCH_BASELINES_WORKFLOWS", ",".join(WORKFLOWS)).split(",")
    wfopt = Path(sys.executable).with_name("wfopt")
    out: dict = {"n": N, "settings": {}}
    for name in chosen:
        with tempfile.TemporaryDirectory(prefix="wfopt-bench-baselines-") as tmp:
            sweep = Path(tmp) / "sweep"
            args = [
                str(wfopt), "evaluate", "-m", f"workflow={','.join(workflows)}",
                "dataset.split=test", f"dataset.num_problems={N * 5}", f"dataset.limit={N}",
                *SETTINGS[name], "report=false", "show_progress=false",
                f"executor.cache_path={Path(tmp) / 'cache.sqlite'}", f"hydra.sweep.dir={sweep}",
            ]  # fmt: skip
            print("running:", " ".join(args[1:]), flush=True)
            start = time.perf_counter()
            env = {**os.environ, "WANDB_MODE": "disabled"}
            subprocess.run(args, check=True, cwd=tmp, env=env)
            wall = time.perf_counter() - start
            jobs = {}
            for job in sorted(p for p in sweep.iterdir() if (p / "summary.json").is_file()):
                summary = json.loads((job / "summary.json").read_text())
                jobs[summary.get("workflow", job.name)] = (summary, _scores(job))
        base = jobs["io"][1] if "io" in jobs else None
        rows = []
        for label, (summary, scores) in jobs.items():
            row = {
                "workflow": label,
                "n": summary["n"],
                "accuracy": summary["accuracy"],
                "accuracy_ci95": list(
                    wilson_interval(summary["accuracy"] * summary["n"], summary["n"])
                ),
                "mean_tokens": summary["mean_tokens"],
                "wall_time_s": summary["wall_time_s"],
            }
            if base is not None and label != "io":
                ids = sorted(set(base) & set(scores))
                row["vs_io"] = compare_paired(
                    [scores[i] for i in ids], [base[i] for i in ids]
                ).as_dict()
            rows.append(row)
        out["settings"][name] = {"overrides": SETTINGS[name], "wall_time_s": wall, "rows": rows}
        print(f"\n{name} ({' '.join(SETTINGS[name]) or 'conf defaults'}), {wall / 60:.1f} min")
        print(f"{'workflow':<16}{'accuracy [95% CI]':<24}{'tokens':>8}   vs io: diff [95% CI] p")
        for row in rows:
            low, high = row["accuracy_ci95"]
            paired = "-"
            if "vs_io" in row:
                c = row["vs_io"]
                p = c["p_mcnemar"] if c["p_mcnemar"] is not None else c["p_bootstrap"]
                paired = f"{c['diff']:+.3f} [{c['ci95'][0]:+.3f}, {c['ci95'][1]:+.3f}] p={p:.3g}"
            print(
                f"{row['workflow']:<16}{row['accuracy']:.3f} [{low:.3f}, {high:.3f}]   "
                f"{row['mean_tokens']:>8.0f}   {paired}"
            )
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "baselines.json").write_text(json.dumps(out, indent=2))
    print(f"results in {RESULTS / 'baselines.json'}")


if __name__ == "__main__":
    main()
