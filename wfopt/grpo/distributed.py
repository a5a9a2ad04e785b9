"""Multi-process GRPO training through HF `accelerate` (`hardware.distributed`).

    accelerate launch --config_file conf/accelerate/ddp.yaml -m wfopt.cli train \
        hardware=multi_gpu hydra.run.dir=outputs/grpo-ddp trajectories=T.jsonl

`accelerate launch` starts one process per device and sets the process-group environment
(`RANK`, `WORLD_SIZE`, `MASTER_ADDR`, ...); the accelerate config file picks DDP, FSDP or
DeepSpeed. `hardware.distributed` must name the same mode (`ddp`, `fsdp`, `deepspeed`): wfopt
checks that the two agree, and refuses to run several processes with `distributed=no` (each
would train alone and write its own checkpoints). What the trainer does with the processes
(global batches, disjoint shards, global normalizers) is in `wfopt.grpo.trainer`; see also
docs/distributed.md.
"""

from __future__ import annotations

import logging
import os
from typing import Any

log = logging.getLogger(__name__)


def launched_processes() -> int:
    """How many processes the launcher (accelerate launch, torchrun, mpirun) started."""
    for key in ("WORLD_SIZE", "OMPI_COMM_WORLD_SIZE", "PMI_SIZE"):
        if os.environ.get(key):
            return int(os.environ[key])
    return 1


def make_accelerator(hardware: Any) -> Any | None:
    """The `accelerate.Accelerator` for `hardware.distributed` (None for `no`).

    Raises ValueError when several processes were launched with `distributed=no`, or when the
    launcher's mode (from its accelerate config) is another one. (The schema's `Distributed`
    choice already rejects unknown modes.)
    """
    mode = hardware.distributed
    processes = launched_processes()
    if mode == "no":
        if processes > 1:
            raise ValueError(
                f"launched as {processes} processes but hardware.distributed=no: each would "
                "train alone; pass hardware.distributed=ddp (or fsdp/deepspeed, as in the "
                "accelerate config)"
            )
        return None

    from accelerate import Accelerator
    from accelerate.utils import DistributedType

    device = hardware.device
    cpu = device == "cpu" or (device == "auto" and not _cuda_available())
    accelerator = Accelerator(cpu=cpu)
    kind = accelerator.distributed_type
    expected = {"fsdp": DistributedType.FSDP, "deepspeed": DistributedType.DEEPSPEED}.get(mode)
    if expected is None:  # ddp: plain data parallel on any device type, or a single process
        agrees = kind == DistributedType.NO or str(kind.value).startswith("MULTI_")
    else:
        agrees = kind == expected
    if not agrees:
        raise ValueError(
            f"hardware.distributed={mode} but accelerate is set up for {kind.value}; launch "
            f"with `accelerate launch --config_file conf/accelerate/{mode}.yaml ...`, or make "
            "hardware.distributed match the accelerate config file"
        )
    if accelerator.num_processes == 1:
        log.warning(
            "hardware.distributed=%s on a single process: start it with `accelerate launch "
            "--config_file conf/accelerate/%s.yaml -m wfopt.cli train ...` to use more",
            mode,
            mode,
        )
    elif hardware.num_processes != accelerator.num_processes and accelerator.is_main_process:
        log.warning(
            "hardware.num_processes=%d but %d processes were launched; using %d",
            hardware.num_processes,
            accelerator.num_processes,
            accelerator.num_processes,
        )
    return accelerator


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()
