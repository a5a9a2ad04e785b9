"""`wfopt report RUN_DIR`: PNG figures and one self-contained HTML page for a run directory.

Works on a loop, train, search (problem or dataset scope) or evaluate run, and on a multirun
sweep directory (evaluate sweeps get accuracy against tokens with the Pareto front; other
sweeps a report per job). Everything is written into the run directory:

    report.html          the page: figures (inlined), results table, config, best workflows
    report_*.png         one file per figure
    report_data.json     for each figure, the values matplotlib actually drew (read back from
                         its artists), so a test or a reader can check them against the run

Run files are read defensively: unknown keys are ignored, missing files skip their figure.
Where each plotted value comes from is in one place, `SOURCES` and the `*_data` functions
right below it; adapt those when a command's output files change.
"""

from __future__ import annotations

import base64
import html
import json
import logging
import math
from collections import defaultdict
from pathlib import Path
from typing import Any

from wfopt.loop_state import STATE_FILE
from wfopt.trajectory import TRAJECTORIES

log = logging.getLogger(__name__)

# -- where plotted values come from ---------------------------------------------------------
#
# loop      results.json (else state.json["results"]): one row per held-out evaluation:
#           label, episode (-1 baseline workflow, 0 untrained policy, e >= 1 after episode e),
#           accuracy, accuracy_ci95 [low, high], valid_rate, valid_rate_ci95, operator_use
#           {op: share of valid workflows}, mean_tokens, n. Rows with a "split" other than the
#           first policy row's are ignored in the per-episode curves (e.g. a final test row).
# train     metrics.jsonl records holding "step" and any TRAIN_KEYS (loop and train runs).
# evaluate  summary.json: accuracy, accuracy_ci95, mean_tokens, cost_usd, errors, n, workflow.
# sweep     <job>/summary.json of every job directory of the sweep.
# search    trajectories.jsonl: per problem, rewards[i] and sources[i] ("seed", "policy",
#           "policy_sample", "edit:<kind>", "invalid_sample"); workflow_codes[i].
#           Dataset scope: tree.json nodes (score) and best_workflow.py.
SOURCES = {
    "loop": ("results.json", STATE_FILE),
    "train": ("metrics.jsonl",),
    "evaluate": ("summary.json", "results.jsonl"),
    "search": (TRAJECTORIES, "tree.json", "best_workflow.py"),
}
TRAIN_KEYS = (
    "train/pg_loss",
    "train/entropy",
    "train/reward_mean",
    "train/frac_reward_zero_std",
    "train/kl",
    "train/clip_ratio",
)
BEST_WORKFLOWS = 5  # workflows shown as code on the page


class ReportError(RuntimeError):
    """The directory is not a run wfopt can report on; the message says what was expected."""


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        log.warning("report: skipping %s (%s)", path, err)
        return None


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Records of a JSONL file; a torn or corrupt line (a run killed mid-write) is skipped."""
    records = []
    if not path.is_file():
        return records
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict):
            records.append(record)
    return records


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return None if math.isnan(value) else float(value)


def loop_rows(run_dir: Path) -> list[dict[str, Any]]:
    rows = _read_json(run_dir / "results.json") if (run_dir / "results.json").is_file() else None
    if rows is None and (run_dir / STATE_FILE).is_file():
        rows = (_read_json(run_dir / STATE_FILE) or {}).get("results")
    return [r for r in rows or [] if isinstance(r, dict) and "accuracy" in r]


def loop_data(run_dir: Path) -> dict[str, Any]:
    """What the loop figures plot: per-episode policy rows, reference lines, operator use."""
    rows = loop_rows(run_dir)
    policy = [r for r in rows if isinstance(r.get("episode"), int) and r["episode"] >= 0]
    split = policy[0].get("split") if policy else None
    policy = [r for r in policy if r.get("split") == split]
    seen: dict[int, dict[str, Any]] = {}
    for row in policy:  # a resumed run may repeat an episode: its last row counts
        seen[row["episode"]] = row
    policy = [seen[e] for e in sorted(seen)]
    # horizontal lines: the baselines, and every row of another split (the final test rows),
    # each labelled with its split so a test number is never read as a validation one
    references = [
        {"label": _split_label(r), "accuracy": r["accuracy"]}
        for r in rows
        if isinstance(r.get("episode"), int)
        and (r["episode"] < 0 or (split is not None and r.get("split") != split))
    ]
    untrained = next((r for r in policy if r["episode"] == 0), None)
    if untrained is not None:
        references.append({"label": _split_label(untrained), "accuracy": untrained["accuracy"]})
    return {"rows": rows, "policy": policy, "references": references}


def _split_label(row: dict[str, Any]) -> str:
    label = row.get("label", "baseline")
    return f"{label} ({row['split']})" if row.get("split") else label


def train_data(run_dir: Path) -> dict[str, tuple[list[float], list[float]]]:
    """For each TRAIN_KEYS key logged: (steps, values)."""
    series: dict[str, tuple[list[float], list[float]]] = {}
    for record in _read_jsonl(run_dir / "metrics.jsonl"):
        step = _number(record.get("step"))
        if step is None:
            continue
        for key in TRAIN_KEYS:
            value = _number(record.get(key))
            if value is not None:
                steps, values = series.setdefault(key, ([], []))
                steps.append(step)
                values.append(value)
    return series


def sweep_jobs(sweep_dir: Path) -> list[tuple[Path, dict[str, Any]]]:
    """(job dir, summary.json) of each evaluate job of a sweep, in job order."""
    jobs = []
    for job in sorted(_job_dirs(sweep_dir), key=lambda p: (len(p.name), p.name)):
        summary = _read_json(job / "summary.json") if (job / "summary.json").is_file() else None
        if isinstance(summary, dict) and "accuracy" in summary:
            jobs.append((job, summary))
    return jobs


def _job_label(job: Path, summary: dict[str, Any]) -> str:
    overrides = job / ".hydra" / "overrides.yaml"
    if overrides.is_file():
        import yaml

        try:
            items = yaml.safe_load(overrides.read_text()) or []
        except yaml.YAMLError:
            items = []
        # the overrides that differ between jobs name a job best; the workflow if swept
        for item in items:
            if str(item).startswith("workflow="):
                return str(item).split("=", 1)[1]
    return str(summary.get("workflow") or job.name)


def search_data(run_dir: Path) -> dict[str, Any]:
    """Per problem the seed's and the tree's best reward; all rewards grouped by source."""
    problems, by_source = [], defaultdict(list)
    for t in _read_jsonl(run_dir / TRAJECTORIES):
        rewards = [_number(r) for r in t.get("rewards") or []]
        sources = list(t.get("sources") or ["?"] * len(rewards))
        if not rewards or None in rewards:
            continue
        seed = rewards[sources.index("seed")] if "seed" in sources else None
        if seed is None and sources[0] == "policy_sample":  # mcts.policy_root: the policy
            seed = rewards[0]  # wrote the seed, so its workflow is the root (row 0)
        problems.append(
            {"problem_id": str(t.get("problem_id")), "seed": seed, "best": max(rewards)}
        )
        for source, reward in zip(sources, rewards, strict=False):
            by_source[str(source)].append(reward)
    return {"problems": problems, "by_source": dict(sorted(by_source.items()))}


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point beats: fewer tokens (x) and higher accuracy (y)
    at once, or equal in one and better in the other. Sorted by x."""
    front = []
    for i, (x, y) in enumerate(points):
        dominated = any(
            (x2 <= x and y2 >= y) and (x2 < x or y2 > y)
            for j, (x2, y2) in enumerate(points)
            if j != i
        )
        if not dominated:
            front.append(i)
    return sorted(front, key=lambda i: points[i])


# -- figures ----------------------------------------------------------------------------------


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")  # headless: no display needed, ever
    import matplotlib.pyplot as plt

    return plt


def figure_data(fig: Any) -> dict[str, Any]:
    """The values drawn in `fig`, read back from matplotlib's artists, per axes title:
    lines (x, y), bands (fill_between: x, low, high), bars (x, height, bottom per label),
    errorbars (x, y, low, high)."""
    from matplotlib.collections import PolyCollection
    from matplotlib.container import ErrorbarContainer

    out: dict[str, Any] = {}
    for ax in fig.axes:
        lines = {}
        for line in ax.get_lines():
            label = line.get_label()
            if label.startswith("_"):
                continue  # matplotlib's own parts (error bar caps)
            lines[label] = {
                "x": [float(v) for v in line.get_xdata()],
                "y": [float(v) for v in line.get_ydata()],
            }
        bands = {}
        for coll in ax.collections:
            if isinstance(coll, PolyCollection) and coll.get_label().startswith("band:"):
                vertices = coll.get_paths()[0].vertices
                xs = sorted({float(x) for x, _ in vertices})
                bands[coll.get_label()[5:]] = {
                    "x": xs,
                    "low": [float(min(y for x, y in vertices if x == v)) for v in xs],
                    "high": [float(max(y for x, y in vertices if x == v)) for v in xs],
                }
        bars, errorbars = {}, {}
        for container in ax.containers:
            if isinstance(container, ErrorbarContainer):
                point, _, (segments, *_) = container.lines
                spans = [seg for seg in segments.get_segments()]
                errorbars[container.get_label()] = {
                    "x": [float(v) for v in point.get_xdata()],
                    "y": [float(v) for v in point.get_ydata()],
                    "low": [float(min(seg[:, 1])) for seg in spans],
                    "high": [float(max(seg[:, 1])) for seg in spans],
                }
                continue
            patches = getattr(container, "patches", None)
            if not patches:
                continue
            bars[container.get_label()] = {
                "x": [float(p.get_x() + p.get_width() / 2) for p in patches],
                "height": [float(p.get_height()) for p in patches],
                "bottom": [float(p.get_y()) for p in patches],
            }
        ticks = [t.get_text() for t in ax.get_xticklabels()]
        out[ax.get_title()] = {
            "lines": lines,
            "bands": bands,
            "bars": bars,
            "errorbars": errorbars,
            "xticklabels": ticks,
        }
    return out


def loop_figures(data: dict[str, Any]) -> dict[str, Any]:
    plt = _plt()
    figures = {}
    policy = data["policy"]
    if policy:
        fig, (acc_ax, valid_ax) = plt.subplots(1, 2, figsize=(11, 4))
        episodes = [r["episode"] for r in policy]
        for ax, key, title in (
            (acc_ax, "accuracy", "held-out accuracy"),
            (valid_ax, "valid_rate", "valid rate"),
        ):
            rows = [r for r in policy if _number(r.get(key)) is not None]
            xs = [r["episode"] for r in rows]
            ax.plot(xs, [r[key] for r in rows], "o-", label=f"policy {key}")
            ci = [(x, r.get(f"{key}_ci95")) for x, r in zip(xs, rows, strict=True)]
            ci = [(x, c) for x, c in ci if isinstance(c, list) and len(c) == 2]
            if ci:
                ax.fill_between(
                    [x for x, _ in ci],
                    [c[0] for _, c in ci],
                    [c[1] for _, c in ci],
                    alpha=0.2,
                    label=f"band:{key} 95% CI",
                )
            if key == "accuracy":
                for i, ref in enumerate(data["references"]):
                    ax.axhline(
                        ref["accuracy"], ls="--", color=f"C{i + 1}", label=f"ref:{ref['label']}"
                    )
            ax.set(title=title, xlabel="episode", ylim=(-0.02, 1.02), xticks=episodes)
            handles, labels = ax.get_legend_handles_labels()
            ax.legend(handles, [lab.split(":", 1)[-1] for lab in labels], fontsize=8)
        fig.tight_layout()
        figures["loop_heldout"] = fig

        ops = sorted({op for r in policy for op in (r.get("operator_use") or {})})
        if ops:
            fig, ax = plt.subplots(figsize=(7, 4))
            bottom = [0.0] * len(policy)
            for op in ops:
                shares = [float((r.get("operator_use") or {}).get(op, 0.0)) for r in policy]
                ax.bar(episodes, shares, bottom=bottom, label=op)
                bottom = [b + s for b, s in zip(bottom, shares, strict=True)]
            ax.set(
                title="operator use (share of valid workflows using it)",
                xlabel="episode",
                xticks=episodes,
            )
            ax.legend(fontsize=8)
            fig.tight_layout()
            figures["loop_operators"] = fig
    return figures


def train_figure(series: dict[str, tuple[list[float], list[float]]]) -> dict[str, Any]:
    if not series:
        return {}
    plt = _plt()
    keys = [k for k in TRAIN_KEYS if k in series]
    cols = 3
    rows = math.ceil(len(keys) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(12, 3.2 * rows), squeeze=False)
    for ax, key in zip(axes.flat, keys, strict=False):
        steps, values = series[key]
        ax.plot(steps, values, "o-", ms=3, label=key)
        ax.set(title=key, xlabel="step")
    for ax in list(axes.flat)[len(keys) :]:
        ax.remove()
    fig.tight_layout()
    return {"train_curves": fig}


def sweep_figure(jobs: list[tuple[str, dict[str, Any]]]) -> dict[str, Any]:
    """Accuracy [95% CI] against mean tokens (cost when every job has one), Pareto front."""
    if not jobs:
        return {}
    plt = _plt()
    use_cost = all(_number(s.get("cost_usd")) not in (None, 0.0) for _, s in jobs)
    x_key, x_label = ("cost_usd", "cost (USD)") if use_cost else ("mean_tokens", "mean tokens")
    points = [(float(s[x_key]), float(s["accuracy"])) for _, s in jobs]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for i, ((label, summary), (x, y)) in enumerate(zip(jobs, points, strict=True)):
        low, high = summary.get("accuracy_ci95") or (y, y)
        ax.errorbar(
            [x], [y], yerr=[[y - low], [high - y]], fmt="o", capsize=4, color=f"C{i}", label=label
        )
        ax.annotate(label, (x, y), textcoords="offset points", xytext=(6, 4), fontsize=8)
    front = pareto_front(points)
    ax.plot(
        [points[i][0] for i in front],
        [points[i][1] for i in front],
        "k--",
        lw=1,
        label="Pareto front",
    )
    ax.set(title=f"accuracy vs {x_label}", xlabel=x_label, ylabel="accuracy [95% CI]")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return {"sweep_pareto": fig}


def evaluate_figure(summary: dict[str, Any]) -> dict[str, Any]:
    """Outcomes of one evaluation: correct (score sum) and each error category."""
    plt = _plt()
    errors = {k: v for k, v in (summary.get("errors") or {}).items() if _number(v) is not None}
    n = int(summary.get("n") or 0)
    correct = float(summary.get("accuracy", 0.0)) * n
    labels = ["correct", *errors, "other wrong"]
    counts = [correct, *errors.values(), max(0.0, n - correct - sum(errors.values()))]
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.bar(labels, counts, label="problems", color="C0")
    low, high = summary.get("accuracy_ci95") or (0, 0)
    ax.set(
        title=f"outcomes (accuracy {summary.get('accuracy', 0):.3f} [{low:.3f}, {high:.3f}])",
        ylabel="problems",
    )
    fig.tight_layout()
    return {"evaluate_outcomes": fig}


def search_figures(data: dict[str, Any]) -> dict[str, Any]:
    plt = _plt()
    figures = {}
    problems = data["problems"]
    if problems:
        fig, ax = plt.subplots(figsize=(max(6, 0.5 * len(problems)), 4))
        xs = list(range(len(problems)))
        seeds = [p["seed"] if p["seed"] is not None else 0.0 for p in problems]
        ax.bar([x - 0.2 for x in xs], seeds, width=0.4, label="seed")
        ax.bar([x + 0.2 for x in xs], [p["best"] for p in problems], width=0.4, label="tree best")
        ax.set_xticks(xs, [p["problem_id"] for p in problems], rotation=60, fontsize=7)
        ax.set(title="best reward per problem", ylabel="reward")
        ax.legend(fontsize=8)
        fig.tight_layout()
        figures["search_best"] = fig
    if data["by_source"]:
        import random

        fig, ax = plt.subplots(figsize=(max(6, 1.1 * len(data["by_source"])), 4))
        jitter = random.Random(0)
        for i, (source, rewards) in enumerate(data["by_source"].items()):
            xs = [i + jitter.uniform(-0.15, 0.15) for _ in rewards]
            ax.plot(xs, rewards, "o", alpha=0.6, label=source)
            mean = sum(rewards) / len(rewards)
            ax.plot([i - 0.3, i + 0.3], [mean, mean], "k-", lw=2, label=f"mean:{source}")
        ax.set_xticks(range(len(data["by_source"])), list(data["by_source"]), rotation=30)
        ax.set(title="rewards by source (bar: mean)", ylabel="reward")
        fig.tight_layout()
        figures["search_sources"] = fig
    return figures


# -- the page ---------------------------------------------------------------------------------


def _table(columns: list[str], rows: list[list[Any]]) -> str:
    def cell(value: Any) -> str:
        if isinstance(value, float):
            return f"{value:.3f}"
        if isinstance(value, (list, tuple)) and all(isinstance(v, float) for v in value):
            return "[" + ", ".join(f"{v:.3f}" for v in value) + "]"
        if isinstance(value, dict):
            return html.escape(", ".join(f"{k}={cell(v)}" for k, v in value.items()))
        return html.escape("-" if value is None else str(value))

    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = "".join("<tr>" + "".join(f"<td>{cell(v)}</td>" for v in r) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def results_table(kind: str, run_dir: Path) -> tuple[list[str], list[list[Any]]]:
    """The run's results as (columns, rows): on the page and as a W&B Table."""
    if kind == "loop":
        columns = ["label", "episode", "n", "valid_rate", "valid_rate_ci95", "accuracy",
                   "accuracy_ci95", "mean_tokens", "cost_usd"]  # fmt: skip
        return columns, [[r.get(c) for c in columns] for r in loop_rows(run_dir)]
    if kind == "evaluate":
        summary = _read_json(run_dir / "summary.json") or {}
        columns = ["workflow", "dataset", "split", "n", "accuracy", "accuracy_ci95",
                   "valid_rate", "mean_tokens", "cost_usd", "errors"]  # fmt: skip
        return columns, [[summary.get(c) for c in columns]]
    if kind == "sweep":
        columns = ["job", "workflow", "n", "accuracy", "accuracy_ci95", "mean_tokens", "cost_usd"]
        return columns, [
            [job.name, _job_label(job, s), *[s.get(c) for c in columns[2:]]]
            for job, s in sweep_jobs(run_dir)
        ]
    if kind == "search":
        summary = _read_json(run_dir / "search_summary.json") or {}
        return ["metric", "value"], [[k, v] for k, v in summary.items() if _number(v) is not None]
    series = train_data(run_dir)
    return ["metric", "last", "steps"], [[k, v[1][-1], len(v[0])] for k, v in series.items()]


def best_workflows(kind: str, run_dir: Path) -> list[tuple[str, str]]:
    """(caption, code) of the best workflows the run found or ran."""
    if kind == "search" and (run_dir / "best_workflow.py").is_file():
        return [("best workflow (dataset scope)", (run_dir / "best_workflow.py").read_text())]
    files = []
    if kind == "search":
        files = [run_dir / TRAJECTORIES]
    elif kind == "loop":
        files = sorted((run_dir / "episodes").glob(f"*/{TRAJECTORIES}"))
    if files:
        best: dict[str, tuple[float, str, str]] = {}
        for file in files:
            for t in _read_jsonl(file):
                codes, rewards = t.get("workflow_codes") or [], t.get("rewards") or []
                for code, reward in zip(codes, rewards, strict=False):
                    reward = _number(reward)
                    if reward is None or not isinstance(code, str):
                        continue
                    where = f"{file.parent.name}/{t.get('problem_id')}"
                    if code not in best or reward > best[code][0]:
                        best[code] = (reward, where, code)
        ranked = sorted(best.values(), key=lambda b: -b[0])[:BEST_WORKFLOWS]
        return [(f"reward {r:.2f} on {where}", code) for r, where, code in ranked]
    if kind == "evaluate":
        summary = _read_json(run_dir / "summary.json") or {}
        label = str(summary.get("workflow", ""))
        path = Path(label)
        if path.is_file():
            return [(label, path.read_text())]
        try:
            from wfopt.baselines import load_baseline

            return [(f"baseline {label}", load_baseline(label))]
        except KeyError:
            pass
        counts: dict[str, int] = defaultdict(int)  # a policy's evaluation: its most common
        for r in _read_jsonl(run_dir / "results.jsonl"):
            if r.get("workflow_source"):
                counts[r["workflow_source"]] += 1
        ranked = sorted(counts.items(), key=lambda kv: -kv[1])[:BEST_WORKFLOWS]
        return [(f"written {n}x by the policy", code) for code, n in ranked]
    return []


PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>{title}</title>
<style>
body {{ font-family: sans-serif; margin: 2em auto; max-width: 1200px; color: #222; }}
img {{ max-width: 100%; border: 1px solid #ddd; margin: 0.5em 0; }}
table {{ border-collapse: collapse; font-size: 0.9em; }}
td, th {{ border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: right; }}
pre {{ background: #f6f6f6; padding: 0.8em; overflow-x: auto; font-size: 0.85em; }}
</style></head><body>
<h1>{title}</h1>
<p>{subtitle}</p>
<h2>Figures</h2>
{figures}
<h2>Results</h2>
{table}
<h2>Workflows</h2>
{workflows}
<h2>Config</h2>
<pre>{config}</pre>
</body></html>
"""


def run_kind(run_dir: Path) -> str:
    if (run_dir / STATE_FILE).is_file() or (run_dir / "results.json").is_file():
        return "loop"
    if (run_dir / "summary.json").is_file():
        return "evaluate"
    if any((run_dir / f).is_file() for f in (TRAJECTORIES, "tree.json")):
        return "search"
    if (run_dir / "multirun.yaml").is_file() or _job_dirs(run_dir):
        return "sweep"
    if (run_dir / "metrics.jsonl").is_file():
        return "train"
    raise ReportError(
        f"{run_dir}: not a wfopt run directory (expected one of state.json, summary.json, "
        f"{TRAJECTORIES}, tree.json, metrics.jsonl, or a sweep's job directories)"
    )


def _job_dirs(run_dir: Path) -> list[Path]:
    return [p for p in run_dir.iterdir() if p.is_dir() and (p / ".hydra").is_dir()]


def build_figures(kind: str, run_dir: Path) -> dict[str, Any]:
    if kind == "loop":
        return {**loop_figures(loop_data(run_dir)), **train_figure(train_data(run_dir))}
    if kind == "train":
        return train_figure(train_data(run_dir))
    if kind == "evaluate":
        summary = _read_json(run_dir / "summary.json")
        return evaluate_figure(summary) if isinstance(summary, dict) else {}
    if kind == "search":
        return search_figures(search_data(run_dir))
    if kind == "sweep":
        return sweep_figure([(_job_label(j, s), s) for j, s in sweep_jobs(run_dir)])
    return {}


def write_report(run_dir: str | Path, tracker: Any = None) -> Path:
    """Write figures, `report_data.json` and `report.html` into `run_dir`; return the page.

    `tracker`: a live `wfopt.tracking.Tracker`; with W&B enabled the figures go to its run as
    images and the results as a `wandb.Table`."""
    run_dir = Path(run_dir).expanduser().resolve()
    if not run_dir.is_dir():
        raise ReportError(f"{run_dir}: no such directory")
    kind = run_kind(run_dir)
    if kind == "sweep":
        for job in _job_dirs(run_dir):  # each job its own page too (linked below)
            if (job / "report.html").is_file():
                continue  # written by the job itself
            try:
                write_report(job)
            except ReportError as err:
                log.warning("report: %s", err)
    plt = _plt()
    figures = build_figures(kind, run_dir)
    data, images = {}, {}
    for name, fig in figures.items():
        path = run_dir / f"report_{name}.png"
        data[path.name] = figure_data(fig)
        fig.savefig(path, dpi=110)
        plt.close(fig)
        images[name] = path
    (run_dir / "report_data.json").write_text(json.dumps(data, indent=1))

    columns, rows = results_table(kind, run_dir)
    blocks = [
        f'<h3>{html.escape(name)}</h3><img alt="{html.escape(name)}" src="data:image/png;base64,'
        f'{base64.b64encode(path.read_bytes()).decode()}">'
        for name, path in images.items()
    ] or ["<p>no figures: the run has no data to plot yet</p>"]
    workflows = [
        f"<h4>{html.escape(caption)}</h4><pre>{html.escape(code)}</pre>"
        for caption, code in best_workflows(kind, run_dir)
    ]
    if kind == "sweep":
        workflows += [
            f'<p><a href="{j.name}/report.html">{html.escape(j.name)}/report.html</a></p>'
            for j in sorted(_job_dirs(run_dir))
            if (j / "report.html").is_file()
        ]
    config = run_dir / ".hydra" / "config.yaml"
    if kind == "sweep" and (run_dir / "multirun.yaml").is_file():
        config = run_dir / "multirun.yaml"
    page = PAGE.format(
        title=html.escape(f"wfopt {kind}: {run_dir.name}"),
        subtitle=html.escape(str(run_dir)),
        figures="\n".join(blocks),
        table=_table(columns, rows),
        workflows="\n".join(workflows) or "<p>none</p>",
        config=html.escape(config.read_text() if config.is_file() else "(no .hydra/config.yaml)"),
    )
    out = run_dir / "report.html"
    out.write_text(page, encoding="utf-8")
    if tracker is not None:
        tracker.log_report(images, columns, rows)
    return out


def report_at_end(run_dir: Path, cfg: Any, tracker: Any = None) -> None:
    """The hook `wfopt loop` and `wfopt evaluate` call last: a report unless `report=false`;
    a failing report is logged, never fails the finished run."""
    if not cfg.get("report", True):
        return
    try:
        log.info("report: %s", write_report(run_dir, tracker))
    except Exception as err:  # the run's results are already written; the page is extra
        log.warning("report: could not write the report of %s: %s", run_dir, err)


def _callback_base() -> type:
    from hydra.experimental.callback import Callback

    return Callback


class SweepReport(_callback_base()):  # type: ignore[misc]
    """Hydra callback (`hydra.callbacks` in conf/evaluate.yaml and conf/loop.yaml): once every
    job of a `-m` sweep is done, the sweep directory gets its own report."""

    def on_multirun_end(self, config: Any, **kwargs: Any) -> None:
        if not config.get("report", True):
            return
        try:
            log.info("report: %s", write_report(Path(config.hydra.sweep.dir)))
        except Exception as err:  # the jobs' results are written; the page is extra
            log.warning("report: could not write the sweep report: %s", err)
