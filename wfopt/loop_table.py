"""The loop's tables on the console (rich, imported when used): the held-out results with
their paired comparisons (`print_results`) and the feedback comparison (`print_feedback`)."""

from __future__ import annotations

from typing import Any


def _paired_cell(comparison: dict[str, Any] | None) -> str:
    if not comparison:
        return "-"
    low, high = comparison["ci95"]
    p = (
        comparison["p_mcnemar"]
        if comparison["p_mcnemar"] is not None
        else comparison["p_bootstrap"]
    )
    return f"{comparison['diff']:+.2f} [{low:+.2f}, {high:+.2f}] p={p:.3f}"


def print_results(rows: list[dict[str, Any]], title: str) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    columns = ("", "split", "valid rate (95% CI)", "accuracy (95% CI)", "answer in code")
    columns = (*columns, "mean tokens", "n")
    for column in (*columns, "vs untrained", "vs best baseline"):
        table.add_column(column, justify="right")
    for row in rows:
        valid = "-"
        if row["valid_rate"] is not None:
            low, high = row["valid_rate_ci95"]
            valid = f"{row['valid_rate']:.2f} [{low:.2f}, {high:.2f}]"
            first = row.get("first_valid_rate")
            if first is not None and first != row["valid_rate"]:
                valid += f" (first try {first:.2f})"
        low, high = row["accuracy_ci95"]
        table.add_row(
            row["label"],
            row.get("split", "-"),
            valid,
            f"{row['accuracy']:.2f} [{low:.2f}, {high:.2f}]",
            "-" if row.get("answer_in_code_rate") is None else f"{row['answer_in_code_rate']:.2f}",
            f"{row['mean_tokens']:.0f}",
            str(row["n"]),
            _paired_cell(row.get("vs_untrained")),
            _paired_cell(row.get("vs_best_baseline")),
        )
    Console().print(table)
    Console().print(
        "paired columns: test accuracy difference [95% paired-bootstrap CI], McNemar's exact p "
        "(bootstrap p when scores are not 0/1); the episode is selected on validation; "
        "answer in code: share of valid policy workflows whose code spells the answer; "
        "first try: valid as first written, before loop.eval_invalid_retries"
    )


def print_feedback(arms: dict[str, dict[str, Any]]) -> None:
    """The feedback comparison (`loop.feedback_problems`) as a table."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title="search on unseen train problems, by the policy proposing")
    for column in ("policy", "trees", "solved", "mean best reward", "evals to first solve"):
        table.add_column(column, justify="left" if column == "policy" else "right")
    for label, arm in arms.items():
        first = arm["evaluations_to_first_solve"]
        table.add_row(
            label,
            str(arm["problems"]),
            f"{arm['solved_fraction']:.3f}",
            f"{arm['best_reward_mean']:.3f}",
            "-" if first is None else f"{first:.2f}",
        )
    Console().print(table)
