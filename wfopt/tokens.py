"""The one rule for turning a prompt into token ids, shared by sampling and training."""

from __future__ import annotations

from typing import Any


def encode_prompt(prompt: str, tokenizer: Any) -> list[int]:
    """Token ids of a prompt, by the one rule sampling (the local backend) and training share:
    the text alone, no special tokens added (a chat template renders BOS itself if its model
    wants one). Policy samples carry the ids they were sampled with, so this only matters for
    workflows the policy did not write."""
    return list(tokenizer(prompt, add_special_tokens=False)["input_ids"])
