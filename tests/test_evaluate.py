"""`wfopt evaluate`: real end-to-end runs through the CLI on SmolLM2."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

# Small, fast settings for end-to-end runs on the embedded model.
REPO = Path(__file__).resolve().parents[1]
FAST = ("executor.sampling.max_new_tokens=48", "tracking.wandb=false", "show_progress=false")


def read_run(run_dir: Path) -> tuple[list[dict], dict, list[dict]]:
    results = [json.loads(line) for line in (run_dir / "results.jsonl").read_text().splitlines()]
    summary = json.loads((run_dir / "summary.json").read_text())
    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return results, summary, metrics


def check_consistent(results: list[dict], summary: dict, metrics: list[dict], n: int) -> None:
    assert len(results) == n == summary["n"]
    assert summary["accuracy"] == pytest.approx(sum(r["score"] for r in results) / n)
    logged = next(m for m in metrics if "eval/accuracy" in m)
    assert logged["eval/accuracy"] == pytest.approx(summary["accuracy"])
    for r in results:
        assert r["score"] in (0.0, 1.0)
        if r["score"] == 1.0:
            assert r["error"] is None and r["prediction"]
        assert r["ledger"]["llm_calls"] >= 1


def test_evaluate_arithmetic_end_to_end_and_cached_rerun(cli, tmp_path):
    cache = tmp_path / "cache.sqlite"
    args = ("evaluate", "workflow=cot", "dataset.limit=4", f"executor.cache_path={cache}", *FAST)
    cli(*args, "hydra.run.dir=run1")
    results, summary, metrics = read_run(tmp_path / "run1")
    check_consistent(results, summary, metrics, 4)
    assert (tmp_path / "run1" / ".hydra" / "config.yaml").is_file()
    assert summary["cached_calls"] == 0

    # The same evaluation again: every generation comes from the response cache.
    cli(*args, "hydra.run.dir=run2")
    results2, summary2, _ = read_run(tmp_path / "run2")
    total_calls = sum(r["ledger"]["llm_calls"] for r in results2)
    assert summary2["cached_calls"] == total_calls > 0
    assert [r["prediction"] for r in results2] == [r["prediction"] for r in results]

    # Another model.path under the same model.name (here: the very same weights, converted
    # to a safetensors directory): no answer of the first model is served for it.
    from omegaconf import OmegaConf

    from wfopt.config import ModelConfig
    from wfopt.models import model_dir

    model_cfg = OmegaConf.merge(
        OmegaConf.structured(ModelConfig), OmegaConf.load(REPO / "conf/model/smollm2_135m.yaml")
    )
    with sqlite3.connect(cache) as db:
        rows = db.execute("SELECT COUNT(*) FROM responses").fetchone()[0]
    other = (f"model.path={model_dir(model_cfg)}", "model.gguf_file=null")
    cli(*args, *other, "hydra.run.dir=run3")
    _, summary3, _ = read_run(tmp_path / "run3")
    assert summary3["cached_calls"] == 0
    with sqlite3.connect(cache) as db:  # as many new entries as the first run made
        assert db.execute("SELECT COUNT(*) FROM responses").fetchone()[0] == 2 * rows


def test_evaluate_gsm8k_end_to_end(cli, tmp_path, gsm8k_test_file):
    cli(
        "evaluate",
        "dataset=gsm8k",
        f"dataset.path={gsm8k_test_file}",
        "dataset.limit=3",
        "workflow=io",
        f"executor.cache_path={tmp_path / 'c.sqlite'}",
        "hydra.run.dir=run",
        *FAST,
    )
    results, summary, metrics = read_run(tmp_path / "run")
    check_consistent(results, summary, metrics, 3)
    golds = []
    with gsm8k_test_file.open() as f:
        for line in f:
            golds.append(json.loads(line)["answer"].split("####")[-1].strip().replace(",", ""))
    # the file is the test split, whole and in order: limit=3 scores its first three lines
    assert [r["problem_id"] for r in results] == ["test.jsonl:1", "test.jsonl:2", "test.jsonl:3"]
    assert [r["gold"] for r in results] == golds[:3]
    assert (summary["split"], summary["n_problems"], summary["n_total"]) == ("test", 3, 1319)
    assert summary["source"] == f"{gsm8k_test_file} (whole file)"


def test_invalid_user_workflow_file_fails_clearly(cli, tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("import os\nasync def solve(problem):\n    return os.getcwd()\n")
    result = cli("evaluate", f"workflow.path={bad}", "dataset.limit=1", *FAST, expect_ok=False)
    assert result.returncode != 0
    assert "invalid" in result.stderr and "exactly one" in result.stderr


def test_multirun_with_joblib_launcher(cli, tmp_path):
    cli(
        "evaluate",
        "-m",
        "dataset.limit=1,2",
        "workflow=io",
        "hydra/launcher=joblib",
        "hydra.launcher.n_jobs=1",
        "hydra.sweep.dir=sweep",
        f"executor.cache_path={tmp_path / 'c.sqlite'}",
        *FAST,
        "tracking.wandb=true",  # after FAST: W&B on (offline) for this test
    )
    sizes = sorted(
        json.loads(p.read_text())["n"] for p in (tmp_path / "sweep").glob("*/summary.json")
    )
    assert sizes == [1, 2]
    # each job is its own (offline) W&B run, grouped by the sweep
    runs = sorted((tmp_path / "sweep").glob("*/wandb/offline-run-*/run-*.wandb"))
    assert len(runs) == 2 and runs[0].name != runs[1].name
    assert all(b"evaluate-sweep" in run.read_bytes() for run in runs)


def test_executor_outage_fails_clearly_and_writes_no_results(cli, tmp_path, dead_executor):
    """A dead executor is an error of the run, never a column of zero scores."""
    run = tmp_path / "run"
    result = cli(
        "evaluate", *dead_executor, "dataset.limit=2", f"hydra.run.dir={run}", expect_ok=False
    )
    assert result.returncode != 0
    assert "the executor failed" in result.stderr and "connection error" in result.stderr
    assert not (run / "results.jsonl").exists()
