"""Process-wide setup shared by every subcommand: logging, seeds, torch threads, a warning
for each configured knob that cannot act in this command, and the run-directory writes every
command makes (checked up front, atomic)."""

from __future__ import annotations

import contextlib
import logging
import os
import random
from pathlib import Path

from omegaconf import DictConfig

from wfopt.errors import RunDirError

log = logging.getLogger(__name__)


def _command() -> str | None:
    """The running Hydra app's name (evaluate, search, train, loop); None outside Hydra."""
    from hydra.core.hydra_config import HydraConfig

    return HydraConfig.get().job.name if HydraConfig.initialized() else None


_warned: set[str] = set()


def warn_inert_knobs(cfg: DictConfig, command: str | None) -> list[str]:
    """Warn about settings that cannot act (config.inert_knobs), each once per run: processes
    this one starts (accelerate workers) see WFOPT_INERT_WARNED and stay quiet."""
    from wfopt.config import inert_knobs

    warned_by = os.environ.get("WFOPT_INERT_WARNED")
    if command is None or (warned_by and warned_by != str(os.getpid())):
        return []
    notes = [n for n in inert_knobs(cfg, command) if n not in _warned]
    for note in notes:
        log.warning("%s", note)
    _warned.update(notes)
    os.environ["WFOPT_INERT_WARNED"] = str(os.getpid())
    return notes


def setup_runtime(cfg: DictConfig) -> None:
    logging.getLogger().setLevel(cfg.get("log_level", "INFO"))
    for noisy in ("httpx", "urllib3", "transformers", "wandb"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    random.seed(cfg.seed)
    threads = cfg.hardware.get("num_threads")
    if threads:
        import torch

        torch.set_num_threads(int(threads))
    warn_inert_knobs(cfg, _command())


PROBE_BYTES = 1 << 20  # a run that cannot write 1 MiB up front would fail in a later phase


def check_writable(run_dir: Path) -> None:
    """Fail now, naming `run_dir`, if it cannot take a write (read-only, full, not a directory).

    Every command calls this before loading models or searching, so an unwritable run directory
    fails at the first write instead of deep inside a later phase.
    """
    probe = run_dir / ".wfopt-write-check"
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        with probe.open("wb") as f:
            f.write(b"\0" * PROBE_BYTES)
            f.flush()
            os.fsync(f.fileno())
    except OSError as err:
        raise run_dir_error(run_dir, err) from err
    finally:
        with contextlib.suppress(OSError):
            probe.unlink()


def write_atomic(path: Path, text: str) -> None:
    """Write `path` whole or not at all (a temp file renamed into place); RunDirError naming it."""
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with tmp.open("w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as err:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise run_dir_error(path, err) from err


def run_dir_error(path: Path, err: OSError) -> RunDirError:
    reason = err.strerror or str(err)
    return RunDirError(
        f"cannot write {path}: {reason}. Free space there, fix its permissions, or choose "
        "another run directory (hydra.run.dir=DIR)."
    )
