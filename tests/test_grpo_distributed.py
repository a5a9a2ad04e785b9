"""Distributed GRPO: 2 CPU processes (accelerate DDP over gloo) train exactly like one process.

Each test launches a real 2-process run with `accelerate launch` on a tiny random Llama (real
SmolLM2 tokenizer), runs the same global batches in this process (one process, twice the
gradient accumulation), and compares the saved weights (atol 1e-6, fp32) and the logged
metrics step by step. The FSDP2 variant (slow) forces accelerate's FSDP2 path onto the CPU
processes, which accelerate itself only enables on accelerators. The ranks' shards hold different numbers of response tokens, and some
steps give one rank fewer (or no) samples, so a per-rank loss normalizer, a wrong metric
reduction or misaligned collectives would show.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from omegaconf import DictConfig, OmegaConf

from wfopt.baselines import load_baseline
from wfopt.grpo import TrajectoryDataset, read_trajectories, train_policy
from wfopt.grpo.batching import epoch_order, rank_micro_batches

REPO = Path(__file__).resolve().parents[1]
ACCELERATE = Path(sys.executable).with_name("accelerate")
CODES = {name: load_baseline(name) for name in ("io", "cot", "cot_sc", "programmer", "self_refine")}
TOLERANCE = 1e-6  # fp32 weights after the updates; the reduction order alone changes ~1e-8


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One torch thread here; the launched processes get OMP_NUM_THREADS=1 (2 shared cores)."""
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(saved)


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    """A tiny random LlamaForCausalLM (2 layers, width 32, tied embeddings) saved with the
    real SmolLM2 tokenizer: a local model directory for `model.path`."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from wfopt.config import ModelConfig
    from wfopt.models import load_tokenizer

    smollm2 = OmegaConf.merge(
        OmegaConf.structured(ModelConfig), OmegaConf.load(REPO / "conf/model/smollm2_135m.yaml")
    )
    tokenizer = load_tokenizer(smollm2)
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    path = tmp_path_factory.mktemp("tiny-llama")
    LlamaForCausalLM(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def write_trajectories(path: Path, groups: list[tuple[str, list[str], list[float]]]) -> Path:
    records = [
        {
            "problem": problem,
            "problem_id": i,
            "workflow_codes": [CODES[name] for name in names],
            "rewards": rewards,
        }
        for i, (problem, names, rewards) in enumerate(groups)
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


# 7 samples: global batches of 4 and 3 (the second leaves rank 1 one sample short)
EPISODE_1 = [
    ("What is 12 * 7 + 3?", ["programmer", "io", "cot_sc", "self_refine"], [1.0, 0.0, 1.0, 0.0]),
    ("Compute 45 - 17 * 2.", ["cot", "self_refine", "io"], [1.0, 0.0, 0.5]),
]
# 5 samples: global batches of 4 and 1 (rank 1 has no sample at all in the second)
EPISODE_2 = [
    ("What is 3 + 4 * 5?", ["io", "programmer", "cot"], [0.0, 1.0, 1.0]),
    ("Compute 81 / 9 - 2.", ["self_refine", "cot_sc"], [1.0, 0.0]),
]


def model_overrides(model_dir: Path) -> list[str]:
    return [
        f"model.path={model_dir}",
        "model.name=tiny-llama",
        "model.gguf_file=null",
        "grpo.micro_batch_size=1",
        "grpo.max_length=1024",
        "hardware.num_threads=1",
        "tracking.wandb=false",
        "show_progress=false",
    ]


def compose_train_config(overrides: list[str]) -> DictConfig:
    """The config `wfopt train` composes from conf/train.yaml and these overrides."""
    from hydra import compose, initialize_config_dir

    from wfopt.config import register_configs

    register_configs()
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        return compose(config_name="train", overrides=overrides)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def accelerate_launch(args: list[str], cwd: Path) -> float:
    """Run `accelerate launch` with the shipped DDP config on 2 local CPU processes; returns
    the wall time. Fails the test with the output on error."""
    cmd = [
        str(ACCELERATE),
        "launch",
        "--config_file",
        str(REPO / "conf/accelerate/ddp.yaml"),
        "--num_processes",
        "2",
        "--main_process_ip",
        "127.0.0.1",
        "--main_process_port",
        str(free_port()),
        *args,
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled"}
    start = time.perf_counter()
    result = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    if result.returncode != 0:
        pytest.fail(f"{' '.join(cmd)} failed:\n{result.stdout[-4000:]}\n{result.stderr[-8000:]}")
    return time.perf_counter() - start


def load_weights(model_dir: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    files = sorted(model_dir.glob("*.safetensors"))
    assert files, f"no weights in {model_dir}"
    return {k: v for f in files for k, v in load_file(str(f)).items()}


def step_metrics(run_dir: Path) -> list[dict]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if "train/loss" in r]


def assert_same_training(distributed: Path, single: Path, start: Path | None = None) -> None:
    """Same checkpoints, same weights (atol TOLERANCE), same metrics at the same steps."""
    names = sorted(p.name for p in (distributed / "checkpoints").glob("step-*"))
    assert names == sorted(p.name for p in (single / "checkpoints").glob("step-*"))
    final = names[-1]
    got, want = (
        load_weights(distributed / "checkpoints" / final / "model"),
        load_weights(single / "checkpoints" / final / "model"),
    )
    assert got.keys() == want.keys()
    diff = max(float((got[k] - want[k]).abs().max()) for k in want)
    print(f"\n{distributed.name}: max |2 processes - 1 process| = {diff:.2e} over {final}")
    assert diff <= TOLERANCE
    if start is not None:  # and the updates are far larger than the tolerance
        initial = load_weights(start)
        moved = max(float((want[k] - initial[k]).abs().max()) for k in want if k in initial)
        assert moved > 1000 * TOLERANCE

    rows_d, rows_s = step_metrics(distributed), step_metrics(single)
    assert [r["step"] for r in rows_d] == [r["step"] for r in rows_s]  # rank 0 logged, once
    for d, s in zip(rows_d, rows_s, strict=True):
        for key in ("train/response_tokens", "train/lr", "train/reward_mean", "train/epoch"):
            assert d[key] == s[key], (d["step"], key)
        for key in ("train/loss", "train/pg_loss", "train/entropy", "train/kl"):
            assert d[key] == pytest.approx(s[key], rel=1e-5, abs=1e-7), (d["step"], key)
        for key in ("train/clip_ratio", "train/grad_norm", "train/advantages/mean"):
            assert d[key] == pytest.approx(s[key], rel=1e-5, abs=1e-7), (d["step"], key)


def shard_tokens(model_dir: Path, trajectories: Path, batch_size: int) -> list[list[int]]:
    """Response tokens of each rank's shard, per global batch of the first epoch."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    dataset = TrajectoryDataset(trajectories, tokenizer, max_length=1024)
    order = epoch_order(len(dataset), seed=0, epoch=0)
    tokens = []
    for start in range(0, len(order), batch_size):
        batch = order[start : start + batch_size]
        per_rank = []
        for rank in range(2):
            rows = [r for micro in rank_micro_batches(len(batch), 1, rank, 2) for r in micro]
            per_rank.append(sum(int(dataset[batch[r]]["response_mask"].sum()) for r in rows))
        tokens.append(per_rank)
    return tokens


# ---------------------------------------------------------------- tests


def test_wfopt_train_ddp_two_processes_equals_one_process(tmp_path, tiny_model):
    """`accelerate launch ... -m wfopt.cli train` (the documented command), full fine-tuning,
    token_mean: 2 processes x 2 micro-batches of 1 = 1 process x 4 micro-batches of 1."""
    traj = write_trajectories(tmp_path / "trajectories.jsonl", EPISODE_1)
    tokens = shard_tokens(tiny_model, traj, batch_size=4)
    assert all(a != b for a, b in tokens), tokens  # a per-rank normalizer would differ
    common = [f"trajectories={traj}", *model_overrides(tiny_model), "grpo.lr=1e-3"]

    wall = accelerate_launch(
        [
            "-m",
            "wfopt.cli",
            "train",
            *common,
            "grpo.grad_accum_steps=2",
            "hardware.distributed=ddp",
            f"hydra.run.dir={tmp_path / 'ddp'}",
        ],
        cwd=tmp_path,
    )
    print(f"\n2-process wfopt train: {wall:.1f} s")
    single = tmp_path / "single"
    cfg = compose_train_config([*common, "grpo.grad_accum_steps=4"])
    result = train_policy(cfg, read_trajectories(traj), single, show_progress=False)
    assert result.step == 2 and result.dataset_stats["samples"] == 7

    assert_same_training(tmp_path / "ddp", single, start=tiny_model)
    # only rank 0 wrote: one checkpoint dir, one metrics file, steps logged once
    assert (tmp_path / "ddp" / "checkpoints" / "latest").read_text().strip() == "step-000002"
    state = torch.load(
        tmp_path / "ddp/checkpoints/step-000002/trainer_state.pt", weights_only=False
    )
    assert (state["step"], state["batch_size"], state["epoch"]) == (2, 4, 1)
    assert state["optimizer"] is not None  # DDP: the replicated AdamW state is saved


WORKER = """
import json, sys
import torch
from hydra import compose, initialize_config_dir
from wfopt.config import register_configs
from wfopt.grpo import read_trajectories, train_policy

torch.set_num_threads(1)
spec = json.loads(open(sys.argv[1]).read())
if spec["fsdp2_on_cpu"]:
    # accelerate turns FSDP on for accelerators only: put these CPU processes on its FSDP2 path
    from accelerate import Accelerator
    from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin
    import wfopt.grpo.distributed

    prepare = Accelerator.prepare

    def prepare_as_fsdp(self, *args, **kwargs):
        self.state.distributed_type = DistributedType.FSDP
        try:
            return prepare(self, *args, **kwargs)
        finally:
            self.state.distributed_type = DistributedType.FSDP

    def make_accelerator(hardware):
        accelerator = Accelerator(cpu=True)
        accelerator.state.fsdp_plugin = FullyShardedDataParallelPlugin(
            fsdp_version=2,
            auto_wrap_policy="transformer_based_wrap",
            transformer_cls_names_to_wrap=["LlamaDecoderLayer"],
            state_dict_type="FULL_STATE_DICT",
        )
        accelerator.state.distributed_type = DistributedType.FSDP
        return accelerator

    Accelerator.prepare = prepare_as_fsdp
    wfopt.grpo.distributed.make_accelerator = make_accelerator
register_configs()
with initialize_config_dir(config_dir=spec["conf"], version_base="1.3"):
    cfg = compose(config_name="train", overrides=spec["overrides"])
first = train_policy(cfg, read_trajectories(spec["episodes"][0]), spec["run_dir"],
                     show_progress=False)
second = train_policy(cfg, read_trajectories(spec["episodes"][1]), spec["run_dir"],
                      init_checkpoint=first.checkpoint, show_progress=False)
print("steps", first.step, second.step)
"""

LORA_OVERRIDES = [
    "model.lora.enabled=true",
    "model.lora.r=4",
    "model.lora.target_modules=[q_proj,v_proj]",
    "grpo.lr=1e-2",
    "grpo.beta=0.1",
    "grpo.num_iterations=2",
    "grpo.clip_eps_low=0.05",
    "grpo.clip_eps_high=0.05",
    "grpo.loss_agg=seq_mean_token_mean",
    # hand-made workflows carry no sampled ids; trained as on-policy, so the ratio, its clip
    # and the cached old log-probs (what sharding must preserve) all act
    "grpo.off_policy=as_on_policy",
]


@pytest.fixture(scope="module")
def lora_episodes(tmp_path_factory, tiny_model) -> dict:
    """Two episodes' trajectories, and `train_policy` on them in this one process (the second
    call continuing the first's checkpoint): the reference for the 2-process runs."""
    root = tmp_path_factory.mktemp("lora-episodes")
    episodes = [
        str(write_trajectories(root / f"episode{i}.jsonl", groups))
        for i, groups in enumerate((EPISODE_1, EPISODE_2), start=1)
    ]
    overrides = [*model_overrides(tiny_model), *LORA_OVERRIDES]
    single = root / "single"
    cfg = compose_train_config([*overrides, "grpo.grad_accum_steps=4"])
    first = train_policy(cfg, read_trajectories(episodes[0]), single, show_progress=False)
    second = train_policy(
        cfg,
        read_trajectories(episodes[1]),
        single,
        init_checkpoint=first.checkpoint,
        show_progress=False,
    )
    assert (first.step, second.step) == (4, 8)  # 2 batches x 2 iterations per episode
    return {"episodes": episodes, "overrides": overrides, "single": single}


@pytest.mark.parametrize("mode", ["ddp", pytest.param("fsdp2", marks=pytest.mark.slow)])
def test_train_policy_episodes_lora_kl_iterations_on_two_processes(tmp_path, lora_episodes, mode):
    """`train_policy` twice in one 2-process job (the loop's episodes, the second continuing
    the first's checkpoint, AdamW moments included), with LoRA, a KL term to the adapter-free
    reference, two iterations per batch on cached old log-probs, and seq_mean_token_mean: the
    same as one process. Episode 2 ends on a 1-sample batch, so rank 1 runs only dummy
    micro-batches there. `fsdp2`: the parameters, gradients and optimizer state are sharded
    (accelerate's FSDP2 path, forced onto CPU processes), the checkpoints gathered."""
    spec = {
        "conf": str(REPO / "conf"),
        "episodes": lora_episodes["episodes"],
        "run_dir": str(tmp_path / mode),
        "overrides": [
            *lora_episodes["overrides"],
            "grpo.grad_accum_steps=2",
            f"hardware.distributed={'ddp' if mode == 'ddp' else 'fsdp'}",
        ],
        "fsdp2_on_cpu": mode == "fsdp2",
    }
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    (tmp_path / "worker.py").write_text(WORKER)
    wall = accelerate_launch([str(tmp_path / "worker.py"), str(tmp_path / "spec.json")], tmp_path)
    print(f"\n2-process train_policy x 2 ({mode}): {wall:.1f} s")

    assert_same_training(tmp_path / mode, lora_episodes["single"])
    rows = step_metrics(tmp_path / mode)
    assert [r["step"] for r in rows] == list(range(1, 9))  # one step count across episodes
    assert max(r["train/clip_ratio"] for r in rows) > 0  # the cached old log-probs mattered
    assert max(r["train/kl"] for r in rows) > 0
    state = torch.load(
        tmp_path / mode / "checkpoints/step-000004/trainer_state.pt", weights_only=False
    )
    if mode == "fsdp2":  # gathered by parameter name, and it seeded episode 2's AdamW
        assert set(state["optimizer"]) == {"by_name"}
    else:
        assert set(state["optimizer"]) == {"state", "param_groups"}


# ---------------------------------------------------------------- train_policy across calls


def test_train_policy_continues_steps_optimizer_and_schedule(tmp_path, tiny_model):
    """One process, the loop's use: `init_checkpoint` carries the weights, the AdamW moments
    and the step count over; the warmup happens once, a linear decay restarts per call; the
    caller's tracker sees one increasing step count (shifted by `step_offset`)."""
    from wfopt.grpo import TrainingError
    from wfopt.tracking import Tracker

    episodes = [
        read_trajectories(write_trajectories(tmp_path / f"episode{i}.jsonl", groups))
        for i, groups in enumerate((EPISODE_1, EPISODE_2), start=1)
    ]
    overrides = [*model_overrides(tiny_model), "grpo.grad_accum_steps=4", "grpo.lr=1e-3"]
    cfg = compose_train_config([*overrides, "grpo.warmup_steps=2", "grpo.schedule=linear"])
    run_dir = tmp_path / "loop"
    tracker = Tracker(run_dir, cfg.tracking)
    first = train_policy(cfg, episodes[0], run_dir, tracker=tracker, show_progress=False)
    second = train_policy(
        cfg,
        episodes[1],
        run_dir,
        init_checkpoint=first.checkpoint,
        tracker=tracker,
        show_progress=False,
    )
    assert (first.step, second.step) == (2, 4)
    assert second.checkpoint == run_dir / "checkpoints" / "step-000004"
    assert second.dataset_stats["samples"] == 5 and "train/loss" in second.metrics
    state = torch.load(second.checkpoint / "trainer_state.pt", weights_only=False)
    assert (state["step"], state["start_step"], state["epoch"]) == (4, 2, 1)
    adam_steps = {float(s["step"]) for s in state["optimizer"]["state"].values()}
    assert adam_steps == {4.0}  # the moments saw every update of both calls

    # lr 0 from the second checkpoint: the weights are exactly the checkpoint's
    frozen = compose_train_config([*overrides, "grpo.lr=0"])
    third = train_policy(
        frozen,
        episodes[0],
        run_dir,
        init_checkpoint=second.checkpoint,
        tracker=tracker,
        step_offset=10,
        show_progress=False,
    )
    tracker.finish()
    assert third.step == 6
    before = load_weights(second.checkpoint / "model")
    after = load_weights(third.checkpoint / "model")
    assert all(torch.equal(before[k], after[k]) for k in before)

    rows = step_metrics(run_dir)
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 15, 16]
    # warmup over global steps 1-2, then a fresh linear decay over the second call's 2 steps
    assert [r["train/lr"] for r in rows[:4]] == pytest.approx([5e-4, 1e-3, 1e-3, 5e-4])
    with pytest.raises(TrainingError, match="not both"):
        train_policy(
            cfg,
            episodes[0],
            run_dir,
            init_checkpoint=first.checkpoint,
            resume_checkpoint=first.checkpoint,
        )
