"""`wfopt` command line: a Typer router whose subcommands are genuine Hydra applications.

Typer only picks the subcommand; everything after it (overrides, `-m`, `--cfg job`, `--help`,
`hydra/launcher=joblib`) goes untouched to `hydra.main`, so sweeps, launchers, output
directories and Hydra's help all behave exactly as in any Hydra app.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable
from pathlib import Path

import hydra
import typer
from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from wfopt.config import register_configs

app = typer.Typer(
    help="Teach a language model to write agentic workflows (MCTS search + GRPO).",
    no_args_is_help=True,
    add_completion=False,
)

# subcommand -> (module, function taking the composed DictConfig), imported lazily so that
# `wfopt --help` does not pay for torch/transformers imports.
COMMANDS: dict[str, tuple[str, str, str]] = {
    "evaluate": ("wfopt.evaluate", "run", "Run a workflow over a dataset split and score it."),
    "search": ("wfopt.search", "run", "MCTS workflow search; writes GRPO trajectories."),
    "train": ("wfopt.grpo", "run", "GRPO on search trajectories."),
    "loop": ("wfopt.loop", "run", "search -> train -> held-out evaluation, repeated."),
}


def config_dir() -> Path:
    """`conf/` in a source checkout, or `wfopt/conf/` inside an installed wheel."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "conf", here.parent / "conf"):
        if (candidate / "evaluate.yaml").is_file():
            return candidate
    raise FileNotFoundError(f"wfopt config directory not found next to {here}")


def _resolve(command: str) -> Callable[[DictConfig], object]:
    module_name, attr, _ = COMMANDS[command]
    return getattr(importlib.import_module(module_name), attr)


class RunDirCheck(Callback):
    """Before Hydra writes `.hydra/` into the run (or sweep) directory: a directory that cannot
    take a write (read-only, full) is a one-line error naming it, not Hydra's traceback."""

    def __init__(self, command: str = "") -> None:
        self.command = command

    def _check(self, where: object) -> None:
        from wfopt.errors import RunDirError
        from wfopt.runtime import check_writable

        try:
            check_writable(Path(str(where)).absolute())
        except RunDirError as err:  # SystemExit: Hydra's error report would add a traceback
            raise SystemExit(f"wfopt {self.command}: {err.describe()}") from None

    def on_run_start(self, config: DictConfig, **kwargs: object) -> None:
        self._check(config.hydra.run.dir)

    def on_multirun_start(self, config: DictConfig, **kwargs: object) -> None:
        self._check(config.hydra.sweep.dir)


def run_hydra_command(command: str, args: list[str]) -> None:
    """Run `command` as a Hydra app over `args` (what followed the subcommand name)."""
    register_configs()
    target = _resolve(command)

    @hydra.main(config_path=str(config_dir()), config_name=command, version_base="1.3")
    def _main(cfg: DictConfig) -> object:
        from wfopt.errors import InfrastructureError

        try:
            return target(cfg)
        except InfrastructureError as err:  # a clear message, not a traceback, wherever it rose
            raise SystemExit(f"wfopt {command}: {err.describe()}") from None

    check = [
        "+hydra.callbacks.wfopt_run_dir._target_=wfopt.cli.RunDirCheck",
        f"+hydra.callbacks.wfopt_run_dir.command={command}",
    ]
    help_only = any(a in ("--help", "-h", "--hydra-help", "--info", "--cfg", "-c") for a in args)
    saved = sys.argv
    sys.argv = [f"wfopt {command}", *args, *([] if help_only else check)]
    try:
        _main()
    finally:
        sys.argv = saved


def _add_command(name: str, help_text: str) -> None:
    @app.command(
        name,
        help=f"{help_text} Hydra overrides follow, e.g. `dataset.limit=20`; `--help` lists groups.",
        context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
        add_help_option=False,
    )
    def _command(ctx: typer.Context) -> None:
        run_hydra_command(name, list(ctx.args))


for _name, (_, _, _help) in COMMANDS.items():
    _add_command(_name, _help)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
