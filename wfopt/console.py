"""Console output: progress bars and summary tables (rich, imported when used)."""

from __future__ import annotations

from typing import Any


def progress_bar(fields: str, show: bool, *, time_remaining: bool = False) -> Any:
    """A rich progress bar: description, bar, done/total, `fields` (a format over the task's
    fields), elapsed time, and (`time_remaining`) the estimated time left."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    columns: list[Any] = [
        "[progress.description]{task.description}",
        BarColumn(),
        MofNCompleteColumn(),
        fields,
        TimeElapsedColumn(),
    ]
    if time_remaining:
        columns.append(TimeRemainingColumn())
    return Progress(*columns, disable=not show)


def print_summary(title: str, summary: dict[str, Any]) -> None:
    """A `summarize` result as a one-row table on the console."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    for column in ("n", "accuracy (95% CI)", "errors", "mean tokens", "cost", "wall time"):
        table.add_column(column, justify="right")
    low, high = summary["accuracy_ci95"]
    errors = ", ".join(f"{k}={v}" for k, v in sorted(summary["errors"].items())) or "none"
    cost = "unknown" if summary["cost_usd"] is None else f"${summary['cost_usd']:.4f}"
    table.add_row(
        str(summary["n"]),
        f"{summary['accuracy']:.3f} [{low:.3f}, {high:.3f}]",
        errors,
        f"{summary['mean_tokens']:.0f}",
        cost,
        f"{summary['wall_time_s']:.1f}s",
    )
    Console().print(table)
