"""`wfopt export CHECKPOINT_OR_RUN OUT_DIR`: a trained policy as a plain Hugging Face model.

The output directory holds `config.json`, `model.safetensors` (a LoRA adapter merged into the
base weights), the tokenizer and `generation_config.json`, so it loads with
`AutoModelForCausalLM.from_pretrained(OUT_DIR)` and serves with `vllm serve OUT_DIR` (or
SGLang, TGI, llama.cpp after conversion). The weights are those `wfopt evaluate policy=...`
samples from: the same loader (`wfopt.policy.load_policy_llm`) builds them.

`generation_config.json` stops on every token wfopt's sampler stops on (EOS and the chat
template's end-of-turn), so a server ends workflows where wfopt would. `wfopt_export.json`
records where the weights came from and the prompt format the policy was trained with.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf


class ExportError(RuntimeError):
    """A checkpoint that cannot be exported; the message says why and what to do."""


def run_config(checkpoint: Path) -> Any:
    """The `.hydra/config.yaml` of the run a checkpoint belongs to (searched upwards)."""
    for parent in checkpoint.resolve().parents:
        saved = parent / ".hydra" / "config.yaml"
        if saved.is_file():
            return OmegaConf.load(saved)
        job = parent / "job.json"  # a loop's distributed training dir (episodes/NNN/train)
        if job.is_file():
            return OmegaConf.create(json.loads(job.read_text())["config"])
    raise ExportError(
        f"{checkpoint}: no .hydra/config.yaml in the run directories above it, so the base "
        "model is unknown; export a checkpoint inside its train/loop run directory"
    )


def export_policy(source: str | Path, out_dir: str | Path) -> Path:
    """Write the policy of `source` (a checkpoint, or a train/loop run: its latest) to
    `out_dir` as a Hugging Face model directory; return `out_dir`."""
    import asyncio

    from wfopt.config import HardwareConfig, ModelConfig
    from wfopt.grpo.checkpoint import _make_serializable, read_summary, resolve_checkpoint
    from wfopt.policy import RESPONSE_PREFIX, load_policy_llm

    out_dir = Path(out_dir).expanduser().resolve()
    if out_dir.exists() and any(out_dir.iterdir()):
        raise ExportError(f"{out_dir} exists and is not empty; choose a new directory")
    try:
        checkpoint = resolve_checkpoint(source)
    except FileNotFoundError as err:
        raise ExportError(str(err)) from None
    cfg = run_config(checkpoint)
    model_cfg = OmegaConf.merge(OmegaConf.structured(ModelConfig), cfg.model)
    # exported on the CPU in the run's dtype: the weights wfopt trained, bit for bit
    hardware = OmegaConf.merge(
        OmegaConf.structured(HardwareConfig), cfg.get("hardware", {}), {"device": "cpu"}
    )
    llm = load_policy_llm(model_cfg, hardware, checkpoint)
    model, tokenizer = llm.model, llm.tokenizer
    _make_serializable(model)
    generation = model.generation_config
    generation.eos_token_id = sorted(llm.stop_ids)
    generation.pad_token_id = tokenizer.pad_token_id

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        generation.save_pretrained(tmp)
        info = {
            "checkpoint": str(checkpoint),
            "base_model": str(model_cfg.path),
            "lora_merged": bool(read_summary(checkpoint).get("lora")),
            "chat_template": bool(llm.chat_template),
            "prompt": "wfopt.policy.build_policy_prompt(problem, tokenizer), ending with "
            f"{RESPONSE_PREFIX!r}; the model writes the rest of the workflow (newline, indented body)",
        }
        (tmp / "wfopt_export.json").write_text(json.dumps(info, indent=2))
        if out_dir.exists():
            out_dir.rmdir()  # empty (checked above)
        os.replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        asyncio.run(llm.aclose())
    return out_dir
