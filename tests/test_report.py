"""`wfopt report`: figures and the HTML page, built from real runs of each command.

Every figure's data is read back from the artists matplotlib drew (`report_data.json`) and
compared with the run's own JSON files, so a figure that plots the wrong numbers fails.
One small real run per command (module-scoped), with the embedded model.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import run_cli

from wfopt.report import ReportError, pareto_front, write_report

SMALL = ["dataset.num_problems=60", "executor.sampling.max_new_tokens=32", "show_progress=false"]


def _run(tmp: Path, *args: str) -> None:
    result = run_cli(*args, cwd=tmp)
    if result.returncode != 0:
        pytest.fail(f"wfopt {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}")


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("report-runs")
    cache = f"executor.cache_path={tmp / 'responses.sqlite'}"
    _run(
        tmp,
        "evaluate",
        "-m",
        "workflow=io,cot",
        "dataset.limit=2",
        *SMALL,
        cache,
        "tracking.wandb=false",
        f"hydra.sweep.dir={tmp / 'sweep'}",
    )
    _run(
        tmp,
        "search",
        "dataset.limit=2",
        "mcts.iterations=2",
        "mcts.rollouts=1",
        "mcts.policy_samples=1",
        "mcts.max_invalid_retries=0",
        "mcts.proposal_max_tokens=32",
        *SMALL,
        cache,
        "tracking.wandb=false",
        f"hydra.run.dir={tmp / 'search'}",
    )
    return {"sweep": tmp / "sweep", "search": tmp / "search"}


def _png_size(path: Path) -> tuple[int, int]:
    from PIL import Image

    with Image.open(path) as image:
        assert image.format == "PNG"
        image.verify()
        return image.size


def _figures(run_dir: Path) -> dict:
    data = json.loads((run_dir / "report_data.json").read_text())
    for name in data:
        width, height = _png_size(run_dir / name)
        assert width > 300 and height > 200
    return data


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_loop_report_plots_results_json_and_the_training_curves(resumed_loop):
    # the session's real loop (killed once, resumed, W&B offline): its report also went to
    # the W&B run
    run = resumed_loop["run"]
    assert (run / "report.html").is_file()  # written by `wfopt loop` itself at the end
    figures = _figures(run)
    rows = json.loads((run / "results.json").read_text())
    policy = [r for r in rows if r["episode"] >= 0 and r["split"] == "validation"]
    assert [r["episode"] for r in policy] == [0, 1, 2]

    heldout = figures["report_loop_heldout.png"]
    acc = heldout["held-out accuracy"]
    assert acc["lines"]["policy accuracy"] == {
        "x": [0.0, 1.0, 2.0],
        "y": [r["accuracy"] for r in policy],
    }
    band = acc["bands"]["accuracy 95% CI"]
    assert band["low"] == pytest.approx([r["accuracy_ci95"][0] for r in policy])
    assert band["high"] == pytest.approx([r["accuracy_ci95"][1] for r in policy])
    baseline = next(r for r in rows if r["label"] == "baseline io")
    assert set(acc["lines"]["ref:baseline io (test)"]["y"]) == {baseline["accuracy"]}
    untrained = "ref:untrained policy (validation)"
    assert set(acc["lines"][untrained]["y"]) == {policy[0]["accuracy"]}
    test_untrained = next(r for r in rows if r["split"] == "test" and r["episode"] == 0)
    assert set(acc["lines"]["ref:untrained policy (test)"]["y"]) == {test_untrained["accuracy"]}
    valid = heldout["valid rate"]
    assert valid["lines"]["policy valid_rate"]["y"] == [r["valid_rate"] for r in policy]
    assert valid["bands"]["valid_rate 95% CI"]["high"] == pytest.approx(
        [r["valid_rate_ci95"][1] for r in policy]
    )

    metrics = [m for m in _lines(run / "metrics.jsonl") if "train/pg_loss" in m]
    assert metrics, "the loop logged no training step"
    curves = figures["report_train_curves.png"]
    for key in ("train/pg_loss", "train/entropy", "train/reward_mean", "train/kl"):
        drawn = curves[key]["lines"][key]
        assert drawn["x"] == [float(m["step"]) for m in metrics]
        assert drawn["y"] == pytest.approx([m[key] for m in metrics])

    if "report_loop_operators.png" in figures:  # only when a valid workflow used an operator
        bars = figures["report_loop_operators.png"]
        (axes,) = bars.values()
        for op, drawn in axes["bars"].items():
            assert drawn["height"] == pytest.approx(
                [(r["operator_use"] or {}).get(op, 0.0) for r in policy]
            )

    page = (run / "report.html").read_text()
    assert page.count("data:image/png;base64,") == len(figures)  # self-contained
    assert "baseline io" in page and "loop:" in page and "grpo:" in page  # table and config
    assert "async def solve" in page  # the best workflows, as code

    # the same figures went to the (offline) W&B run, and the table
    blob = b"".join(p.read_bytes() for p in run.glob("wandb/offline-run-*/run-*.wandb"))
    assert b"report/loop_heldout" in blob and b"report/results" in blob
    assert list(run.glob("wandb/offline-run-*/files/media/images/report/loop_heldout*.png"))


def test_evaluate_sweep_report_accuracy_vs_tokens_with_pareto_front(runs):
    sweep = runs["sweep"]
    summaries = {
        json.loads((job / "summary.json").read_text())["workflow"]: json.loads(
            (job / "summary.json").read_text()
        )
        for job in (sweep / "0", sweep / "1")
    }
    assert set(summaries) == {"io", "cot"}
    (axes,) = _figures(sweep)["report_sweep_pareto.png"].values()
    points = []
    for name, summary in summaries.items():
        drawn = axes["errorbars"][name]
        assert drawn["x"] == [summary["mean_tokens"]] and drawn["y"] == [summary["accuracy"]]
        assert [drawn["low"][0], drawn["high"][0]] == pytest.approx(summary["accuracy_ci95"])
        points.append((summary["mean_tokens"], summary["accuracy"]))
    front = [points[i] for i in pareto_front(points)]
    assert list(zip(*axes["lines"]["Pareto front"].values(), strict=True)) == front
    for job in ("0", "1"):  # each job wrote its own page with its outcomes
        (outcomes,) = _figures(sweep / job)["report_evaluate_outcomes.png"].values()
        summary = json.loads((sweep / job / "summary.json").read_text())
        heights = outcomes["bars"]["problems"]["height"]
        assert heights[0] == pytest.approx(summary["accuracy"] * summary["n"])
        assert sum(heights) == pytest.approx(summary["n"])
    page = (sweep / "report.html").read_text()
    assert "0/report.html" in page and "1/report.html" in page  # links to the jobs' pages


def test_search_report_seed_vs_best_and_rewards_by_source(runs):
    run = runs["search"]
    write_report(run)  # `wfopt search` does not write one itself
    figures = _figures(run)
    trajectories = _lines(run / "trajectories.jsonl")
    (best,) = figures["report_search_best.png"].values()
    seeds = [t["rewards"][t["sources"].index("seed")] for t in trajectories]
    assert best["bars"]["seed"]["height"] == seeds
    assert best["bars"]["tree best"]["height"] == [max(t["rewards"]) for t in trajectories]
    assert best["xticklabels"] == [t["problem_id"] for t in trajectories]
    (sources,) = figures["report_search_sources.png"].values()
    expected: dict[str, list[float]] = {}
    for t in trajectories:
        for source, reward in zip(t["sources"], t["rewards"], strict=True):
            expected.setdefault(source, []).append(reward)
    for source, rewards in expected.items():
        assert sorted(sources["lines"][source]["y"]) == sorted(rewards)
        mean = sum(rewards) / len(rewards)
        assert sources["lines"][f"mean:{source}"]["y"] == pytest.approx([mean, mean])


def test_pareto_front_by_hand():
    # (tokens, accuracy): b beats a (fewer tokens, same accuracy); d is dominated by c
    points = [(100, 0.5), (80, 0.5), (300, 0.8), (400, 0.7), (50, 0.1)]
    assert pareto_front(points) == [4, 1, 2]


def test_report_reads_run_files_defensively(tmp_path):
    """Extra keys, a final test row, a torn metrics line: the figures keep what they know."""
    rows = [
        {"label": "baseline io", "episode": -1, "n": 10, "accuracy": 0.3, "new_field": 1},
        {"label": "untrained", "episode": 0, "n": 10, "accuracy": 0.1, "valid_rate": 0.5,
         "accuracy_ci95": [0.0, 0.4], "valid_rate_ci95": [0.2, 0.8], "split": "validation",
         "operator_use": {"generate": 1.0}},
        {"label": "episode 1", "episode": 1, "n": 10, "accuracy": 0.4, "valid_rate": 0.9,
         "accuracy_ci95": [0.1, 0.7], "valid_rate_ci95": [0.6, 1.0], "split": "validation",
         "operator_use": {"generate": 0.5, "programmer": 0.5}, "paired": {"p": 0.1}},
        {"label": "final test", "episode": 1, "n": 200, "accuracy": 0.35, "split": "test"},
    ]  # fmt: skip
    (tmp_path / "results.json").write_text(json.dumps(rows))
    (tmp_path / "metrics.jsonl").write_text(
        '{"step": 1, "train/pg_loss": 0.5, "train/extra": 3}\n'
        '{"step": 2, "train/pg_loss": 0.25}\n{"step": 3, "train/pg_lo'
    )
    write_report(tmp_path)
    figures = _figures(tmp_path)
    acc = figures["report_loop_heldout.png"]["held-out accuracy"]
    assert acc["lines"]["policy accuracy"]["y"] == [0.1, 0.4]  # the test row is not an episode
    (ops,) = figures["report_loop_operators.png"].values()
    assert ops["bars"]["generate"]["height"] == [1.0, 0.5]
    assert ops["bars"]["programmer"]["height"] == [0.0, 0.5]
    assert ops["bars"]["programmer"]["bottom"] == [1.0, 0.5]  # stacked
    curve = figures["report_train_curves.png"]["train/pg_loss"]["lines"]["train/pg_loss"]
    assert curve == {"x": [1.0, 2.0], "y": [0.5, 0.25]}
    with pytest.raises(ReportError, match="not a wfopt run directory"):
        write_report(_empty(tmp_path))


def _empty(tmp_path: Path) -> Path:
    empty = tmp_path / "empty"
    empty.mkdir()
    return empty


def test_report_cli_names_a_directory_that_is_no_run(cli, tmp_path):
    result = cli("report", str(tmp_path), expect_ok=False)
    assert result.returncode != 0 and "not a wfopt run directory" in result.stderr


@pytest.mark.slow
def test_report_page_renders_in_headless_chromium(resumed_loop, tmp_path):
    """Slow (a browser start): the loop's page loads in Debian's `chromium` without errors and
    its screenshot shows the inlined figures (not a blank page). Install: apt-get install
    chromium."""
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        pytest.skip("Debian's chromium is not installed (apt-get install chromium)")
    shot = tmp_path / "page.png"
    page = resumed_loop["run"] / "report.html"
    done = subprocess.run(
        [browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
         "--window-size=1280,2400", f"--screenshot={shot}", "--enable-logging=stderr", "--v=0",
         page.as_uri()],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0 and shot.is_file(), done.stderr[-2000:]
    assert "Uncaught" not in done.stderr and "ERR_FILE_NOT_FOUND" not in done.stderr
    from PIL import Image

    with Image.open(shot) as image:
        assert image.size == (1280, 2400)
        colors = image.convert("RGB").getcolors(maxcolors=1_000_000) or []
    assert len(colors) > 50  # figures drawn: far more than a blank page's few colors


def test_search_data_finds_the_seed_of_a_policy_rooted_tree(tmp_path):
    from wfopt.report import search_data

    lines = [  # seed-rooted; policy-rooted with the seed a child; the policy wrote the seed
        {"problem_id": "a", "rewards": [0.5, 1.0], "sources": ["seed", "edit:add_review"]},
        {"problem_id": "b", "rewards": [1.0, 0.0], "sources": ["policy_sample", "seed"]},
        {"problem_id": "c", "rewards": [0.5, 0.0], "sources": ["policy_sample", "edit:x"]},
    ]
    (tmp_path / "trajectories.jsonl").write_text("".join(json.dumps(t) + "\n" for t in lines))
    seeds = {p["problem_id"]: p["seed"] for p in search_data(tmp_path)["problems"]}
    assert seeds == {"a": 0.5, "b": 0.0, "c": 0.5}
