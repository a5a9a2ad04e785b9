"""Executor and policy LLM backends behind one async interface (`wfopt.llm.base.LLM`).

Backends load lazily (`build_executor` imports transformers or openai only when needed).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from wfopt.llm.base import LLM, Completion, LLMError, Message, SamplingParams
from wfopt.llm.cache import CachedLLM

if TYPE_CHECKING:
    from wfopt.config import ExecutorConfig, HardwareConfig, ModelConfig, SamplingConfig
    from wfopt.llm.local import LocalLLM

__all__ = [
    "LLM",
    "CachedLLM",
    "Completion",
    "LLMError",
    "Message",
    "SamplingParams",
    "batch_counters",
    "build_executor",
    "executor_metrics",
    "sampling_params",
]


def sampling_params(cfg: SamplingConfig) -> SamplingParams:
    """`executor.sampling` (a config group) -> the frozen `SamplingParams` requests carry."""
    return SamplingParams(
        temperature=float(cfg.temperature),
        top_p=float(cfg.top_p),
        max_new_tokens=int(cfg.max_new_tokens),
        seed=int(cfg.seed),
    )


def openai_identity(executor_cfg: ExecutorConfig) -> dict:
    """What keys a server's cached answers: where it is and which model it serves."""
    base_url = (executor_cfg.base_url or "https://api.openai.com/v1").rstrip("/")
    return {"backend": "openai", "base_url": base_url, "model": executor_cfg.model}


def executor_metrics(llm: LLM) -> dict[str, int]:
    """`executor/requests` and `executor/retries` of a backend that counts them (openai; also
    behind the cache, which passes attributes through), else nothing."""
    requests, retries = getattr(llm, "requests", None), getattr(llm, "retries", None)
    if not isinstance(requests, int) or not isinstance(retries, int):
        return {}
    return {"executor/requests": requests, "executor/retries": retries}


def batch_counters(llm: LLM) -> tuple[int, int] | None:
    """(decode steps, rows they decoded) so far of a batching backend (local), also behind
    the cache; None for one that does not batch (openai). The mean batch over a window is the
    difference in rows / the difference in steps. Search metrics read the backend's record
    only through this function."""
    steps, rows = getattr(llm, "decode_steps", None), getattr(llm, "decoded_rows", None)
    if isinstance(steps, int) and isinstance(rows, int):
        return steps, rows
    return None


def build_executor(
    model_cfg: ModelConfig,
    executor_cfg: ExecutorConfig,
    hardware_cfg: HardwareConfig,
    *,
    shared_local: LocalLLM | None = None,
) -> LLM:
    """The executor LLM named by `executor.backend`, behind the response cache if enabled.

    `same_as_policy`: the policy model itself (`shared_local` reuses an already loaded one, so
    the weights exist once); `local`: a transformers model, `executor.model` as its path (HF
    id or directory), else the policy's model (again `shared_local` if given); `openai`: an
    OpenAI-compatible server.
    """
    backend = executor_cfg.backend  # a Backend choice: the schema rejects anything else
    if executor_cfg.cache:  # a broken cache file fails now, before a model is loaded
        CachedLLM.check(executor_cfg.cache_path)
    llm: LLM
    if backend == "openai":
        from wfopt.llm.openai_backend import OpenAILLM

        llm = OpenAILLM.from_config(executor_cfg)
        llm.cache_identity = openai_identity(executor_cfg)  # type: ignore[attr-defined]
    elif backend == "local" and executor_cfg.model:
        from omegaconf import OmegaConf

        from wfopt.llm.local import LocalLLM

        cfg = OmegaConf.merge(
            OmegaConf.structured(model_cfg) if not OmegaConf.is_config(model_cfg) else model_cfg,
            {"name": executor_cfg.model, "path": executor_cfg.model, "gguf_file": None},
        )
        llm = LocalLLM.from_config(cfg, hardware_cfg)  # type: ignore[arg-type]
    elif shared_local is not None:
        llm = shared_local
    else:
        from wfopt.llm.local import LocalLLM

        llm = LocalLLM.from_config(model_cfg, hardware_cfg)
    if executor_cfg.cache:
        return CachedLLM(llm, executor_cfg.cache_path)  # creates the parent directories
    return llm
