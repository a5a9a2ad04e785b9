"""One GRPO update step: wfopt vs TRL's GRPO loss path vs the naive seed formulation.

Same model (SmolLM2-135M-Instruct, fp32, CPU, full fine-tuning, 1 torch thread per process
unless `--threads`), same batch (8 sequences of
~300 tokens: the chat prompt with operator docs + a workflow, two groups of four), same
settings (token-mean loss, clip 0.2/0.2, beta = 0.04 with given reference log-probs, given old
log-probs so the ratio is not 1 and clipping acts), same update (backward, grad-norm clip 1.0,
AdamW lr 1e-6, fused where torch supports it, for every variant). What differs is how
log-probs and the loss are computed:

- `wfopt`: `GRPOTrainer.train_step` -- backbone hidden states, then the fused chunked LM head
  on response positions only (logits never stored, recomputed in backward).
- `wfopt-logits`: `compute_grpo_loss` on the model's full `[B, T, V]` logits (the pure-math
  API: gather response rows, logsumexp in chunks).
- `trl`: TRL's own `GRPOTrainer._compute_loss` and `_get_per_token_logps_and_entropies`
  (unbound methods on a minimal stand-in for the trainer, no Trainer loop, no generation),
  with the model patched by TRL's `add_fused_lm_head(outputs=("log_probs", "entropy"))` as
  its trainer does; `loss_type="bnpo"` = token mean over the batch. Inputs in TRL's layout
  (prompt | completion); every prompt has the same length so no padding separates the two.
- `naive`: the seed's formulation done right: full logits, full `log_softmax` `[B, T, V]`,
  gather with the shift, same loss formula.

Each variant runs in fresh subprocesses (so peak memory is its own), `rounds` times in a
rotating order (a shared machine's load drifts; every variant sees it): load the model, check
the loss values of the three aggregations against the initial weights (TRL: bnpo / grpo /
dr_grpo), then `warmup + repeats` timed steps while a thread samples the process RSS every
2 ms. glibc is told to return freed blocks >= 1 MiB to the OS (`MALLOC_MMAP_THRESHOLD_`), so
RSS tracks live tensors. Reported: median step time over all timed steps, peak RSS during the
steps, and that peak minus the RSS before the first step ("step mem": activations, logits,
gradients, AdamW state -- the part the loss path can change). The default variants are wfopt,
trl and naive; add `wfopt-logits` with `--variants`.

    .venv/bin/python bench/bench_grpo.py [--rounds 2] [--repeats 2] [--threads 1] [--variants ...]

Needs `trl` (benchmark-only; not a wfopt dependency).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a file: make `wfopt` importable from the checkout
    sys.path.insert(0, str(REPO))

VARIANTS = ("wfopt", "wfopt-logits", "trl", "naive")
SETTINGS = {
    "clip_eps_low": 0.2,
    "clip_eps_high": 0.2,
    "beta": 0.04,
    "lr": 1e-6,
    "max_grad_norm": 1.0,
    "max_response_length": 256,  # Dr. GRPO's constant (TRL: max_completion_length)
}
AGG_TO_TRL = {
    "token_mean": "bnpo",
    "seq_mean_token_mean": "grpo",
    "seq_mean_token_sum_norm": "dr_grpo",
}

WORKFLOW_PARTS = [
    "    drafts = [await answer_generate(problem) for _ in range({k})]\n",
    '    program = await programmer(problem, "Compute the result exactly.")\n',
    "    best = await ensemble(problem, drafts + [program])\n",
    "    feedback = await review(problem, best)\n",
    '    if not feedback.upper().startswith("CORRECT"):\n'
    "        best = await revise(problem, best, feedback)\n",
    '    note = await generate(problem, "List the quantities and the operation needed.")\n',
    "    answer = await format_answer(problem, best)\n",
]


# ---------------------------------------------------------------- shared helpers


def load_model_and_tokenizer() -> tuple[Any, Any]:
    """The embedded SmolLM2-135M-Instruct in fp32 on CPU, through wfopt's loader."""
    from omegaconf import OmegaConf

    from wfopt.config import ModelConfig
    from wfopt.models import load_causal_lm, load_tokenizer

    cfg = OmegaConf.merge(
        OmegaConf.structured(ModelConfig), OmegaConf.load(REPO / "conf/model/smollm2_135m.yaml")
    )
    model = load_causal_lm(cfg, dtype="float32", device="cpu")
    return model, load_tokenizer(cfg)


def make_workflow(i: int) -> str:
    """A plausible workflow of ~100-250 tokens, different for every i."""
    body = [WORKFLOW_PARTS[0].format(k=3 + i % 3)]
    for j in range(1, len(WORKFLOW_PARTS)):
        if (i + j) % 4 != 0:
            body.append(WORKFLOW_PARTS[j])
    body.append("    return answer\n" if "answer =" in "".join(body) else "    return best\n")
    doc = f'    """Variant {i}: draft, program, vote, review and format."""\n'
    return "async def solve(problem):\n" + doc + "".join(body * (1 + i % 2))


def build_batch(tokenizer: Any, batch_size: int) -> dict[str, torch.Tensor]:
    """`batch_size` samples in two groups, prompts of one length, collated (right padding)."""
    from wfopt.grpo.data import TrajectoryDataset, collate_samples

    problems = ["What is 12 * 7 + 3?", "What is 15 * 4 + 9?"]
    per_group = batch_size // len(problems)
    trajectories = [
        {
            "problem": p,
            "problem_id": g,
            "workflow_codes": [make_workflow(g * per_group + i) for i in range(per_group)],
            "rewards": [float((g + i) % 3 == 0) for i in range(per_group)],
        }
        for g, p in enumerate(problems)
    ]
    dataset = TrajectoryDataset(trajectories, tokenizer, max_length=1024)
    prompt_lengths = {int((s["response_mask"] == 0).sum()) for s in dataset.samples}
    if len(prompt_lengths) != 1:
        raise RuntimeError(f"prompts must share one length for TRL's layout: {prompt_lengths}")
    return collate_samples(dataset.samples, int(tokenizer.pad_token_id or 0))


class RssSampler:
    """Peak resident set size of this process, sampled every `interval` s in a thread."""

    def __init__(self, interval: float = 0.002) -> None:
        import psutil

        self._proc = psutil.Process()
        self.interval = interval
        self.peak = self._proc.memory_info().rss
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def rss(self) -> int:
        return self._proc.memory_info().rss

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.rss())
            time.sleep(self.interval)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.rss())


# ---------------------------------------------------------------- variants (run in a worker)


def _naive_log_probs(model: Any, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    ids, attn = batch["input_ids"], batch["attention_mask"]
    logits = model(input_ids=ids, attention_mask=attn, use_cache=False).logits
    log_probs = torch.log_softmax(logits.float(), dim=-1)  # the full (B, T, V) copy
    lp = torch.zeros(ids.shape)
    lp[:, 1:] = log_probs[:, :-1].gather(-1, ids[:, 1:, None]).squeeze(-1)
    with torch.no_grad():
        ent = torch.zeros(ids.shape)
        ent[:, 1:] = -(log_probs[:, :-1].exp() * log_probs[:, :-1]).sum(-1)
    mask = batch["response_mask"]
    return lp * mask, ent * mask


def _wfopt_loss(lp, ent, batch, agg: str) -> dict:
    from wfopt.grpo.losses import policy_loss

    return policy_loss(
        lp,
        batch["response_mask"],
        batch["advantages"],
        batch["old_log_probs"],
        batch["ref_log_probs"],
        ent,
        clip_eps_low=SETTINGS["clip_eps_low"],
        clip_eps_high=SETTINGS["clip_eps_high"],
        beta=SETTINGS["beta"],
        loss_agg=agg,
        max_response_length=SETTINGS["max_response_length"],
    )


class _TRLStandIn:
    """The attributes TRL's `_compute_loss` reads from its trainer, for one plain GRPO setup."""

    def __init__(self, model: Any, loss_type: str) -> None:
        from collections import defaultdict
        from types import MethodType, SimpleNamespace

        from accelerate import Accelerator
        from trl import GRPOTrainer as TRLGRPOTrainer

        self.model = model
        self.accelerator = Accelerator(cpu=True)
        self.loss_type = loss_type
        self.beta = SETTINGS["beta"]
        self.epsilon_low = SETTINGS["clip_eps_low"]
        self.epsilon_high = SETTINGS["clip_eps_high"]
        self.max_completion_length = SETTINGS["max_response_length"]
        self.importance_sampling_level = "token"
        self.top_entropy_quantile = 1.0
        self.off_policy_mask_threshold = None
        self.use_vllm = False
        self.aux_loss_enabled = False
        self._entropy_bonus_enabled = False
        self.current_gradient_accumulation_steps = 1
        self.args = SimpleNamespace(delta=None, use_bias_correction_kl=False)
        self._metrics = {"train": defaultdict(list), "eval": defaultdict(list)}
        self._get_per_token_logps_and_entropies = MethodType(
            TRLGRPOTrainer._get_per_token_logps_and_entropies, self
        )
        self._compute_loss_fn = TRLGRPOTrainer._compute_loss

    def compute_loss(self, inputs: dict) -> torch.Tensor:
        return self._compute_loss_fn(self, self.model, inputs)


def _trl_inputs(batch: dict) -> dict:
    mask = batch["response_mask"]
    prompt_len = int(mask[0].nonzero()[0])  # the same for every row (checked in build_batch)
    return {
        "prompt_ids": batch["input_ids"][:, :prompt_len],
        "prompt_mask": batch["attention_mask"][:, :prompt_len],
        "completion_ids": batch["input_ids"][:, prompt_len:],
        "completion_mask": mask[:, prompt_len:],
        "advantages": batch["advantages"],
        "old_per_token_logps": batch["old_log_probs"][:, prompt_len:],
        "ref_per_token_logps": batch["ref_log_probs"][:, prompt_len:],
    }


def _prepare(variant: str, model: Any, batch: dict) -> tuple[Any, Any, dict[str, float]]:
    """(step_loss() -> loss tensor, log_probs() -> (B, T), loss of each aggregation)."""
    losses: dict[str, float] = {}
    if variant == "trl":
        from trl.trainer.utils import add_fused_lm_head

        add_fused_lm_head(model, outputs=("log_probs", "entropy"))
        stand_ins = {agg: _TRLStandIn(model, t) for agg, t in AGG_TO_TRL.items()}
        inputs = _trl_inputs(batch)
        prompt_len = inputs["prompt_ids"].shape[1]
        with torch.no_grad():
            for agg, stand_in in stand_ins.items():
                losses[agg] = float(stand_in.compute_loss(inputs))

        def trl_log_probs() -> torch.Tensor:
            lp, _, _ = stand_ins["token_mean"]._get_per_token_logps_and_entropies(
                model,
                batch["input_ids"],
                batch["attention_mask"],
                inputs["completion_ids"].shape[1],
            )
            out = torch.zeros(batch["input_ids"].shape)
            out[:, prompt_len:] = lp
            return out * batch["response_mask"]

        return (lambda: stand_ins["token_mean"].compute_loss(inputs)), trl_log_probs, losses

    from wfopt.grpo.logprobs import token_log_probs
    from wfopt.grpo.losses import compute_grpo_loss
    from wfopt.grpo.model import position_ids, sequence_log_probs

    if variant == "wfopt":

        def lp_fn(grad: bool = False):
            return sequence_log_probs(model, batch, fused=True)

    elif variant == "wfopt-logits":

        def lp_fn(grad: bool = False):
            logits = model(
                input_ids=batch["input_ids"],
                attention_mask=batch["attention_mask"],
                position_ids=position_ids(batch["attention_mask"]),
                use_cache=False,
            ).logits
            return token_log_probs(logits, batch["input_ids"], batch["response_mask"])

    else:

        def lp_fn(grad: bool = False):
            return _naive_log_probs(model, batch)

    with torch.no_grad():
        lp, ent = lp_fn()
        for agg in AGG_TO_TRL:
            losses[agg] = float(_wfopt_loss(lp, ent, batch, agg)["loss"])

    if variant == "wfopt-logits":

        def step_loss():
            logits = model(
                input_ids=batch["input_ids"],
                attention_mask=batch["attention_mask"],
                position_ids=position_ids(batch["attention_mask"]),
                use_cache=False,
            ).logits
            return compute_grpo_loss(
                logits,
                batch["input_ids"],
                batch["response_mask"],
                batch["advantages"],
                batch["old_log_probs"],
                batch["ref_log_probs"],
                clip_eps_low=SETTINGS["clip_eps_low"],
                clip_eps_high=SETTINGS["clip_eps_high"],
                beta=SETTINGS["beta"],
            )["loss"]

    else:

        def step_loss():
            lp, ent = lp_fn(grad=True)
            return _wfopt_loss(lp, ent, batch, "token_mean")["loss"]

    return step_loss, (lambda: lp_fn()[0]), losses


def worker(
    variant: str, batch_file: Path, repeats: int, warmup: int, out_file: Path, threads: int
) -> None:
    if threads > 0:
        torch.set_num_threads(threads)
    torch.manual_seed(0)
    batch = torch.load(batch_file)
    model, _ = load_model_and_tokenizer()
    model.train()
    from wfopt.grpo.model import disable_dropout

    disable_dropout(model)
    trainer = None
    if variant == "wfopt":
        from wfopt.config import GRPOConfig
        from wfopt.grpo.trainer import GRPOTrainer

        cfg = GRPOConfig(
            micro_batch_size=batch["input_ids"].shape[0],
            lr=SETTINGS["lr"],
            beta=SETTINGS["beta"],
            clip_eps_low=SETTINGS["clip_eps_low"],
            clip_eps_high=SETTINGS["clip_eps_high"],
            max_grad_norm=SETTINGS["max_grad_norm"],
            max_response_length=SETTINGS["max_response_length"],
        )
        trainer = GRPOTrainer(model, cfg, pad_token_id=0)
    step_loss, log_probs_fn, losses = _prepare(variant, model, batch)
    with torch.no_grad():
        log_probs = log_probs_fn()
    from wfopt.grpo.optimizer import make_optimizer

    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = make_optimizer(params, SETTINGS["lr"])  # the same AdamW as GRPOTrainer's

    def step() -> None:
        if trainer is not None:
            trainer.train_step(batch)  # forward, backward, clip, AdamW, scheduler
            return
        step_loss().backward()
        torch.nn.utils.clip_grad_norm_(params, SETTINGS["max_grad_norm"])
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    sampler = RssSampler()
    baseline = sampler.rss()
    times, cpu_times = [], []
    with sampler:
        for _ in range(warmup + repeats):
            start, cpu_start = time.perf_counter(), time.process_time()
            step()
            times.append(time.perf_counter() - start)
            cpu_times.append(time.process_time() - cpu_start)
    import resource

    result = {
        "variant": variant,
        "times": times[warmup:],
        "warmup_times": times[:warmup],
        "cpu_times": cpu_times[warmup:],
        "baseline_rss": baseline,
        "peak_rss": sampler.peak,
        "ru_maxrss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "losses": losses,
        "log_probs": log_probs.tolist(),
        "threads": torch.get_num_threads(),
    }
    out_file.write_text(json.dumps(result))


# ---------------------------------------------------------------- driver


def prepare_batch(path: Path, batch_size: int) -> dict[str, Any]:
    """Tokenized batch + old/ref log-probs (old = reference-path log-probs + noise)."""
    model, tokenizer = load_model_and_tokenizer()
    batch = build_batch(tokenizer, batch_size)
    with torch.no_grad():
        lp, _ = _naive_log_probs(model, batch)
    g = torch.Generator().manual_seed(0)
    mask = batch["response_mask"]
    batch["old_log_probs"] = (lp + 0.3 * torch.randn(lp.shape, generator=g)) * mask
    batch["ref_log_probs"] = (lp - 0.2 * torch.rand(lp.shape, generator=g)) * mask
    torch.save(batch, path)
    return {
        "sequences": int(mask.shape[0]),
        "width": int(mask.shape[1]),
        "tokens": int(batch["attention_mask"].sum()),
        "response_tokens": int(mask.sum()),
        "prompt_tokens": int(mask[0].nonzero()[0]),
    }


def run_variant(
    variant: str, batch_file: Path, repeats: int, warmup: int, threads: int
) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "result.json"
        cmd = [
            sys.executable,
            str(Path(__file__).resolve()),
            "--worker",
            variant,
            "--batch-file",
            str(batch_file),
            "--repeats",
            str(repeats),
            "--warmup",
            str(warmup),
            "--out",
            str(out),
            "--threads",
            str(threads),
        ]
        # A fixed mmap threshold makes glibc return every freed block >= 1 MiB to the OS at
        # once, so RSS follows live tensor memory instead of the allocator's high-water mark.
        env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": str(1 << 20)}
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
        if proc.returncode != 0:
            raise RuntimeError(f"{variant} worker failed:\n{proc.stderr[-3000:]}")
        return json.loads(out.read_text())


def report(info: dict[str, Any], results: dict[str, dict[str, Any]]) -> None:
    """A rich table: time and memory of each variant, ratios to TRL (else to wfopt), loss
    agreement with TRL for the three matched aggregations, log-prob agreement with naive."""
    from rich.console import Console
    from rich.table import Table

    gb = 1024**3
    base_name = "trl" if "trl" in results else next(iter(results))
    base = results[base_name]
    base_time = statistics.median(base["times"])
    base_cpu = statistics.median(base["cpu_times"])
    base_mem = base["peak_rss"] - base["baseline_rss"]
    naive_lp = torch.tensor(results["naive"]["log_probs"]) if "naive" in results else None
    trl_losses = results["trl"]["losses"] if "trl" in results else None
    threads = next(iter(results.values()))["threads"]
    table = Table(
        title=(
            f"One GRPO update step, SmolLM2-135M fp32 on CPU ({threads} threads): "
            f"{info['sequences']} seqs, {info['tokens']} tokens ({info['prompt_tokens']}-token "
            f"prompts, {info['response_tokens']} response tokens), padded width {info['width']}"
        )
    )
    columns = [
        "variant",
        "median s",
        "min s",
        f"time / {base_name}",
        "CPU s",
        f"CPU / {base_name}",
        "peak RSS GB",
        "step mem GB",
        f"step mem / {base_name}",
        "loss (token_mean)",
        "max |Δloss| vs trl, 3 aggs",
        "max |Δlogp| vs naive",
    ]
    for column in columns:
        table.add_column(column, justify="right")
    for variant, r in results.items():
        median = statistics.median(r["times"])
        cpu = statistics.median(r["cpu_times"])
        step_mem = r["peak_rss"] - r["baseline_rss"]
        loss_diff = "-"
        if trl_losses:
            loss_diff = f"{max(abs(r['losses'][a] - trl_losses[a]) for a in AGG_TO_TRL):.1e}"
        lp_diff = "-"
        if naive_lp is not None:
            lp_diff = f"{(torch.tensor(r['log_probs']) - naive_lp).abs().max().item():.1e}"
        table.add_row(
            variant,
            f"{median:.2f}",
            f"{min(r['times']):.2f}",
            f"{median / base_time:.2f}x",
            f"{cpu:.1f}",
            f"{cpu / base_cpu:.2f}x",
            f"{r['peak_rss'] / gb:.2f}",
            f"{step_mem / gb:.2f}",
            f"{step_mem / base_mem:.2f}x",
            f"{r['losses']['token_mean']:.6f}",
            loss_diff,
            lp_diff,
        )
    console = Console(width=max(Console().width, 190))
    console.print(table)
    console.print(
        f"times: median of {len(base['times'])} steps after warmup (wall clock, and CPU time "
        "of the process: all threads, less sensitive to a shared machine); step mem = peak RSS "
        "(sampled every 2 ms) during the steps minus RSS before the first step; "
        "each variant in a fresh process."
    )


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--variants", default="wfopt,trl,naive", help=f"comma-separated, of {', '.join(VARIANTS)}"
    )
    parser.add_argument("--rounds", type=int, default=1, help="fresh processes per variant")
    parser.add_argument("--repeats", type=int, default=2, help="timed steps per process")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads per worker (0 = torch default). 1 by default: on a shared 2-core "
        "machine, 2 OpenMP threads stall at every barrier and time mostly measures the load",
    )
    parser.add_argument("--json", type=Path, default=None, help="also write results here")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--batch-file", type=Path, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv if argv is not None else [])
    if args.worker:
        worker(args.worker, args.batch_file, args.repeats, args.warmup, args.out, args.threads)
        return {}
    try:
        import trl  # noqa: F401
    except ImportError:
        print("bench_grpo: `trl` is not installed; comparing wfopt and naive only")
        args.variants = ",".join(v for v in args.variants.split(",") if v != "trl")
    variants = [v for v in args.variants.split(",") if v]
    with tempfile.TemporaryDirectory() as tmp:
        batch_file = Path(tmp) / "batch.pt"
        info = prepare_batch(batch_file, args.batch_size)
        results: dict[str, dict[str, Any]] = {}
        for round_index in range(args.rounds):
            # rotate the order each round: slow drifts of a shared machine hit every variant
            shift = round_index % len(variants)
            for variant in variants[shift:] + variants[:shift]:
                r = run_variant(variant, batch_file, args.repeats, args.warmup, args.threads)
                if variant not in results:
                    results[variant] = r
                else:
                    results[variant]["times"] += r["times"]
                    results[variant]["cpu_times"] += r["cpu_times"]
                    results[variant]["peak_rss"] = max(results[variant]["peak_rss"], r["peak_rss"])
                    results[variant]["baseline_rss"] = min(
                        results[variant]["baseline_rss"], r["baseline_rss"]
                    )
        results = {v: results[v] for v in variants}
    report(info, results)
    summary = {
        "batch": info,
        "results": {v: {k: r[k] for k in r if k != "log_probs"} for v, r in results.items()},
    }
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2))
    return summary


if __name__ == "__main__":
    main(sys.argv[1:])
