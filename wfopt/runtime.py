"""Process-wide setup shared by every subcommand: logging, seeds, torch threads, a warning
for each configured knob that cannot act in this command, and the run-directory writes every
command makes (checked up front, atomic).

Torch threads: jobs that share cores must not each run a pool of all of them (two such
`wfopt evaluate` runs on 2 cores took 4x as long as alone: idle OpenMP threads spin while
the other job holds the cores). `torch_threads` gives each job its share; see README, Sweeps.
"""

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
    set_torch_threads(cfg.hardware.get("num_threads"))
    warn_inert_knobs(cfg, _command())


# -------------------------------------------------------------------- threads per job


def torch_threads(cpus: int, jobs: int, explicit: int | None, env: str | None) -> tuple[int, str]:
    """(intra-op threads for one job, why): `explicit` (hardware.num_threads) if set; in a
    sweep of `jobs` > 1 at once, this process's `cpus` shared by them; else OMP_NUM_THREADS
    (`env`: whoever started the process chose, e.g. accelerate or `wfopt loop`'s training);
    else all `cpus`. At least 1: a pool bigger than its share stalls at every OpenMP barrier
    while the other jobs hold the cores (several-fold slower)."""
    if explicit:
        return int(explicit), "hardware.num_threads"
    if jobs > 1:
        return max(1, cpus // jobs), f"{cpus} CPU(s) / {jobs} sweep jobs at once"
    if env and env.strip().isdigit() and int(env) > 0:
        return int(env), "OMP_NUM_THREADS"
    return max(1, cpus), f"{cpus} CPU(s), one job"


def joblib_workers(n_jobs: int | None, cpus: int) -> int:
    """How many processes joblib runs for `n_jobs` (-1: one per CPU, -2: all but one, ...)."""
    if not n_jobs:
        return 1
    return n_jobs if n_jobs > 0 else max(1, cpus + 1 + n_jobs)


def concurrent_jobs(cpus: int) -> int:
    """wfopt jobs this one shares its cores with, itself included: a Hydra joblib multirun's
    worker count; 1 otherwise (a single run, the basic launcher's jobs one after another,
    SLURM's jobs on their own CPUs)."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized():
        return 1
    hydra_cfg = HydraConfig.get()
    launcher = hydra_cfg.get("launcher") or {}
    if hydra_cfg.mode != RunMode.MULTIRUN or "joblib" not in str(launcher.get("_target_", "")):
        return 1
    return joblib_workers(launcher.get("n_jobs", -1), cpus)


def passive_openmp() -> None:
    """OMP_WAIT_POLICY=PASSIVE unless the environment chose (ACTIVE opts out): OpenMP threads
    waiting at a barrier sleep instead of spinning, so a job whose cores are also busy with
    other processes is not stalled by its own spinning threads. Measured on 2 shared cores
    (load ~4): two `wfopt evaluate workflow=cot dataset.limit=4` jobs one after the other,
    2 threads each, took 424 s spinning and 51 s passive. libgomp reads it once, when torch
    loads: the CLI calls this before anything imports torch (and child processes inherit)."""
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def set_torch_threads(explicit: int | None) -> int:
    """Size torch's intra-op pool for this job (torch_threads) and log it; the count."""
    import torch

    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    cpus = cpus or 1
    env = os.environ.get("OMP_NUM_THREADS")
    threads, why = torch_threads(cpus, concurrent_jobs(cpus), explicit, env)
    torch.set_num_threads(threads)
    policy = os.environ.get("OMP_WAIT_POLICY", "default")
    log.info(
        "torch threads: %d (%s; hardware.num_threads=N chooses), OMP_WAIT_POLICY %s",
        threads,
        why,
        policy,
    )
    return threads


def threads_per_process(processes: int) -> int:
    """This job's threads split over `processes` children that use its cores while it waits."""
    import torch

    return max(1, torch.get_num_threads() // max(1, processes))


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
