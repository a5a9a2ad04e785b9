"""The policy as GRPO sees it: log-probs and entropies of response tokens under a causal LM
(plain transformers or wrapped by PEFT), with dropout off.

`sequence_log_probs` runs the backbone and projects its last hidden states through the fused,
chunked LM-head path of `wfopt.grpo.logprobs` (only response positions are projected; logits
are never stored); models whose head is not a plain linear layer (logit soft-capping, scaling)
take the logits path (`fused_head_supported`). `LogProbModel` is that computation as a module,
the one that distributed wrappers (DDP, FSDP, DeepSpeed) wrap. Dropout is switched off
(`disable_dropout`): a GRPO ratio needs the same function for the old and the new log-probs.
"""

from __future__ import annotations

from torch import Tensor, nn

from wfopt.grpo.logprobs import token_log_probs, token_log_probs_from_hidden

# config attributes that transform logits after the LM head (the fused path would skip them)
_LOGIT_TRANSFORMS = (
    "final_logit_softcapping",
    "logit_scale",
    "logits_scaling",
    "output_multiplier",
    "lm_head_multiplier",
)


def base_model(model: nn.Module) -> nn.Module:
    """The transformers model under a PEFT wrapper (LoRA layers included), else `model`."""
    get_base = getattr(model, "get_base_model", None)
    return get_base() if callable(get_base) else model


def fused_head_supported(model: nn.Module) -> bool:
    """Whether log-probs may be computed as `log_softmax(hidden @ W.T + b)` of the backbone."""
    base = base_model(model)
    head = base.get_output_embeddings() if hasattr(base, "get_output_embeddings") else None
    if not isinstance(head, nn.Linear):
        return False
    if not hasattr(base, getattr(base, "base_model_prefix", "") or "\0"):
        return False
    config = base.config
    config = config.get_text_config() if hasattr(config, "get_text_config") else config
    return all(getattr(config, key, None) in (None, 1, 1.0) for key in _LOGIT_TRANSFORMS)


def position_ids(attention_mask: Tensor) -> Tensor:
    """Positions counted over real tokens, so left and right padding give the same numbers."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def sequence_log_probs(
    model: nn.Module,
    batch: dict[str, Tensor],
    *,
    fused: bool = True,
    entropy_grad: bool = False,
    chunk_size: int = 512,
) -> tuple[Tensor, Tensor]:
    """(log_probs, entropy) `(B, T)` of the response tokens of `batch` under `model`."""
    ids, attn, mask = batch["input_ids"], batch["attention_mask"], batch["response_mask"]
    inputs = {
        "input_ids": ids,
        "attention_mask": attn,
        "position_ids": position_ids(attn),
        "use_cache": False,
    }
    if fused:
        base = base_model(model)
        hidden = getattr(base, base.base_model_prefix)(**inputs).last_hidden_state
        head = base.get_output_embeddings()
        lp, ent = token_log_probs_from_hidden(
            hidden, head.weight, ids, mask, head.bias, chunk_size=chunk_size
        )
        return lp, ent if entropy_grad else ent.detach()
    logits = model(**inputs).logits
    lp, ent = token_log_probs(logits, ids, mask, entropy_grad=entropy_grad, chunk_size=chunk_size)
    assert ent is not None
    return lp, ent


class LogProbModel(nn.Module):
    """The policy as a module whose forward returns `(log_probs, entropy)` `(B, T)` of the
    response tokens. Distributed wrappers (DDP, FSDP, DeepSpeed) hook into the forward of the
    module they wrap; wrapping this one keeps the fused LM-head path (backbone + head weight,
    no logits) inside that forward."""

    def __init__(self, policy: nn.Module, *, fused: bool, chunk_size: int) -> None:
        super().__init__()
        self.policy = policy
        self.fused = fused
        self.chunk_size = chunk_size
        # FSDP's transformer auto-wrap looks for the decoder layer classes here
        self._no_split_modules = getattr(base_model(policy), "_no_split_modules", None)

    def forward(
        self,
        input_ids: Tensor,
        attention_mask: Tensor,
        response_mask: Tensor,
        entropy_grad: bool = False,
    ) -> tuple[Tensor, Tensor]:
        batch = {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "response_mask": response_mask,
        }
        return sequence_log_probs(
            self.policy,
            batch,
            fused=self.fused,
            entropy_grad=entropy_grad,
            chunk_size=self.chunk_size,
        )


def disable_dropout(model: nn.Module) -> None:
    """Dropout off everywhere (modules and attention), whatever train()/eval() says."""
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = 0.0
        if isinstance(getattr(module, "attention_dropout", None), float):
            module.attention_dropout = 0.0
