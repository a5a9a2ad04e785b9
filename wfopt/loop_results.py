"""The loop's results table as data, pure functions: one row per held-out evaluation
(`result_row`), per-problem scores (`problem_scores`), the episode to report, chosen on
validation (`select_episode`), the policy the next episode trains from (`build_on`), and the
paired comparisons on the test problems (`add_paired_comparisons`, `paired_metrics`). Printing
them is `wfopt.loop_table`'s."""

from __future__ import annotations

from typing import Any

from wfopt.stats import compare_paired


def result_row(label: str, split: str, episode: int, summary: dict[str, Any]) -> dict[str, Any]:
    return {
        "label": label,
        "split": split,
        "episode": episode,
        "n": summary["n"],
        "valid_rate": summary.get("valid_rate"),
        "valid_rate_ci95": summary.get("valid_rate_ci95"),
        "first_valid_rate": summary.get("first_valid_rate"),
        "accuracy": summary["accuracy"],
        "accuracy_ci95": summary["accuracy_ci95"],
        "mean_tokens": summary["mean_tokens"],
        "cost_usd": summary["cost_usd"],
        "operator_use": summary.get("operator_use"),
        "answer_in_code_rate": summary.get("answer_in_code_rate"),
        "wall_time_s": summary["wall_time_s"],
    }


def problem_scores(records: list[Any], problems: list[Any]) -> list[float]:
    """One score per problem, in `problems` order: the mean over that problem's records (the
    policy may write several workflows per problem)."""
    totals: dict[str, list[float]] = {str(p.id): [] for p in problems}
    for r in records:
        totals[str(r.problem_id)].append(r.score)
    return [sum(v) / len(v) if v else 0.0 for v in totals.values()]


def select_episode(rows: list[dict[str, Any]], rule: str, first: int = 1) -> int | None:
    """The episode to report on test, chosen on validation rows only: the highest validation
    accuracy (ties: the later episode), or the last one. None before any episode. `first=0`
    lets the untrained policy (episode 0) compete."""
    episodes = [r for r in rows if r["split"] == "validation" and r["episode"] >= first]
    if not episodes:
        return None
    if rule == "last":
        return max(r["episode"] for r in episodes)
    return max(episodes, key=lambda r: (r["accuracy"], r["episode"]))["episode"]


def build_on(rows: list[dict[str, Any]], checkpoints: dict[str, str], rule: str) -> str | None:
    """The checkpoint the next episode trains from (None: the untrained policy): the last
    episode's, or (`best_val`) the best on validation so far, the untrained policy included."""
    episode = select_episode(rows, rule, first=0)
    return checkpoints.get(str(episode)) if episode else None


def add_paired_comparisons(
    rows: list[dict[str, Any]], scores: dict[str, list[float]], baselines: list[str]
) -> None:
    """Give every test row of a policy `vs_untrained` and `vs_best_baseline`: the paired
    comparison (difference [95% CI], bootstrap and McNemar p) on the same test problems. The
    best baseline is the one with the highest test accuracy (the hardest reference)."""
    test = {r["label"]: r for r in rows if r["split"] == "test"}
    present = [f"baseline {b}" for b in baselines if f"baseline {b}" in test]
    best = max(present, key=lambda label: test[label]["accuracy"], default=None)
    for label, row in test.items():
        if label.startswith("baseline "):
            continue
        mine = scores[f"test/{label}"]
        if label != "untrained policy" and "test/untrained policy" in scores:
            row["vs_untrained"] = compare_paired(mine, scores["test/untrained policy"]).as_dict()
        if best is not None:
            row["vs_best_baseline"] = {
                "baseline": best,
                **compare_paired(mine, scores[f"test/{best}"]).as_dict(),
            }


def paired_metrics(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Summary metrics of the selected episode's paired comparisons (`test/paired/*`)."""
    out: dict[str, Any] = {}
    for row in rows:
        if row["split"] != "test" or not row["label"].endswith("(selected)"):
            continue
        for key in ("vs_untrained", "vs_best_baseline"):
            if key in row:
                c = row[key]
                out[f"test/paired/{key}/diff"] = c["diff"]
                out[f"test/paired/{key}/ci_low"], out[f"test/paired/{key}/ci_high"] = c["ci95"]
                out[f"test/paired/{key}/p_bootstrap"] = c["p_bootstrap"]
                if c["p_mcnemar"] is not None:
                    out[f"test/paired/{key}/p_mcnemar"] = c["p_mcnemar"]
    return out
