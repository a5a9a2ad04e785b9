"""Reading records from JSONL files (plain or .gz) and the HF hub, with errors that say where.

A record parser is `parse(record, where, index) -> Problem`; `where` ("FILE, line N") is what
its DatasetError messages start with, so a bad field is reported with its file and line.
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from wfopt.datasets.base import DatasetError, Problem

RecordParser = Callable[[dict[str, Any], str, int], Problem]


def read_jsonl(path: str | Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """(1-based line number, object) for each non-blank line."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise DatasetError(f"{path}: no such file")
    opener: Any = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rt", encoding="utf-8") as f:
            for number, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as err:
                    raise DatasetError(
                        f"{path}, line {number}: invalid JSON ({err.msg}, column {err.colno})"
                    ) from None
                if not isinstance(record, dict):
                    raise DatasetError(f"{path}, line {number}: expected a JSON object")
                yield number, record
    except (OSError, UnicodeDecodeError, EOFError) as err:
        raise DatasetError(f"{path}: cannot read ({err})") from None


def require(record: dict[str, Any], name: str, where: str, kind: type | None = str) -> Any:
    """`record[name]`, or a DatasetError naming `where` and the field."""
    if name not in record or record[name] is None:
        raise DatasetError(f"{where}: missing field {name!r}")
    value = record[name]
    if kind is str and isinstance(value, (int, float)) and not isinstance(value, bool):
        value = str(value)
    if kind is not None and not isinstance(value, kind):
        raise DatasetError(f"{where}: field {name!r} must be a {kind.__name__}")
    return value


def load_file(path: str | Path, parse: RecordParser) -> list[Problem]:
    """Every record of a JSONL file parsed into a Problem."""
    path = Path(path).expanduser()
    return [
        parse(record, f"{path}, line {number}", index)
        for index, (number, record) in enumerate(read_jsonl(path))
    ]


def find_split_files(directory: Path) -> dict[str, Path]:
    """{train, test[, validation]} files of a dataset directory (.jsonl or .jsonl.gz)."""
    found: dict[str, Path] = {}
    for split in ("train", "validation", "test"):
        for suffix in (".jsonl", ".jsonl.gz"):
            if (directory / f"{split}{suffix}").is_file():
                found[split] = directory / f"{split}{suffix}"
                break
    if "test" not in found or "train" not in found:
        raise DatasetError(
            f"{directory}: a dataset directory needs train.jsonl and test.jsonl "
            f"(found: {', '.join(sorted(found)) or 'neither'}); or point dataset.path at one file"
        )
    return found


def load_hf(name: str, config: str | None, parse: RecordParser) -> dict[str, list[Problem]]:
    """Problems per split of an HF hub dataset. `datasets` is optional, hence the lazy import."""
    try:
        import datasets  # type: ignore[import-not-found]
    except ImportError:
        raise DatasetError(
            f"dataset.hf_name={name} needs the `datasets` package (pip install datasets) and "
            "network or a local HF cache; or download the data and pass dataset.path=FILE_OR_DIR"
        ) from None
    try:
        loaded = datasets.load_dataset(name, config)
    except Exception as err:  # network, missing config, ...: say what to do instead
        raise DatasetError(
            f"dataset.hf_name={name} (hf_config={config}) could not be loaded: {err}; "
            "check the name/config, or pass a local file with dataset.path=..."
        ) from err
    return {
        split: [parse(dict(row), f"{name}[{split}] row {i + 1}", i) for i, row in enumerate(rows)]
        for split, rows in loaded.items()
    }
