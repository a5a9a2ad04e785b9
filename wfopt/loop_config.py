"""Checks of a loop's config: the `loop` keys and, through their own checks, `mcts` and `grpo`
(`check_loop_config`), and the config a resumed run continues with: its own, with dotted
overrides on top (`resumed_config`)."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from wfopt.config import LoopConfig
from wfopt.loop_errors import LoopError

GROUPS = ("model", "executor", "dataset", "mcts", "grpo", "hardware")


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
    if not 0 < lp.lr_decay <= 1:
        problems.append(f"loop.lr_decay={lp.lr_decay} (must be in (0, 1])")
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
