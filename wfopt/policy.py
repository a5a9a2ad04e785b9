"""The policy's prompt format: the one function that turns a problem into the text the policy
continues with a workflow, shared by sampling (search proposals, loop evaluation) and GRPO
training so the two never drift apart.

Every prompt ends with the workflow's fixed header, `RESPONSE_PREFIX` (`async def
solve(problem):`): the policy writes the rest, from the newline and indent on. This costs
nothing in expressiveness (every workflow starts that way) and spares a small policy from
having to learn the header before anything else.

The prompt ends at the colon, not after the newline and indent, because that is where the
tokenizer itself ends a token: SmolLM2 spells `):\n    return` as `):`, `\n   `, ` return`.
A prompt ending in `\n    ` split that pair; the policy then wrote ` return` (a fifth column
in its eyes), while workflows it did not write were trained as the un-spaced `return`, a token
it never emits there. With the boundary at the colon, a body tokenized alone gives the same
ids as the whole workflow tokenized at once (test), so off-policy training data are written
the way the policy writes.

Two variants of the same prompt, picked by whether a tokenizer with a chat template is given:

- plain (`tokenizer=None`, or a tokenizer without a chat template): the seed prompt
  `"Generate a workflow to solve this problem:\n{problem}\n\nWorkflow:\n"` then the prefix;
- chat: the same user text (without the trailing newline) as one user turn after a short
  system message listing the operators, rendered by the tokenizer's chat template with the
  assistant turn opened, then the prefix.

Search expansions use the same builder with a `Parent`: the user text then also shows a
workflow to improve, its score and what went wrong (never the gold answer), so proposal and
training prompts share their system message, problem statement and closing cue.

A training sample is `prompt ids + body ids + [EOS]` where the body is the workflow after its
header (`policy_response`): the prompt and the body are tokenized separately and concatenated,
so the boundary between them is exact and the response mask covers exactly the body tokens
and the EOS that ends them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from wfopt.tokens import encode_prompt

RESPONSE_PREFIX = "async def solve(problem):"
PROMPT_TEMPLATE = "Generate a workflow to solve this problem:\n{problem}\n\nWorkflow:"

OPERATOR_DOCS = (
    "Write one Python function `async def solve(problem)` that awaits these operators "
    "and returns the final answer:\n"
    "generate(problem, instruction) -> text; answer_generate(problem) -> reasoning + answer; "
    "programmer(problem, analysis='') -> output of a generated program; "
    "ensemble(problem, candidates) -> majority answer; review(problem, solution) -> feedback; "
    "revise(problem, solution, feedback) -> solution; format_answer(problem, solution) -> answer."
    + "\n\nExamples:\n"
    "async def solve(problem):\n    return await generate(problem)\n\n"
    "async def solve(problem):\n    solution = await answer_generate(problem)\n"
    "    return await format_answer(problem, solution)\n\n"
    "async def solve(problem):\n    result = await programmer(problem)\n    return result\n"
)
# Example workflows show the form, not the answer: measured on 8 arithmetic problems, the
# untrained SmolLM2's greedy workflows were valid 6/8 times with the first two, 0/8 without
# (it wrote arithmetic and `print` instead of awaiting operators). The third shows how
# `programmer` is called; on 12 problems of the default arithmetic the untrained greedy
# workflows still call only `generate` (9 valid, 3 invalid; 8 and 4 without it), and of 64
# samples at temperature 0.7 and 1.0 none calls `programmer`.
# code tasks (HumanEval, MBPP): the answer is a function's source; `entry_point` is a global
# holding the function's name
CODE_OPERATOR_DOCS = (
    "Write one Python function `async def solve(problem)` that awaits these operators "
    "and returns the source code of the function named by the global `entry_point`:\n"
    "code_generate(problem, entry_point, instruction='') -> code; "
    "test(problem, solution, entry_point) -> 'PASS' or 'FAIL: ...' on the public examples; "
    "generate(problem, instruction) -> text; review(problem, solution) -> feedback; "
    "revise(problem, solution, feedback) -> solution; format_answer(problem, solution) -> answer; "
    "ensemble(problem, candidates) -> majority answer."
    "\n\nExample:\n"
    "async def solve(problem):\n    code = await code_generate(problem, entry_point)\n"
    "    return code\n"
)


def operator_docs(kind: str = "math") -> str:
    """The operator list the policy is shown for a problem of `kind` (`Problem.kind`)."""
    return CODE_OPERATOR_DOCS if kind == "code" else OPERATOR_DOCS


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
    problem: str, tokenizer: Any | None = None, parent: Parent | None = None, kind: str = "math"
) -> str:
    """The text the policy continues with a workflow for `problem`.

    With a chat-template tokenizer: system = the operator docs of the problem's `kind` (code
    tasks list `code_generate`, `test` and the `entry_point` global), user = the seed prompt,
    assistant turn opened. Otherwise: the seed prompt plus a newline. Both end with
    `RESPONSE_PREFIX`. Pass `tokenizer=None` to force the plain form
    (`model.chat_template=false`). `parent`: a search expansion's prompt.
    """
    text = _user_text(problem, parent)
    if not uses_chat_template(tokenizer):
        return text + "\n" + RESPONSE_PREFIX
    messages = [
        {"role": "system", "content": operator_docs(kind)},
        {"role": "user", "content": text},
    ]
    chat = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return chat + RESPONSE_PREFIX


def workflow_from_completion(text: str) -> str:
    """The workflow a policy completion (the text after the prompt) spells: the header plus the
    completion, cut where the function ends (a line back at column 0, or a closing code fence).
    The policy writes its own newlines and indents; a body at an inconsistent indent stays as
    written and the validator rejects it."""
    header_line, *rest = (RESPONSE_PREFIX + text).split("\n")
    lines = [header_line]
    for line in rest:
        if line.strip().startswith("```") or (line.strip() and not line[0].isspace()):
            break
        lines.append(line)
    return "\n".join(lines).rstrip() + "\n"


def _with_standard_header(code: str) -> str | None:
    """`code` re-rendered so it starts with `RESPONSE_PREFIX`, or None if it does not parse
    as one `async def solve(<param>)` (the parameter is renamed to `problem`)."""
    import ast

    try:
        tree = ast.parse(code)
    except (SyntaxError, ValueError, RecursionError):
        return None
    if len(tree.body) != 1 or not isinstance(tree.body[0], ast.AsyncFunctionDef):
        return None
    solve = tree.body[0]
    if solve.name != "solve" or len(solve.args.args) != 1:
        return None
    param = solve.args.args[0].arg
    if param != "problem":
        if any(isinstance(n, ast.Name) and n.id == "problem" for n in ast.walk(solve)):
            return None
        solve.args.args[0].arg = "problem"
        for node in ast.walk(solve):
            if isinstance(node, ast.Name) and node.id == param:
                node.id = "problem"
    return ast.unparse(tree) + "\n"


def policy_response(code: str) -> str:
    """The part of a workflow the policy writes: everything after `RESPONSE_PREFIX`, starting
    with the newline that ends the header.

    Code with another header (other parameter name, leading comments) is re-rendered with the
    standard one first; code that does not parse and lacks the prefix is returned whole (it
    can only be a failed sample, trained on as it is).
    """
    if not code.startswith(RESPONSE_PREFIX):
        code = _with_standard_header(code) or code
    return code[len(RESPONSE_PREFIX) :] if code.startswith(RESPONSE_PREFIX) else code


def encode_response(response: str, tokenizer: Any, add_eos: bool = True) -> list[int]:
    """Token ids of a workflow as the policy would emit it after the prompt: its body
    (`policy_response`), no special tokens, then EOS."""
    ids = list(tokenizer(policy_response(response), add_special_tokens=False)["input_ids"])
    if add_eos:
        if tokenizer.eos_token_id is None:
            raise ValueError("the tokenizer has no EOS token; cannot end the workflow")
        ids.append(int(tokenizer.eos_token_id))
    return ids


def encode_prompt_and_response(
    prompt: str, response: str, tokenizer: Any, add_eos: bool = True
) -> tuple[list[int], list[int]]:
    """`(input_ids, response_mask)` of `prompt + body of response (+ EOS)`, tokenized piecewise.

    The prompt is tokenized alone, the response alone (no special tokens), and the ids are
    concatenated; `response_mask` is 0 on prompt ids and 1 on response ids and the EOS.
    """
    prompt_ids = encode_prompt(prompt, tokenizer)
    response_ids = encode_response(response, tokenizer, add_eos)
    return prompt_ids + response_ids, [0] * len(prompt_ids) + [1] * len(response_ids)


# -- the policy as a sampler ----------------------------------------------------------------


def load_policy_llm(model_cfg: Any, hardware_cfg: Any, checkpoint: Any = None) -> Any:
    """The policy behind the batched local backend, at `checkpoint` (a `wfopt train`/`loop`
    checkpoint dir) or untrained (None). LoRA adapters are merged for fast sampling. Its
    `name` carries the checkpoint, so cached responses of another policy version never match.
    """
    from pathlib import Path

    from wfopt.llm.local import LocalLLM
    from wfopt.models import load_causal_lm, load_tokenizer, model_identity

    if checkpoint is None:
        return LocalLLM.from_config(model_cfg, hardware_cfg)
    from wfopt.grpo.checkpoint import load_adapter, load_full_weights, read_summary

    checkpoint = Path(checkpoint)
    model = load_causal_lm(model_cfg, dtype=hardware_cfg.dtype, device=hardware_cfg.device)
    if read_summary(checkpoint).get("lora"):
        model = load_adapter(model, checkpoint).merge_and_unload()
    else:
        load_full_weights(model, checkpoint / "model")
    checkpoint_id = f"{checkpoint.name}-{_checkpoint_id(checkpoint)}"
    llm = LocalLLM(
        model.eval(),
        load_tokenizer(model_cfg),
        f"{model_cfg.name}@{checkpoint_id}",
        **LocalLLM.config_options(model_cfg),
    )
    # the cache keys on the base model's identity (weights, dtype, template) plus the checkpoint
    llm.cache_identity = {
        **model_identity(model_cfg, model, llm.chat_template),
        "checkpoint": checkpoint_id,
    }
    return llm


def _checkpoint_id(checkpoint: Any) -> str:
    """Short id of a checkpoint's weights: its path and its weight files' sizes and times."""
    import hashlib

    parts = [str(checkpoint.resolve())]
    for file in sorted((checkpoint / "model").glob("*.safetensors")):
        stat = file.stat()
        parts.append(f"{file.name}:{stat.st_size}:{stat.st_mtime_ns}")
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:10]


@dataclass(frozen=True)
class PolicySample:
    """One workflow the policy wrote, with what GRPO needs to train on it exactly.

    `code` is the workflow the completion spells (`workflow_from_completion`: the prefix plus
    the body, cut where the function ends); the ids are the prompt and the completion token
    for token as the model saw and emitted them (`None` when the backend does not report
    ids: such a sample can only be trained as off-policy data). `stopped`: the completion ended
    on a stop token (its last id) rather than at the token limit.
    """

    code: str
    prompt_ids: list[int] | None = None
    completion_ids: list[int] | None = None
    stopped: bool | None = None

    @classmethod
    def from_completion(cls, completion: Any) -> PolicySample:
        return cls(
            workflow_from_completion(completion.text),
            completion.prompt_ids,
            completion.completion_ids,
            completion.stopped,
        )


async def sample_policy(
    llm: Any,
    problem: str,
    params: Any,
    sample_index: int,
    parent: Parent | None = None,
    kind: str = "math",
) -> PolicySample:
    """One workflow from the policy for `problem` of `kind` (the training prompt, or a search
    expansion's prompt when `parent` is given); not validated.

    `llm` offers `complete_text` (a `LocalLLM`, possibly behind the response cache); its
    tokenizer's chat template is used when the backend uses one.
    """
    tokenizer = llm.tokenizer if getattr(llm, "chat_template", False) else None
    prompt = build_policy_prompt(problem, tokenizer, parent, kind)
    return PolicySample.from_completion(await llm.complete_text(prompt, params, sample_index))


async def sample_workflows(
    llm: Any, problem: str, params: Any, n: int = 1, first_index: int = 0, kind: str = "math"
) -> list[PolicySample]:
    """`n` workflows the policy writes for `problem` from the training prompt, sampled
    together (they batch)."""
    import asyncio

    return list(
        await asyncio.gather(
            *(sample_policy(llm, problem, params, first_index + i, None, kind) for i in range(n))
        )
    )
