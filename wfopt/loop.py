"""`wfopt loop`: search -> train -> held-out evaluation, episode after episode, resumable.

Before the first episode the untrained policy is scored on the validation problems. Episode e
then:

1. search: the next `loop.problems_per_episode` training problems (a seeded order), one tree
   each, the current policy proposing children; the policy also writes
   `mcts.policy_samples` workflows per problem from the training prompt as the root's first
   children (its invalid ones join the group at `mcts.invalid_reward`, -1 by default): the
   feedback loop;
2. train: GRPO on this episode's trajectories (plus `loop.replay_episodes` earlier ones),
   continuing from the previous episode's weights and optimizer state, or (`loop.build_on`
   = best_val) from the best policy on validation so far;
3. evaluate: the new policy writes a workflow for each *validation* problem (written again
   when invalid, `loop.eval_invalid_retries` times at most); valid rate,
   accuracy, cost and operator use are logged as `eval/*` (the learning curve);
4. checkpoint: `state.json` (episode, problem cursor, policy checkpoint, global train step,
   W&B run id, the results table) is replaced atomically.

After the last episode, the episode to report is chosen on validation (`loop.select`), and the
*test* problems are scored once: every baseline workflow (`loop.baselines`), the untrained
policy and the selected episode's policy. The final table compares them pairwise on the same
test problems (paired bootstrap and McNemar, `wfopt.stats`), so the headline number is never
chosen on the data it reports.

The executor is the configured model, frozen: only the policy learns, so rewards of later
episodes measure better workflows, not a different executor (and cached executor responses
stay valid). A killed run continues with `resume=RUN_DIR`: finished search problems are kept
(one flushed line each), a finished training is not repeated, and the W&B run is resumed.

Layout of a run directory:

    state.json                     where the loop stands (written atomically)
    episodes/000/trajectories.jsonl   that episode's groups (the `wfopt train` format)
    episodes/000/trees/*.json         its search trees
    checkpoints/step-NNNNNN/          policy checkpoints (see grpo/checkpoint.py)
    eval/<split>-<label>.jsonl        per-problem records of every held-out evaluation
    metrics.jsonl, results.json       all metrics; the final table
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import random
import time
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from wfopt.config import LoopConfig, TrainConfig, config_dir
from wfopt.errors import InfrastructureError
from wfopt.execution import (
    eval_metrics,
    evaluate_policy,
    evaluate_problems,
    policy_sampling,
    policy_summary,
    summarize,
)

log = logging.getLogger(__name__)

STATE_FILE = "state.json"
ACCELERATE_CONFIGS = {"ddp": "ddp.yaml", "fsdp": "fsdp.yaml", "deepspeed": "deepspeed_zero3.yaml"}
GROUPS = ("model", "executor", "dataset", "mcts", "grpo", "hardware")


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class LoopError(RuntimeError):
    """A loop that cannot start or go on; the message says what to do."""


# ------------------------------------------------------------------------------------ state


def new_state() -> dict[str, Any]:
    return {
        "episode": 0,  # episodes completed
        "cursor": 0,  # training problems consumed
        "checkpoint": None,  # the current policy (None: untrained)
        "train_step": 0,  # optimizer steps so far (W&B step of the next metrics)
        "trained": None,  # {"episode", "checkpoint", "train_step"}: trained, not yet evaluated
        "wandb_run_id": None,
        "results": [],  # one row per held-out evaluation (the final table)
        "scores": {},  # "<split>/<label>" -> per-problem scores (for the paired comparisons)
    }


def save_state(run_dir: Path, state: dict[str, Any]) -> None:
    """Write `state.json` atomically: a reader sees the old state or the new, never a mix."""
    tmp = run_dir / f".{STATE_FILE}.tmp"
    with tmp.open("w", encoding="utf-8") as f:
        json.dump(state, f, indent=2)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, run_dir / STATE_FILE)


def load_state(run_dir: Path) -> dict[str, Any]:
    path = run_dir / STATE_FILE
    if not path.is_file():
        raise LoopError(f"resume={run_dir}: no {STATE_FILE} there (not a wfopt loop run?)")
    try:
        return {**new_state(), **json.loads(path.read_text())}
    except json.JSONDecodeError as err:
        raise LoopError(f"{path}: unreadable ({err})") from None


def episode_problems(problems: list[Any], seed: int, start: int, count: int) -> list[Any]:
    """`count` problems from position `start` of a seeded permutation (wrapping around)."""
    order = list(range(len(problems)))
    random.Random(seed).shuffle(order)
    return [problems[order[(start + i) % len(order)]] for i in range(count)]


# ----------------------------------------------------------------------------------- plan


def plan(
    cfg: DictConfig, n_train: int | None = None, n_eval: tuple[int, int] | None = None
) -> dict:
    """Budgets and upper bounds on LLM calls, from the config alone."""
    lp, m = cfg.loop, cfg.mcts
    per_tree_evals = 1 + m.iterations + m.policy_samples
    asks_policy = m.get("edit_share", 0.0) < 1  # edit_share=1: every expansion is an edit
    per_tree_proposals = m.policy_samples + asks_policy * m.iterations * (1 + m.max_invalid_retries)
    problems = lp.episodes * lp.problems_per_episode
    runs = problems * per_tree_evals * m.rollouts
    evals = ((lp.episodes + 1) * lp.val_problems + 2 * lp.test_problems) * lp.eval_samples
    return {
        "episodes": lp.episodes,
        "training problems per episode": lp.problems_per_episode,
        "training problems available": n_train,
        "validation problems (per episode)": f"{lp.val_problems} ({cfg.dataset.name}/validation"
        + (f", {n_eval[0]} available)" if n_eval is not None else ")"),
        "test problems (once, at the end)": f"{lp.test_problems} ({cfg.dataset.name}/test"
        + (f", {n_eval[1]} available)" if n_eval is not None else ")"),
        "baselines (test)": ", ".join(lp.baselines) or "-",
        "workflow evaluations per tree (max)": per_tree_evals,
        "workflow runs, all episodes (max)": runs,
        "executor calls, search (max)": runs * m.max_operator_calls,
        "policy samples, search (max)": problems * per_tree_proposals,
        "policy samples, held-out evaluations": evals,
        "GRPO steps per episode": cfg.grpo.max_steps if cfg.grpo.max_steps else "all samples",
        "feedback search (after the test)": (
            f"{feedback} unseen train problems x 2 policies"
            if (feedback := lp.get("feedback_problems", 0))
            else "-"
        ),
        "policy": f"{cfg.model.name} ({cfg.model.path}), LoRA={cfg.model.lora.enabled}",
        "executor": f"{cfg.executor.backend}"
        + (f" {cfg.executor.model} at {cfg.executor.base_url}" if cfg.executor.base_url else ""),
        "hardware": f"{cfg.hardware.device} {cfg.hardware.dtype}, "
        f"distributed={cfg.hardware.distributed} x{cfg.hardware.num_processes}",
    }


def print_plan(rows: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="wfopt loop plan (dry run: nothing loaded)", show_header=False)
    table.add_column("", style="bold")
    table.add_column("")
    for key, value in rows.items():
        table.add_row(key, "-" if value is None else str(value))
    Console().print(table)


# ------------------------------------------------------------------------------ the loop


class Loop:
    """One loop run: its config, directory, state, dataset, models and tracker."""

    def __init__(self, cfg: DictConfig, run_dir: Path, state: dict[str, Any]) -> None:
        from wfopt.datasets import load_dataset
        from wfopt.llm import build_executor, sampling_params
        from wfopt.policy import load_policy_llm
        from wfopt.tracking import Tracker

        self.cfg, self.run_dir, self.state = cfg, run_dir, state
        lp = cfg.loop
        self.dataset = load_dataset(cfg.dataset)
        self.train_problems = self.dataset.problems("train")
        self.held_out = {
            "validation": self.dataset.problems("validation")[: lp.val_problems],
            "test": self.dataset.problems("test")[: lp.test_problems],
        }
        for split, asked in (("validation", lp.val_problems), ("test", lp.test_problems)):
            if len(self.held_out[split]) < asked:  # never a smaller held-out set in silence
                log.warning(
                    "loop.%s_problems=%d but %s/%s has %d problems: scoring %d (raise "
                    "dataset.num_problems for arithmetic, or use a larger split)",
                    "val" if split == "validation" else split, asked, cfg.dataset.name, split,
                    len(self.held_out[split]), len(self.held_out[split]),
                )  # fmt: skip
        if not self.train_problems or not all(self.held_out.values()):
            counts = ", ".join(f"{len(v)} {k}" for k, v in self.held_out.items())
            raise LoopError(
                f"{cfg.dataset.name}: {len(self.train_problems)} train, {counts} problems; "
                "the loop needs all three"
            )
        self.tracker = Tracker(
            run_dir,
            cfg.tracking,
            OmegaConf.to_container(cfg, resolve=True),
            job_type="loop",
            run_id=state["wandb_run_id"],
        )
        state["wandb_run_id"] = self.tracker.wandb_run_id
        # the frozen executor: the configured model (shared with the untrained policy)
        self.base = (
            None if cfg.executor.backend == "openai" else load_policy_llm(cfg.model, cfg.hardware)
        )
        self.executor = build_executor(
            cfg.model, cfg.executor, cfg.hardware, shared_local=self.base
        )
        self.executor_params = sampling_params(cfg.executor.sampling)
        self.policy = self._load_policy(state["checkpoint"])

    def _load_policy(self, checkpoint: str | None) -> Any:
        from wfopt.policy import load_policy_llm

        if checkpoint is None:
            return self.base or load_policy_llm(self.cfg.model, self.cfg.hardware)
        return load_policy_llm(self.cfg.model, self.cfg.hardware, Path(checkpoint))

    def _cached(self, llm: Any) -> Any:
        from wfopt.llm import CachedLLM

        if not self.cfg.executor.cache:
            return llm
        if isinstance(self.executor, CachedLLM) and self.executor.inner is llm:
            return self.executor
        return CachedLLM(llm, self.cfg.executor.cache_path)

    # -- phases ------------------------------------------------------------------------------

    async def evaluate_policy(self, label: str, split: str) -> dict[str, Any]:
        lp = self.cfg.loop
        start = time.perf_counter()
        problems = self.held_out[split]
        records = await evaluate_policy(
            problems,
            self.dataset,
            self._cached(self.policy),
            self.executor,
            policy_params=policy_sampling(lp.eval_temperature, lp.policy_max_tokens, self.cfg.seed),
            executor_params=self.executor_params,
            samples=lp.eval_samples,
            invalid_retries=lp.eval_invalid_retries,
            max_operator_calls=lp.eval_max_operator_calls,
            timeout_s=lp.eval_timeout_s,
            show_progress=self.cfg.show_progress,
            description=f"{split}: {label}",
        )
        self._write_records(f"{split}-{label}", records)
        self.state["scores"][f"{split}/{label}"] = problem_scores(records, problems)
        return policy_summary(records, time.perf_counter() - start)

    async def evaluate_baseline(self, name: str) -> dict[str, Any]:
        from wfopt.baselines import load_baseline

        lp = self.cfg.loop
        start = time.perf_counter()
        problems = self.held_out["test"]
        records = await evaluate_problems(
            load_baseline(name),
            problems,
            self.dataset,
            self.executor,
            self.executor_params,
            max_operator_calls=lp.eval_max_operator_calls,
            timeout_s=lp.eval_timeout_s,
            show_progress=self.cfg.show_progress,
            description=f"test: baseline {name}",
        )
        self._write_records(f"test-baseline-{name}", records)
        self.state["scores"][f"test/baseline {name}"] = problem_scores(records, problems)
        return summarize(records, time.perf_counter() - start)

    def _write_records(self, label: str, records: list[Any]) -> None:
        from dataclasses import asdict

        out = self.run_dir / "eval"
        out.mkdir(exist_ok=True)
        tmp = out / f".{label}.tmp"
        tmp.write_text("".join(json.dumps(asdict(r)) + "\n" for r in records))
        os.replace(tmp, out / f"{label}.jsonl")

    async def search(self, episode: int) -> Path:
        from wfopt.search.driver import policy_proposer, search_problems
        from wfopt.search.output import finished_problem_ids

        lp = self.cfg.loop
        episode_dir = self.run_dir / "episodes" / f"{episode:03d}"
        out = episode_dir / "trajectories.jsonl"
        problems = episode_problems(
            self.train_problems, self.cfg.seed, self.state["cursor"], lp.problems_per_episode
        )
        done = finished_problem_ids(out)
        todo = [p for p in problems if str(p.id) not in done]
        if done:
            log.info(
                "episode %d: %d problems already searched, %d to go", episode, len(done), len(todo)
            )
        cfg = self.cfg
        proposer = None
        if cfg.mcts.proposer == "policy":
            proposer = policy_proposer(cfg, self.policy, self.executor, self.dataset.kind)
        report = await search_problems(
            todo,
            dataset=self.dataset,
            dataset_name=cfg.dataset.name,
            split="train",
            executor=self.executor,
            params=self.executor_params,
            proposer=proposer,
            cfg=cfg,
            out_path=out,
            trees_dir=episode_dir / "trees",
            show_progress=cfg.show_progress,
        )
        if report.problems:
            metrics = report.metrics()
            self.tracker.log({**metrics, "loop/episode": episode}, step=self.state["train_step"])
        return out

    def train(self, episode: int) -> None:
        from wfopt.grpo.data import read_trajectories
        from wfopt.grpo.train import TrainingError, train_policy

        files = [
            self.run_dir / "episodes" / f"{e:03d}" / "trajectories.jsonl"
            for e in range(max(0, episode - self.cfg.loop.replay_episodes), episode + 1)
        ]
        files = [f for f in files if f.is_file()]
        if self.cfg.hardware.distributed != "no":
            self.state["trained"] = {"episode": episode, **self._train_distributed(episode, files)}
            save_state(self.run_dir, self.state)
            return
        trajectories = [t for f in files for t in read_trajectories(f)]
        try:
            result = train_policy(
                self.cfg,
                trajectories,
                self.run_dir,
                init_checkpoint=self.state["checkpoint"],
                tracker=self.tracker,
                show_progress=self.cfg.show_progress,
                checkpoint_info={"episode": episode, "trajectories": [str(f) for f in files]},
                first_step=self.state["train_step"],
            )
        except TrainingError as err:
            raise LoopError(f"episode {episode}: training failed: {err}") from None
        self.state["trained"] = {
            "episode": episode,
            "checkpoint": str(result.checkpoint),
            "train_step": result.step,
        }
        save_state(self.run_dir, self.state)

    def _train_distributed(self, episode: int, files: list[Path]) -> dict[str, Any]:
        """Train under `accelerate launch` (`hardware.distributed`, `hardware.num_processes`)
        in `episodes/NNN/train/`; its per-step metrics are forwarded to this run's tracker."""
        import subprocess
        import sys

        from wfopt.runtime import threads_per_process

        hw = self.cfg.hardware
        train_dir = self.run_dir / "episodes" / f"{episode:03d}" / "train"
        train_dir.mkdir(parents=True, exist_ok=True)
        (train_dir / "result.json").unlink(missing_ok=True)
        (train_dir / "metrics.jsonl").unlink(missing_ok=True)  # a crashed try's partial log
        config = OmegaConf.to_container(self.cfg, resolve=True)
        import dataclasses

        # the training job's config: the loop's own keys (loop, resume, report, ...) left out
        train_keys = {f.name for f in dataclasses.fields(TrainConfig)} - {"resume"}
        config = {k: v for k, v in config.items() if k in train_keys}  # type: ignore[union-attr]
        config["tracking"]["wandb"] = False  # type: ignore[index]  # this process logs to W&B
        job = {
            "config": config,
            "trajectories": [str(f) for f in files],
            "run_dir": str(train_dir),
            "init_checkpoint": self.state["checkpoint"],
            "first_step": self.state["train_step"],
            "checkpoint_info": {"episode": episode},
        }
        job_file = train_dir / "job.json"
        job_file.write_text(json.dumps(job, indent=2))
        accelerate_config = hw.accelerate_config or str(
            config_dir() / "accelerate" / ACCELERATE_CONFIGS[hw.distributed]
        )
        command = [
            sys.executable, "-m", "accelerate.commands.launch",
            "--config_file", accelerate_config,
            "--num_processes", str(hw.num_processes),
            "--main_process_ip", "127.0.0.1",
            "--main_process_port", str(_free_port()),
            "-m", "wfopt.grpo.launch", str(job_file),
        ]  # fmt: skip
        threads = hw.num_threads or threads_per_process(hw.num_processes)
        env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
        log.info(
            "episode %d: training on %d processes (%s)", episode, hw.num_processes, hw.distributed
        )
        with (train_dir / "train.log").open("w") as out:
            done = subprocess.run(command, stdout=out, stderr=subprocess.STDOUT, env=env)
        if done.returncode != 0 or not (train_dir / "result.json").is_file():
            raise LoopError(
                f"episode {episode}: distributed training failed (exit code {done.returncode}); "
                f"see {train_dir / 'train.log'}"
            )
        for line in (train_dir / "metrics.jsonl").read_text().splitlines():
            record = json.loads(line)
            if "step" in record:
                step = record.pop("step")
                record.pop("time", None)
                self.tracker.log(record, step=step)
        result = json.loads((train_dir / "result.json").read_text())
        return {"checkpoint": result["checkpoint"], "train_step": result["step"]}

    # -- the whole run -----------------------------------------------------------------------

    def record(self, row: dict[str, Any]) -> None:
        self.state["results"].append(row)
        self.record_all()

    def record_all(self) -> None:
        save_state(self.run_dir, self.state)
        tmp = self.run_dir / ".results.json.tmp"
        tmp.write_text(json.dumps(self.state["results"], indent=2))
        os.replace(tmp, self.run_dir / "results.json")

    async def run(self) -> None:
        state, lp = self.state, self.cfg.loop
        done = {(row["split"], row["label"]) for row in state["results"]}
        if ("validation", "untrained policy") not in done:
            summary = await self.evaluate_policy("untrained policy", "validation")
            self.tracker.log(eval_metrics(summary), step=0)
            self.record(_row("untrained policy", "validation", 0, summary))
        while state["episode"] < lp.episodes:
            episode = state["episode"]
            log.info("episode %d/%d", episode + 1, lp.episodes)
            if state["trained"] is None:
                await self.search(episode)
                await self._release_policy()
                self.train(episode)
            trained = state["trained"]
            self.policy = self._load_policy(trained["checkpoint"])
            summary = await self.evaluate_policy(f"episode {episode + 1}", "validation")
            state["train_step"] = trained["train_step"]
            self.tracker.log(
                {**eval_metrics(summary), "loop/episode": episode + 1}, step=state["train_step"]
            )
            state["checkpoints"] = {
                **state.get("checkpoints", {}),
                str(episode + 1): trained["checkpoint"],
            }
            state["results"].append(
                _row(f"episode {episode + 1}", "validation", episode + 1, summary)
            )
            start = build_on(state["results"], state["checkpoints"], lp.build_on)
            if start != trained["checkpoint"]:
                log.info(
                    "episode %d: the next episode builds on %s",
                    episode + 1,
                    start or "the untrained policy",
                )
                await self._release_policy()
                self.policy = self._load_policy(start)
            state.update(
                episode=episode + 1,
                cursor=state["cursor"] + lp.problems_per_episode,
                checkpoint=start,
                trained=None,
            )
            self.record_all()
        await self.final_test(done)
        await self.feedback()

    async def final_test(self, done: set[tuple[str, str]]) -> None:
        """Score the test problems once: each baseline, the untrained policy and the episode
        selected on validation; then the paired comparisons between them."""
        state, lp = self.state, self.cfg.loop
        for name in lp.baselines:
            if ("test", f"baseline {name}") not in done:
                summary = await self.evaluate_baseline(name)
                self.tracker.log(
                    eval_metrics(summary, f"test_baseline/{name}"), step=state["train_step"]
                )  # W&B drops a step below the current one
                self.record(_row(f"baseline {name}", "test", -1, summary))
        await self._release_policy()
        candidates = [("untrained policy", 0, None)]
        episode = select_episode(state["results"], lp.select)
        if episode is not None:
            checkpoint = state.get("checkpoints", {}).get(str(episode), state["checkpoint"])
            candidates.append((f"episode {episode} (selected)", episode, checkpoint))
        for label, number, checkpoint in candidates:
            if ("test", label) in done:
                continue
            self.policy = self._load_policy(checkpoint)
            summary = await self.evaluate_policy(label, "test")
            metrics = {f"test/{k.split('/', 1)[1]}": v for k, v in eval_metrics(summary).items()}
            self.tracker.log(metrics, step=state["train_step"])
            self.record(_row(label, "test", number, summary))
            await self._release_policy()
        add_paired_comparisons(state["results"], state["scores"], lp.baselines)
        self.record_all()
        self.tracker.summary(paired_metrics(state["results"]))

    async def feedback(self) -> None:
        """Better policy -> better search? The next `loop.feedback_problems` training problems
        (never searched by an episode), searched once with the untrained policy and once with
        the selected one, same config and seeds. Per arm: solved fraction, mean best reward
        per tree, evaluations to the first solving workflow (solved trees)."""
        from wfopt.search.driver import policy_proposer, search_problems

        state, cfg = self.state, self.cfg
        count = cfg.loop.feedback_problems
        episode = select_episode(state["results"], cfg.loop.select)
        if not count or episode is None or "feedback" in state:
            return
        problems = episode_problems(self.train_problems, cfg.seed, state["cursor"], count)
        selected = state.get("checkpoints", {}).get(str(episode), state["checkpoint"])
        arms = {}
        for label, checkpoint in (("untrained policy", None), (f"episode {episode}", selected)):
            self.policy = self._load_policy(checkpoint)
            proposer = None
            if cfg.mcts.proposer == "policy":
                proposer = policy_proposer(cfg, self.policy, self.executor, self.dataset.kind)
            out = self.run_dir / "feedback" / label.replace(" ", "_") / "trajectories.jsonl"
            out.unlink(missing_ok=True)  # a killed try's trees: searched again, whole
            report = await search_problems(
                problems, dataset=self.dataset, dataset_name=cfg.dataset.name, split="train",
                executor=self.executor, params=self.executor_params, proposer=proposer,
                cfg=cfg, out_path=out, show_progress=cfg.show_progress,
            )  # fmt: skip
            metrics = report.metrics()
            arms[label] = {
                "problems": report.problems,
                "solved_fraction": metrics["search/solved_fraction"],
                "best_reward_mean": metrics["search/best_reward_mean"],
                "evaluations_to_first_solve": metrics.get("search/evaluations_to_first_solve"),
                "first_solve": report.first_solve,
                "best_rewards": report.best_rewards,
            }
            await self._release_policy()
        state["feedback"] = arms
        save_state(self.run_dir, state)
        (self.run_dir / "feedback.json").write_text(json.dumps(arms, indent=2))
        self.tracker.summary(
            {
                f"feedback/{'trained' if i else 'untrained'}/{key}": arm[key]
                for i, arm in enumerate(arms.values())
                for key in ("solved_fraction", "best_reward_mean", "evaluations_to_first_solve")
                if arm[key] is not None
            }
        )

    async def _release_policy(self) -> None:
        """Free a trained policy's memory before training loads the weights again."""
        if self.policy is not self.base:
            await self.policy.aclose()
            self.policy = self.base

    async def close(self) -> None:
        await self.executor.aclose()
        if self.policy is not self.base and self.policy is not None:
            await self.policy.aclose()


def _row(label: str, split: str, episode: int, summary: dict[str, Any]) -> dict[str, Any]:
    return {
        "label": label,
        "split": split,
        "episode": episode,
        "n": summary["n"],
        "valid_rate": summary.get("valid_rate"),
        "valid_rate_ci95": summary.get("valid_rate_ci95"),
        "first_valid_rate": summary.get("first_valid_rate"),
        "accuracy": summary["accuracy"],
        "accuracy_ci95": summary["accuracy_ci95"],
        "mean_tokens": summary["mean_tokens"],
        "cost_usd": summary["cost_usd"],
        "operator_use": summary.get("operator_use"),
        "answer_in_code_rate": summary.get("answer_in_code_rate"),
        "wall_time_s": summary["wall_time_s"],
    }


def problem_scores(records: list[Any], problems: list[Any]) -> list[float]:
    """One score per problem, in `problems` order: the mean over that problem's records (the
    policy may write several workflows per problem)."""
    totals: dict[str, list[float]] = {str(p.id): [] for p in problems}
    for r in records:
        totals[str(r.problem_id)].append(r.score)
    return [sum(v) / len(v) if v else 0.0 for v in totals.values()]


def select_episode(rows: list[dict[str, Any]], rule: str, first: int = 1) -> int | None:
    """The episode to report on test, chosen on validation rows only: the highest validation
    accuracy (ties: the later episode), or the last one. None before any episode. `first=0`
    lets the untrained policy (episode 0) compete."""
    episodes = [r for r in rows if r["split"] == "validation" and r["episode"] >= first]
    if not episodes:
        return None
    if rule == "last":
        return max(r["episode"] for r in episodes)
    return max(episodes, key=lambda r: (r["accuracy"], r["episode"]))["episode"]


def build_on(rows: list[dict[str, Any]], checkpoints: dict[str, str], rule: str) -> str | None:
    """The checkpoint the next episode trains from (None: the untrained policy): the last
    episode's, or (`best_val`) the best on validation so far, the untrained policy included."""
    episode = select_episode(rows, rule, first=0)
    return checkpoints.get(str(episode)) if episode else None


def add_paired_comparisons(
    rows: list[dict[str, Any]], scores: dict[str, list[float]], baselines: list[str]
) -> None:
    """Give every test row of a policy `vs_untrained` and `vs_best_baseline`: the paired
    comparison (difference [95% CI], bootstrap and McNemar p) on the same test problems. The
    best baseline is the one with the highest test accuracy (the hardest reference)."""
    from wfopt.stats import compare_paired

    test = {r["label"]: r for r in rows if r["split"] == "test"}
    present = [f"baseline {b}" for b in baselines if f"baseline {b}" in test]
    best = max(present, key=lambda label: test[label]["accuracy"], default=None)
    for label, row in test.items():
        if label.startswith("baseline "):
            continue
        mine = scores[f"test/{label}"]
        if label != "untrained policy" and "test/untrained policy" in scores:
            row["vs_untrained"] = compare_paired(mine, scores["test/untrained policy"]).as_dict()
        if best is not None:
            row["vs_best_baseline"] = {
                "baseline": best,
                **compare_paired(mine, scores[f"test/{best}"]).as_dict(),
            }


def paired_metrics(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Summary metrics of the selected episode's paired comparisons (`test/paired/*`)."""
    out: dict[str, Any] = {}
    for row in rows:
        if row["split"] != "test" or not row["label"].endswith("(selected)"):
            continue
        for key in ("vs_untrained", "vs_best_baseline"):
            if key in row:
                c = row[key]
                out[f"test/paired/{key}/diff"] = c["diff"]
                out[f"test/paired/{key}/ci_low"], out[f"test/paired/{key}/ci_high"] = c["ci95"]
                out[f"test/paired/{key}/p_bootstrap"] = c["p_bootstrap"]
                if c["p_mcnemar"] is not None:
                    out[f"test/paired/{key}/p_mcnemar"] = c["p_mcnemar"]
    return out


def _paired_cell(comparison: dict[str, Any] | None) -> str:
    if not comparison:
        return "-"
    low, high = comparison["ci95"]
    p = (
        comparison["p_mcnemar"]
        if comparison["p_mcnemar"] is not None
        else comparison["p_bootstrap"]
    )
    return f"{comparison['diff']:+.2f} [{low:+.2f}, {high:+.2f}] p={p:.3f}"


def print_results(rows: list[dict[str, Any]], title: str) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    columns = ("", "split", "valid rate (95% CI)", "accuracy (95% CI)", "answer in code")
    columns = (*columns, "mean tokens", "n")
    for column in (*columns, "vs untrained", "vs best baseline"):
        table.add_column(column, justify="right")
    for row in rows:
        valid = "-"
        if row["valid_rate"] is not None:
            low, high = row["valid_rate_ci95"]
            valid = f"{row['valid_rate']:.2f} [{low:.2f}, {high:.2f}]"
            first = row.get("first_valid_rate")
            if first is not None and first != row["valid_rate"]:
                valid += f" (first try {first:.2f})"
        low, high = row["accuracy_ci95"]
        table.add_row(
            row["label"],
            row.get("split", "-"),
            valid,
            f"{row['accuracy']:.2f} [{low:.2f}, {high:.2f}]",
            "-" if row.get("answer_in_code_rate") is None else f"{row['answer_in_code_rate']:.2f}",
            f"{row['mean_tokens']:.0f}",
            str(row["n"]),
            _paired_cell(row.get("vs_untrained")),
            _paired_cell(row.get("vs_best_baseline")),
        )
    Console().print(table)
    Console().print(
        "paired columns: test accuracy difference [95% paired-bootstrap CI], McNemar's exact p "
        "(bootstrap p when scores are not 0/1); the episode is selected on validation; "
        "answer in code: share of valid policy workflows whose code spells the answer; "
        "first try: valid as first written, before loop.eval_invalid_retries"
    )


def print_feedback(arms: dict[str, dict[str, Any]]) -> None:
    """The feedback comparison (`loop.feedback_problems`) as a table."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title="search on unseen train problems, by the policy proposing")
    for column in ("policy", "trees", "solved", "mean best reward", "evals to first solve"):
        table.add_column(column, justify="left" if column == "policy" else "right")
    for label, arm in arms.items():
        first = arm["evaluations_to_first_solve"]
        table.add_row(
            label,
            str(arm["problems"]),
            f"{arm['solved_fraction']:.3f}",
            f"{arm['best_reward_mean']:.3f}",
            "-" if first is None else f"{first:.2f}",
        )
    Console().print(table)


def check_loop_config(cfg: DictConfig) -> None:
    from wfopt.grpo.train import TrainingError, check_config
    from wfopt.search.driver import check_mcts_config

    lp = cfg.loop
    problems = [
        f"loop.{k}={lp[k]} (must be >= 1)"
        for k in (
            "episodes",
            "problems_per_episode",
            "val_problems",
            "test_problems",
            "eval_samples",
        )
        if lp[k] < 1
    ]
    from wfopt.baselines import list_baselines

    known = list_baselines()
    problems += [
        f"loop.baselines: unknown workflow {b!r} (known: {', '.join(known)})"
        for b in lp.baselines
        if b not in known
    ]
    problems += [
        f"loop.{k}={lp[k]} (must be >= 0)"
        for k in ("replay_episodes", "feedback_problems")
        if lp[k] < 0
    ]
    if problems:
        raise LoopError("invalid loop config: " + "; ".join(problems))
    check_mcts_config(cfg.mcts)
    try:
        check_config(cfg.grpo)
    except TrainingError as err:
        raise LoopError(str(err)) from None


def resumed_config(run_dir: Path, overrides: list[str]) -> DictConfig:
    """The run's own config (`.hydra/config.yaml`), with this command's `key.path=value`
    overrides on top (e.g. `loop.episodes=6` to extend a run). Choosing another config group
    option (`model=...`) cannot apply to a run half done: that is an error."""
    saved = run_dir / ".hydra" / "config.yaml"
    if not saved.is_file():
        raise LoopError(f"resume={run_dir}: {saved} is missing, so its config is unknown")
    dotted = []
    for override in overrides:
        key = override.split("=", 1)[0].lstrip("+~")
        if key == "resume":
            continue
        if key in GROUPS:
            raise LoopError(
                f"resume: `{override}` would swap a config group of a run half done; "
                "a resumed loop keeps its own config (dotted overrides such as "
                "loop.episodes=N still apply)"
            )
        dotted.append(override.lstrip("+"))
    schema = OmegaConf.structured(LoopConfig)
    try:
        merged = OmegaConf.merge(schema, OmegaConf.load(saved))
    except OmegaConfBaseException as err:  # e.g. a key an older wfopt had
        raise LoopError(
            f"resume={run_dir}: its saved config does not fit this version of wfopt's "
            f"schema ({err.__class__.__name__}: {str(err).splitlines()[0]}); resume it with "
            "the wfopt version that started it"
        ) from err
    merged = OmegaConf.merge(merged, OmegaConf.from_dotlist(dotted))
    merged.resume = str(run_dir)
    return merged  # type: ignore[return-value]


def run(cfg: DictConfig) -> float:
    """Hydra entry point of `wfopt loop`; returns the last held-out accuracy."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.utils import to_absolute_path

    from wfopt.runtime import check_writable, run_dir_error, setup_runtime
    from wfopt.search.errors import SearchError

    setup_runtime(cfg)
    try:
        check_loop_config(cfg)
        if cfg.dry_run:
            from wfopt.datasets import load_dataset

            dataset = load_dataset(cfg.dataset)
            held_out = (len(dataset.problems("validation")), len(dataset.problems("test")))
            print_plan(plan(cfg, len(dataset.problems("train")), held_out))
            return 0.0
        if cfg.resume:
            run_dir = Path(to_absolute_path(cfg.resume))
            state = load_state(run_dir)
            cfg = resumed_config(run_dir, HydraConfig.get().overrides.task)
            log.info("resuming %s after episode %d", run_dir, state["episode"])
        else:
            run_dir = Path(HydraConfig.get().runtime.output_dir)
            state = new_state()
        check_writable(run_dir)
        loop = Loop(cfg, run_dir, state)
        save_state(run_dir, state)
    except (
        LoopError,
        SearchError,
        InfrastructureError,
        FileNotFoundError,
        KeyError,
        ValueError,
    ) as err:
        raise SystemExit(f"wfopt loop: {err}") from None

    async def main() -> None:
        try:
            await loop.run()
        finally:
            await loop.close()

    start = time.perf_counter()
    try:
        asyncio.run(main())
    except (InfrastructureError, OSError) as err:  # wfopt's fault: no score or reward recorded
        loop.tracker.finish()
        if isinstance(err, OSError):  # a run-directory write (state, records, checkpoints)
            err = run_dir_error(Path(err.filename or run_dir), err)
        raise SystemExit(
            f"wfopt loop: episode {state['episode'] + 1} failed, {err.describe()}\n"
            f"Nothing is half-written; continue with resume={run_dir}"
        ) from None
    except (LoopError, SearchError) as err:
        loop.tracker.finish()
        raise SystemExit(f"wfopt loop: {err}\ncontinue with resume={run_dir}") from None
    rows = state["results"]
    loop.tracker.summary(
        {"loop/wall_time_s": time.perf_counter() - start, "loop/episodes": state["episode"]}
    )
    from wfopt.report import report_at_end

    report_at_end(run_dir, cfg, loop.tracker)  # report.html + figures (report=false: none)
    loop.tracker.finish()
    print_results(rows, f"held-out {cfg.dataset.name}: baselines and policy-written workflows")
    if state.get("feedback"):
        print_feedback(state["feedback"])
    log.info("loop finished: %s", run_dir)
    selected = [r for r in rows if r["split"] == "test" and r["label"].endswith("(selected)")]
    return float(selected[-1]["accuracy"]) if selected else 0.0
