"""`wfopt` command line: a Typer router whose subcommands are genuine Hydra applications.

Typer only picks the subcommand; everything after it (overrides, `-m`, `--cfg job`, `--help`,
`hydra/launcher=joblib`) goes untouched to `hydra.main`, so sweeps, launchers, output
directories and Hydra's help all behave exactly as in any Hydra app.
"""

from __future__ import annotations

import importlib
import logging
import sys
from collections.abc import Callable
from pathlib import Path

import hydra
import typer
from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from wfopt.config import config_dir, register_configs

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


def _resolve(command: str) -> Callable[[DictConfig], object]:
    module_name, attr, _ = COMMANDS[command]
    return getattr(importlib.import_module(module_name), attr)


def detect_hardware() -> tuple[str, str]:
    """(hardware option, why): gpu (CUDA, bf16) when a CUDA device is visible, else cpu."""
    import torch

    if torch.cuda.is_available():
        return "gpu", f"CUDA device found: {torch.cuda.get_device_name(0)}"
    return "cpu", "no CUDA device"


def _names_group(arg: str, group: str) -> bool:
    """Whether a command-line argument chooses (or removes) config group `group`."""
    key = arg.split("=", 1)[0].lstrip("+~")
    return key == group or key.endswith(f"/{group}") or key.startswith(f"{group}@")


def with_default_hardware(args: list[str], command: str = "") -> tuple[list[str], str | None]:
    """`args` plus `hardware=<what this machine has>` unless they choose `hardware=` already
    (explicit hardware=cpu|gpu|multi_gpu wins) or resume a loop (which keeps its own config);
    the second item says what was picked and why."""
    if any(_names_group(a, "hardware") for a in args):
        return args, None
    if command == "loop" and any(a.startswith("resume=") for a in args):
        return args, None
    choice, why = detect_hardware()
    # next to the other overrides: argparse takes them as one run of positionals
    at = next((i for i, a in enumerate(args) if "=" in a and not a.startswith("-")), len(args))
    picked = f"hardware={choice}"
    return [*args[:at], picked, *args[at:]], f"{picked} ({why}; pass hardware=... to choose)"


# Errors whose message says everything: shown without a traceback.
def _user_errors() -> tuple[type[BaseException], ...]:
    from wfopt.datasets.base import DatasetError
    from wfopt.models import ModelLoadError

    return (DatasetError, ModelLoadError)


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
    args, picked = with_default_hardware(args, command)

    @hydra.main(config_path=str(config_dir()), config_name=command, version_base="1.3")
    def _main(cfg: DictConfig) -> object:
        from wfopt.errors import InfrastructureError

        if picked:
            logging.getLogger("wfopt").info("%s", picked)
        try:
            return target(cfg)
        except InfrastructureError as err:  # a clear message, not a traceback, wherever it rose
            raise SystemExit(f"wfopt {command}: {err.describe()}") from None
        except _user_errors() as err:
            raise SystemExit(f"wfopt {command}: {err}") from None

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


@app.command("report")
def report_command(
    run_dir: Path = typer.Argument(..., help="a loop, train, search or evaluate run, or a sweep"),
) -> None:
    """Plots and one self-contained HTML page (report.html) for a run directory."""
    from wfopt.report import ReportError, write_report

    try:
        page = write_report(run_dir)
    except ReportError as err:
        raise SystemExit(f"wfopt report: {err}") from None
    typer.echo(f"report: {page}")


@app.command("export")
def export_command(
    source: Path = typer.Argument(..., help="a checkpoint, or a train/loop run (its latest)"),
    out_dir: Path = typer.Argument(..., help="where to write the Hugging Face model directory"),
) -> None:
    """A plain Hugging Face model dir (LoRA merged): `vllm serve OUT_DIR` serves it."""
    from wfopt.export import ExportError, export_policy

    try:
        out = export_policy(source, out_dir)
    except ExportError as err:
        raise SystemExit(f"wfopt export: {err}") from None
    typer.echo(f"exported to {out}")


@app.command("import-aflow")
def import_aflow_command(
    graph_dir: Path = typer.Argument(..., help="AFlow workflow: a dir with graph.py + prompt.py"),
    out: Path = typer.Argument(..., help="the wfopt workflow file to write"),
) -> None:
    """Convert an AFlow workflow (graph.py + prompt.py) into a wfopt workflow file."""
    from wfopt.aflow import AFlowError, convert_file

    try:
        code = convert_file(graph_dir)
    except AFlowError as err:
        raise SystemExit(f"wfopt import-aflow: {err}") from None
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(f"# converted from {graph_dir} by `wfopt import-aflow`\n{code}")
    typer.echo(f"wrote {out}; run it with `wfopt evaluate workflow.path={out}`")


@app.command("keys")
def keys(
    command: str = typer.Argument(..., help="evaluate | search | train | loop"),
    prefix: str = typer.Argument("", help="only keys starting with this, e.g. grpo or mcts.sel"),
) -> None:
    """Every config key of COMMAND: its type (or allowed values), default and help text."""
    from wfopt.config import COMMAND_SCHEMAS, describe_keys

    if command not in COMMAND_SCHEMAS:
        raise typer.BadParameter(f"{command!r}; choose from {', '.join(COMMAND_SCHEMAS)}")
    rows = [r for r in describe_keys(COMMAND_SCHEMAS[command]) if r[0].startswith(prefix)]
    if not rows:
        raise typer.BadParameter(f"no key of `wfopt {command}` starts with {prefix!r}")
    # plain lines (one key, then its help), so they grep and never wrap mid-value
    lines = [f"# wfopt {command}: schema defaults (conf/ presets override some: --cfg job)"]
    for key, kind, default, help_text in rows:
        lines.append(f"{key}  [{kind}]" if kind == "group" else f"{key}: {kind} = {default}")
        lines.append(f"    {help_text}")
    typer.echo("\n".join(lines))


def main() -> None:
    from wfopt.runtime import passive_openmp

    passive_openmp()  # before torch loads (see there)
    app()


if __name__ == "__main__":
    main()
