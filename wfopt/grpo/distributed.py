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

FSDP and DeepSpeed split parameters and optimizer state across the processes (`is_sharded`).
A checkpoint holds them whole, so that a run can resume on another number of processes: the
policy's weights gathered to the main process (`gather_state_dict`) and, under FSDP, the
optimizer state keyed by parameter name (`full_optimizer_state`, `load_full_optimizer_state`);
DeepSpeed runs save no optimizer state. DeepSpeed's "auto" batch settings are filled from the
GRPO config (`fill_deepspeed_config`).
"""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from torch import Tensor, nn

log = logging.getLogger(__name__)
# what `full_optimizer_state` saves, and how `is_full_optimizer_state` knows it
_BY_NAME = "by_name"


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


def is_sharded(accelerator: Any) -> bool:
    """Whether `accelerator` splits parameters and optimizer state across the processes
    (FSDP, DeepSpeed): saving them is then a collective that gathers them."""
    from accelerate.utils import DistributedType

    return accelerator.distributed_type in (DistributedType.FSDP, DistributedType.DEEPSPEED)


def fill_deepspeed_config(accelerator: Any, micro_batch_size: int, max_grad_norm: Any) -> None:
    """DeepSpeed needs a micro-batch size up front; "auto" entries get the trainer's values
    (gradient accumulation stays 1: the trainer marks the step boundary itself). Without
    DeepSpeed nothing happens."""
    plugin = getattr(accelerator.state, "deepspeed_plugin", None)
    if plugin is None:
        return
    max_norm = max_grad_norm if max_grad_norm else 0.0
    values = {
        "train_micro_batch_size_per_gpu": micro_batch_size,
        "gradient_accumulation_steps": 1,
        "gradient_clipping": max(0.0, float(max_norm)),
    }
    config = plugin.deepspeed_config
    for key, value in values.items():
        if config.get(key, "auto") == "auto":
            config[key] = value


def gather_state_dict(
    accelerator: Any, prepared: nn.Module, model: nn.Module, prefix: str
) -> dict[str, Tensor]:
    """The full state dict of `model`, the submodule `prefix` of the sharded module `prepared`,
    for saving: a collective, every process must call it (the tensors are complete on the main
    process). A tied weight (e.g. lm_head = embeddings) is kept once, under its first name."""
    state = accelerator.get_state_dict(prepared)
    first: dict[int, str] = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        first.setdefault(id(param), name)
    keep = set(first.values()) | {name for name, _ in model.named_buffers()}
    return {
        k[len(prefix) :]: v
        for k, v in state.items()
        if k.startswith(prefix) and (k[len(prefix) :] in keep)
    }


def full_optimizer_state(accelerator: Any, prepared: nn.Module, optimizer: Any) -> Any:
    """A sharded run's optimizer state, to save: under FSDP the full state gathered to the main
    process, keyed by parameter name (a collective); under DeepSpeed None (not saved)."""
    from accelerate.utils import DistributedType

    if accelerator.distributed_type != DistributedType.FSDP:
        return None
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        get_optimizer_state_dict,
    )

    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    state = get_optimizer_state_dict(prepared, optimizer, options=options)
    return {_BY_NAME: state}


def is_full_optimizer_state(saved: Any) -> bool:
    """Whether a checkpoint's optimizer state was saved by an FSDP run (`full_optimizer_state`)."""
    return isinstance(saved, dict) and _BY_NAME in saved


def load_full_optimizer_state(prepared: nn.Module, optimizer: Any, saved: dict[str, Any]) -> None:
    """An FSDP run's saved optimizer state (`full_optimizer_state`) into `optimizer`, sharded
    over this run's processes."""
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        set_optimizer_state_dict,
    )

    set_optimizer_state_dict(
        prepared,
        optimizer,
        optim_state_dict=saved[_BY_NAME],
        options=StateDictOptions(full_state_dict=True),
    )
