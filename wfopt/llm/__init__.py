"""Executor and policy LLM backends behind one async interface (`wfopt.llm.base.LLM`)."""

from __future__ import annotations

from typing import Any

from wfopt.llm.base import LLM, Completion, LLMError, Message, SamplingParams
from wfopt.llm.cache import CachedLLM

__all__ = [
    "LLM",
    "CachedLLM",
    "Completion",
    "LLMError",
    "Message",
    "SamplingParams",
    "build_executor",
    "sampling_params",
]


def sampling_params(cfg: Any) -> SamplingParams:
    return SamplingParams(
        temperature=float(cfg.temperature),
        top_p=float(cfg.top_p),
        max_new_tokens=int(cfg.max_new_tokens),
        seed=int(cfg.seed),
    )


def build_executor(
    model_cfg: Any, executor_cfg: Any, hardware_cfg: Any, shared_local: Any = None
) -> LLM:
    """The executor LLM named by `executor.backend`, behind the response cache if enabled.

    `same_as_policy`: the policy model itself (`shared_local` reuses an already loaded one);
    `local`: another transformers model (`executor.model` as its path); `openai`: a server.
    """
    backend = executor_cfg.backend
    if backend == "openai":
        from wfopt.llm.openai_backend import OpenAILLM

        llm: LLM = OpenAILLM.from_config(executor_cfg)
    elif backend in ("same_as_policy", "local"):
        from wfopt.llm.local import LocalLLM

        if backend == "same_as_policy" and shared_local is not None:
            llm = shared_local
        else:
            cfg = model_cfg
            if backend == "local" and executor_cfg.model:
                from omegaconf import OmegaConf

                cfg = OmegaConf.merge(
                    model_cfg,
                    {"name": executor_cfg.model, "path": executor_cfg.model, "gguf_file": None},
                )
            llm = LocalLLM.from_config(cfg, hardware_cfg)
    else:
        raise ValueError(
            f"unknown executor.backend {backend!r}; use same_as_policy, local or openai"
        )
    return CachedLLM(llm, executor_cfg.cache_path) if executor_cfg.cache else llm
