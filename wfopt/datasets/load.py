"""`load_dataset(cfg)`: a DatasetConfig (or its DictConfig) → a SplitDataset."""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Any

from wfopt.datasets import arithmetic, humaneval, records
from wfopt.datasets.base import DatasetError
from wfopt.datasets.dataset import SCORERS, SplitDataset
from wfopt.datasets.jsonl import RecordParser, find_split_files, load_file, load_hf
from wfopt.datasets.splits import carve_validation, seeded_split

NAMES = ("arithmetic", "gsm8k", "math", "humaneval", "mbpp", "jsonl")
_FORMATS: dict[str, tuple[RecordParser, str]] = {  # name -> (record parser, its scorer)
    "gsm8k": (records.gsm8k_problem, "number"),
    "math": (records.math_problem, "math"),
    "mbpp": (records.mbpp_problem, "code"),
    "humaneval": (humaneval.humaneval_problem, "code"),
}
_HF_DEFAULT_CONFIG = {"gsm8k": "main"}


def _splits(cfg: Any, parse: RecordParser) -> dict[str, list]:
    """Problems per split from dataset.hf_name, a directory, or one file (see splits.py)."""
    if cfg.hf_name:
        config = cfg.hf_config or _HF_DEFAULT_CONFIG.get(cfg.name)
        found = load_hf(cfg.hf_name, config, parse)
        if "train" in found and "test" in found:
            return carve_validation(
                found["train"], found["test"], cfg.seed, cfg.val_fraction, found.get("validation")
            )
        everything = [p for problems in found.values() for p in problems]
        return seeded_split(everything, cfg.seed, cfg.val_fraction, cfg.test_fraction)
    if cfg.path is None and cfg.name == "humaneval":
        path = humaneval.data_file()
    elif cfg.path is None:
        raise DatasetError(
            f"dataset={cfg.name} needs dataset.path=FILE_OR_DIR (a JSONL file, or a directory "
            "with train.jsonl and test.jsonl) or dataset.hf_name=..."
        )
    else:
        path = Path(str(cfg.path)).expanduser()
    if path.is_dir():
        files = find_split_files(path)
        loaded = {split: load_file(file, parse) for split, file in files.items()}
        return carve_validation(
            loaded["train"], loaded["test"], cfg.seed, cfg.val_fraction, loaded.get("validation")
        )
    if not path.exists():
        raise DatasetError(f"{path}: no such file or directory (dataset.path)")
    return seeded_split(load_file(path, parse), cfg.seed, cfg.val_fraction, cfg.test_fraction)


def load_dataset(cfg: Any) -> SplitDataset:
    """Build the dataset named by `cfg.name`; a DatasetError says what is wrong and where."""
    name = cfg.name
    try:
        if name == "arithmetic":
            problems = arithmetic.generate(
                cfg.num_problems,
                cfg.seed,
                cfg.min_operands,
                cfg.max_operands,
                cfg.max_value,
                list(cfg.operations),
            )
            splits = seeded_split(problems, cfg.seed, cfg.val_fraction, cfg.test_fraction)
            scorer = "number"
        elif name in _FORMATS:
            parse, scorer = _FORMATS[name]
            splits = _splits(cfg, parse)
        elif name == "jsonl":
            if cfg.scorer not in SCORERS:
                raise DatasetError(
                    f"dataset.scorer={cfg.scorer!r}; choose from {', '.join(SCORERS)}"
                )
            scorer = cfg.scorer
            generic = partial(
                records.generic_problem,
                question_field=cfg.question_field,
                answer_field=cfg.answer_field,
                id_field=cfg.id_field,
                scorer=scorer,
            )
            splits = _splits(cfg, generic)
        else:
            raise DatasetError(f"unknown dataset {name!r}; choose from {', '.join(NAMES)}")
    except ValueError as err:
        if isinstance(err, DatasetError):
            raise
        raise DatasetError(str(err)) from err
    kind = "code" if scorer == "code" else "math"
    return SplitDataset(name, kind, splits, scorer, cfg.limit, float(cfg.score_timeout_s))
