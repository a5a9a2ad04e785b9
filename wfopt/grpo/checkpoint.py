"""Training checkpoints, written atomically: a temp dir renamed into place.

Layout of `<run_dir>/checkpoints/step-000042/`:

    model/              the LoRA adapter (PEFT) or the full weights, plus the tokenizer
    trainer_state.pt    optimizer, LR scheduler, RNG states, step, epoch and batch position
    state.json          the same position in readable form, and the LoRA flag

`<run_dir>/checkpoints/latest` names the newest one. A reader never sees a half-written
checkpoint: everything is written under `.tmp-*` and appears with one `os.replace`. A checkpoint
damaged anyway (copied in part, a bad disk) is a `CheckpointError` naming the file.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from wfopt.errors import CheckpointError

STATE_FILE = "trainer_state.pt"
LATEST = "latest"


def checkpoint_error(file: Path, err: BaseException) -> CheckpointError:
    """`file` of a checkpoint could not be read: which, why, and what to do."""
    return CheckpointError(
        f"{file} is unreadable ({type(err).__name__}: {str(err)[:300]}): the checkpoint is "
        f"truncated or corrupt. Use another checkpoint (a step-* directory next to it), or "
        f"train it again."
    )


def _make_serializable(model: nn.Module) -> None:
    """A GGUF-loaded model refuses `save_pretrained` although its weights are plain tensors:
    drop the (dequantized) quantizer marks first."""
    if getattr(model, "hf_quantizer", None) is not None:
        model.hf_quantizer = None
    config = getattr(model, "config", None)
    if config is not None and getattr(config, "quantization_config", None) is not None:
        del config.quantization_config


def save_policy(
    model: nn.Module,
    tokenizer: Any,
    directory: Path,
    state_dict: dict[str, torch.Tensor] | None = None,
) -> None:
    """Adapter (PEFT) or full weights + tokenizer into `directory` (a loadable model dir).

    `state_dict`: the weights to write instead of the model's own (gathered from a sharded
    model; PEFT keeps only the adapter entries of it)."""
    target = model.get_base_model() if hasattr(model, "get_base_model") else model
    _make_serializable(target)
    kwargs = {} if state_dict is None else {"state_dict": state_dict}
    model.save_pretrained(str(directory), safe_serialization=True, **kwargs)
    if tokenizer is not None:
        tokenizer.save_pretrained(str(directory))


def checkpoint_path(root: str | Path, step: int) -> Path:
    """Where `save_checkpoint` puts the checkpoint of optimizer step `step`."""
    return Path(root) / f"step-{step:06d}"


def save_checkpoint(
    root: str | Path,
    model: nn.Module,
    tokenizer: Any,
    trainer_state: dict[str, Any],
    extra: dict[str, Any] | None = None,
    state_dict: dict[str, torch.Tensor] | None = None,
) -> Path:
    """Write `root/step-NNNNNN` atomically and point `root/latest` at it; returns its path.
    `state_dict`: weights to save instead of the model's own (see `save_policy`)."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    step = int(trainer_state["step"])
    final = checkpoint_path(root, step)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-step-{step:06d}-", dir=root))
    try:
        save_policy(model, tokenizer, tmp / "model", state_dict)
        torch.save(trainer_state, tmp / STATE_FILE)
        summary = {
            "step": step,
            "epoch": trainer_state.get("epoch"),
            "batch_in_epoch": trainer_state.get("batch_in_epoch"),
            "lora": hasattr(model, "disable_adapter"),
            **(extra or {}),
        }
        (tmp / "state.json").write_text(json.dumps(summary, indent=2, default=str))
        if final.exists():  # re-saving a step (e.g. after a resume): replace it whole
            shutil.rmtree(final)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    pointer = root / f".{LATEST}.tmp"
    pointer.write_text(final.name + "\n")
    os.replace(pointer, root / LATEST)
    return final


def load_full_weights(model: nn.Module, directory: Path) -> None:
    """Full fine-tuning weights saved by `save_policy` into `model`, in place.

    Weights tied to another parameter (e.g. `lm_head` = embeddings) may be absent from the
    files; anything else missing or unexpected raises ValueError.
    """
    from safetensors.torch import load_file

    state: dict[str, torch.Tensor] = {}
    for file in sorted(Path(directory).glob("*.safetensors")):
        try:
            state.update(load_file(str(file)))
        except Exception as err:  # safetensors raises its own error type for a bad header
            raise checkpoint_error(file, err) from None
    if not state:
        raise ValueError(f"no weights (*.safetensors) in {directory}")
    missing, unexpected = model.load_state_dict(state, strict=False)
    loaded = {p.data_ptr() for name, p in model.named_parameters() if name in state}
    untied = [k for k in missing if model.get_parameter(k).data_ptr() not in loaded]
    if unexpected or untied:
        raise ValueError(
            f"checkpoint {directory} does not fit the model: "
            f"missing {untied[:5]}, unexpected {unexpected[:5]}"
        )


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint dir from `path`: the checkpoint itself, a `checkpoints/` dir, or a run dir
    (their `latest`, else the highest `step-*`)."""
    path = Path(path).expanduser()
    if (path / STATE_FILE).is_file():
        return path
    for root in (path, path / "checkpoints"):
        if (root / LATEST).is_file():
            candidate = root / (root / LATEST).read_text().strip()
            if (candidate / STATE_FILE).is_file():
                return candidate
        steps = sorted(p for p in root.glob("step-*") if (p / STATE_FILE).is_file())
        if steps:
            return steps[-1]
    raise FileNotFoundError(f"no checkpoint found at {path} (expected {STATE_FILE} or step-*/)")


def load_trainer_state(checkpoint: Path) -> dict[str, Any]:
    # our own file; it holds RNG states (numpy arrays, tuples), so not weights_only
    try:
        return torch.load(checkpoint / STATE_FILE, map_location="cpu", weights_only=False)
    except Exception as err:  # EOFError, UnpicklingError, RuntimeError (zip archive), ...
        raise checkpoint_error(checkpoint / STATE_FILE, err) from None


def read_summary(checkpoint: Path) -> dict[str, Any]:
    file = checkpoint / "state.json"
    if not file.is_file():
        return {}
    try:
        summary = json.loads(file.read_text())
    except (OSError, ValueError) as err:
        raise checkpoint_error(file, err) from None
    if not isinstance(summary, dict):
        raise checkpoint_error(file, ValueError("not a JSON object"))
    return summary


def load_adapter(model: nn.Module, checkpoint: Path, **kwargs: Any) -> Any:
    """The PEFT adapter of `checkpoint` on `model`; CheckpointError naming it when unreadable."""
    from peft import PeftModel

    where = checkpoint / "model"
    try:
        return PeftModel.from_pretrained(model, str(where), **kwargs)
    except Exception as err:  # a truncated adapter file, a bad adapter_config.json
        raise checkpoint_error(where, err) from None
