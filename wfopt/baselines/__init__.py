"""Named baseline workflows, written in the workflow language (one `.py` file each).

`workflow=<name>` selects one; `workflow.path=FILE` runs a user's file instead.
"""

from __future__ import annotations

from pathlib import Path

_DIR = Path(__file__).resolve().parent


def list_baselines() -> list[str]:
    return sorted(p.stem for p in _DIR.glob("*.py") if not p.stem.startswith("_"))


def load_baseline(name: str) -> str:
    """The source of baseline `name`; a clear error lists the known names."""
    path = _DIR / f"{name}.py"
    if name.startswith("_") or not path.is_file():
        raise KeyError(f"unknown workflow {name!r}; baselines: {', '.join(list_baselines())}")
    return path.read_text()
