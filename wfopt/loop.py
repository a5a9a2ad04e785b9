"""`wfopt loop`: search -> train -> held-out evaluation, episode after episode, resumable.

Before the first episode the untrained policy is scored on the validation problems. Episode e
then:

1. search: the next `loop.problems_per_episode` training problems (a seeded order), one tree
   each, the current policy proposing children; the policy also writes
   `mcts.policy_samples` workflows per problem from the training prompt as the root's first
   children (its invalid ones join the group at `mcts.invalid_reward`, -1 by default): the
   feedback loop;
2. train: GRPO on this episode's trajectories (plus `loop.replay_episodes` earlier ones) at
   `grpo.lr * loop.lr_decay**e`, continuing from the previous episode's weights and optimizer
   state, or (`loop.build_on` = best_val) from the best policy on validation so far;
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

This module is the episode logic (`Loop`) and the command (`run`). Around it: the state file
(`wfopt.loop_state`), the config checks (`wfopt.loop_config`), the dry-run plan
(`wfopt.loop_plan`), the results table (`wfopt.loop_results`, printed by `wfopt.loop_table`)
and training on several processes (`wfopt.grpo.launch`).

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

from wfopt.errors import InfrastructureError
from wfopt.execution import (
    eval_metrics,
    evaluate_policy,
    evaluate_problems,
    policy_sampling,
    policy_summary,
    summarize,
)
from wfopt.loop_config import check_loop_config, resumed_config
from wfopt.loop_errors import LoopError
from wfopt.loop_plan import plan, print_plan
from wfopt.loop_results import (
    add_paired_comparisons,
    build_on,
    paired_metrics,
    problem_scores,
    result_row,
    select_episode,
)
from wfopt.loop_state import load_state, new_state, save_state
from wfopt.loop_table import print_feedback, print_results
from wfopt.trajectory import TRAJECTORIES

log = logging.getLogger(__name__)


def episode_config(cfg: DictConfig, episode: int) -> DictConfig:
    """`cfg` for training episode `episode` (from 0): `grpo.lr` times `loop.lr_decay**episode`."""
    if cfg.loop.lr_decay == 1:
        return cfg
    return OmegaConf.merge(cfg, {"grpo": {"lr": cfg.grpo.lr * cfg.loop.lr_decay**episode}})


def episode_problems(problems: list[Any], seed: int, start: int, count: int) -> list[Any]:
    """`count` problems from position `start` of a seeded permutation (wrapping around)."""
    order = list(range(len(problems)))
    random.Random(seed).shuffle(order)
    return [problems[order[(start + i) % len(order)]] for i in range(count)]


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
        out = episode_dir / TRAJECTORIES
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
        from wfopt.grpo.launch import launch_training
        from wfopt.grpo.train import NothingToTrain, TrainingError, train_policy

        files = [
            self.run_dir / "episodes" / f"{e:03d}" / TRAJECTORIES
            for e in range(max(0, episode - self.cfg.loop.replay_episodes), episode + 1)
        ]
        files = [f for f in files if f.is_file()]
        cfg = episode_config(self.cfg, episode)
        hw = cfg.hardware
        try:
            if hw.distributed != "no":
                log.info(
                    "episode %d: training on %d processes (%s)",
                    episode,
                    hw.num_processes,
                    hw.distributed,
                )
                trained = launch_training(
                    cfg,
                    files,
                    self.run_dir / "episodes" / f"{episode:03d}" / "train",
                    init_checkpoint=self.state["checkpoint"],
                    first_step=self.state["train_step"],
                    checkpoint_info={"episode": episode},
                    tracker=self.tracker,
                )
            else:
                result = train_policy(
                    cfg,
                    [t for f in files for t in read_trajectories(f)],
                    self.run_dir,
                    init_checkpoint=self.state["checkpoint"],
                    tracker=self.tracker,
                    show_progress=cfg.show_progress,
                    checkpoint_info={
                        "episode": episode,
                        "trajectories": [str(f) for f in files],
                    },
                    first_step=self.state["train_step"],
                )
                trained = {"checkpoint": str(result.checkpoint), "train_step": result.step}
        except NothingToTrain as err:  # no signal in this episode's groups: no update
            log.warning("episode %d: the policy is unchanged: %s", episode, err)
            trained = {
                "checkpoint": self.state["checkpoint"],
                "train_step": self.state["train_step"],
            }
        except TrainingError as err:
            raise LoopError(f"episode {episode}: training failed: {err}") from None
        self.state["trained"] = {"episode": episode, **trained}
        save_state(self.run_dir, self.state)

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
            self.record(result_row("untrained policy", "validation", 0, summary))
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
                result_row(f"episode {episode + 1}", "validation", episode + 1, summary)
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
                self.record(result_row(f"baseline {name}", "test", -1, summary))
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
            self.record(result_row(label, "test", number, summary))
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
            out = self.run_dir / "feedback" / label.replace(" ", "_") / TRAJECTORIES
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
