"""The policy's prompt format: the one function that turns a problem into the text the policy
continues with a workflow, shared by sampling (search proposals) and GRPO training so the two
never drift apart.

Two variants of the same prompt, picked by whether a tokenizer with a chat template is given:

- plain (`tokenizer=None`, or a tokenizer without a chat template): the seed prompt
  `"Generate a workflow to solve this problem:\\n{problem}\\n\\nWorkflow:\\n"`. The trailing newline
  (absent in the design's seed text) makes the workflow start on a fresh line, so the code's
  first token is the same whether it is sampled after the prompt or tokenized on its own.
- chat: the same user text (without the trailing newline) as one user turn after a short
  system message listing the operators, rendered by the tokenizer's chat template with the
  assistant turn opened; the workflow is the assistant's reply.

Search proposals use the same builder with a `Parent`: the user text then also shows a
workflow to improve, its score and what went wrong (never the gold answer), so proposal and
training prompts share their system message, problem statement and closing `Workflow:` cue.

A training sample is `prompt ids + code ids + [EOS]`: the prompt and the code are tokenized
separately and concatenated, so the boundary between them is exact (no merge of the prompt's
last characters with the code's first ones) and the response mask covers exactly the code
tokens and the EOS that ends them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

PROMPT_TEMPLATE = "Generate a workflow to solve this problem:\n{problem}\n\nWorkflow:"

OPERATOR_DOCS = (
    "Write one Python function `async def solve(problem)` that awaits these operators "
    "and returns the final answer:\n"
    "generate(problem, instruction) -> text; answer_generate(problem) -> reasoning + answer; "
    "programmer(problem, analysis='') -> output of a generated program; "
    "ensemble(problem, candidates) -> majority answer; review(problem, solution) -> feedback; "
    "revise(problem, solution, feedback) -> solution; format_answer(problem, solution) -> answer."
)


def uses_chat_template(tokenizer: Any | None) -> bool:
    return tokenizer is not None and bool(getattr(tokenizer, "chat_template", None))


@dataclass(frozen=True)
class Parent:
    """A workflow the policy is asked to improve (search expansion)."""

    code: str
    score: float
    notes: str = ""  # failure summary, e.g. "runtime_error: ...; answered 12" (no gold answers)


def _user_text(problem: str, parent: Parent | None) -> str:
    head, cue = PROMPT_TEMPLATE.format(problem=problem).rsplit("\n\n", 1)
    if parent is None:
        return f"{head}\n\n{cue}"
    notes = f"\nWhat happened: {parent.notes}" if parent.notes else ""
    return (
        f"{head}\n\nThis workflow scored {parent.score:.2f}:\n{parent.code.strip()}{notes}\n"
        f"Write a better one.\n\n{cue}"
    )


def build_policy_prompt(
    problem: str, tokenizer: Any | None = None, parent: Parent | None = None
) -> str:
    """The text the policy continues with a workflow for `problem`.

    With a chat-template tokenizer: system = operator docs, user = the seed prompt, assistant
    turn opened. Otherwise: the seed prompt plus a newline. Pass `tokenizer=None` to force the
    plain form (`model.chat_template=false`). `parent`: a search expansion's prompt.
    """
    text = _user_text(problem, parent)
    if not uses_chat_template(tokenizer):
        return text + "\n"
    messages = [
        {"role": "system", "content": OPERATOR_DOCS},
        {"role": "user", "content": text},
    ]
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


_FENCE = re.compile(r"```(?:python|py)?\s*\n(.*?)(?:```|$)", re.DOTALL)


def extract_workflow(text: str) -> str:
    """The workflow code in a policy completion: a fenced block if any, from `async def solve`
    on, with trailing prose after the function dropped (a line back at column 0)."""
    match = _FENCE.search(text)
    code = match.group(1) if match else text
    start = code.find("async def solve")
    if start < 0:
        return code.strip()
    lines = code[start:].splitlines()
    body = [lines[0]]
    for line in lines[1:]:
        if line.strip() and not line[0].isspace():
            break
        body.append(line)
    return "\n".join(body).strip()


def encode_prompt(prompt: str, tokenizer: Any) -> list[int]:
    """Token ids of a prompt built by `build_policy_prompt`.

    Special tokens are added unless the text already starts with the BOS token (chat templates
    that render it themselves), so BOS is never doubled.
    """
    bos = getattr(tokenizer, "bos_token", None)
    add_special = not (bos and prompt.startswith(bos))
    return list(tokenizer(prompt, add_special_tokens=add_special)["input_ids"])


def encode_response(response: str, tokenizer: Any, add_eos: bool = True) -> list[int]:
    """Token ids of a workflow as the policy would emit it: no special tokens, then EOS."""
    ids = list(tokenizer(response, add_special_tokens=False)["input_ids"])
    if add_eos:
        if tokenizer.eos_token_id is None:
            raise ValueError("the tokenizer has no EOS token; cannot end the workflow")
        ids.append(int(tokenizer.eos_token_id))
    return ids


def encode_prompt_and_response(
    prompt: str, response: str, tokenizer: Any, add_eos: bool = True
) -> tuple[list[int], list[int]]:
    """`(input_ids, response_mask)` of `prompt + response (+ EOS)`, tokenized piecewise.

    The prompt is tokenized alone, the response alone (no special tokens), and the ids are
    concatenated; `response_mask` is 0 on prompt ids and 1 on response ids and the EOS.
    """
    prompt_ids = encode_prompt(prompt, tokenizer)
    response_ids = encode_response(response, tokenizer, add_eos)
    return prompt_ids + response_ids, [0] * len(prompt_ids) + [1] * len(response_ids)
