"""The ``adaclip`` program: a click command group, one subcommand per job.

Each subcommand is imported only when it runs, which keeps ``adaclip --help`` fast and the
model package free of Ray, Qdrant and the web stack until a subcommand needs them. Click
owns the command level (help, dispatch, unknown commands, exit codes); a subcommand's own
flags are parsed by its pydantic-settings model (``pipelines.settings.parse_settings``),
so every flag and its ``ADACLIP_*`` variable are declared exactly once, in that model, and
``adaclip <command> --help`` is generated from it.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Sequence
from typing import Any

import click

# subcommand -> (module, function, one-line help)
SUBCOMMANDS: dict[str, tuple[str, str, str]] = {
    "init-checkpoint": (
        "adaclip.commands",
        "init_checkpoint_main",
        "write an untrained AdaCLIP checkpoint folder",
    ),
    "index": ("pipelines.index", "main", "bulk-index videos (s3://, folder, manifest) into Qdrant"),
    "ls": ("pipelines.ls", "main", "list the videos of an index (uri, etag, duration, model)"),
    "demo": ("demo.run", "main", "synthesise, train, index and search end to end (a few minutes)"),
    "synth": ("adaclip.commands", "synth_main", "generate a synthetic captioned video set"),
    "prepare": ("adaclip.prepare", "prepare_main", "build split files from original annotations"),
    "train": ("train.run", "main", "train AdaCLIP with Ray Train (DDP, elastic, fault tolerant)"),
    "eval": ("train.inference", "main", "retrieval metrics of a checkpoint on a split"),
    "serve": ("serve.cli", "serve_main", "run the HTTP search API (Ray Serve) over an index"),
    "search": ("serve.cli", "search_main", "query a running search server (or the index, --local)"),
}

# The subcommand's parser sees every argument, --help included.
_PASS_THROUGH = {"ignore_unknown_options": True, "allow_extra_args": True, "help_option_names": []}


def _lazy_command(name: str) -> click.Command:
    module_name, func_name, short_help = SUBCOMMANDS[name]

    def invoke(args: tuple[str, ...]) -> int:
        func = getattr(importlib.import_module(module_name), func_name)
        return int(func(list(args)) or 0)

    return click.Command(
        name,
        callback=invoke,
        params=[click.Argument(["args"], nargs=-1, type=click.UNPROCESSED)],
        context_settings=_PASS_THROUGH,
        short_help=short_help,
        help=f"{short_help}. Run `adaclip {name} --help` for its options.",
        add_help_option=False,
    )


class LazyGroup(click.Group):
    """Lists SUBCOMMANDS in their declared order and imports one only when it is invoked."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(SUBCOMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        return _lazy_command(cmd_name) if cmd_name in SUBCOMMANDS else None


def _help_when_no_command() -> None:
    ctx = click.get_current_context()
    if ctx.invoked_subcommand is None:
        click.echo(ctx.get_help())


cli = LazyGroup(
    "adaclip",
    help="AdaCLIP on Ray: index videos, train, serve and search.",
    context_settings={"help_option_names": ["-h", "--help"]},
    invoke_without_command=True,
    callback=_help_when_no_command,
)


def usage() -> str:
    """The group's help text."""
    with click.Context(cli, info_name="adaclip") as ctx:
        return cli.get_help(ctx)


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``adaclip`` with ``argv``; the subcommand's return value is the exit code."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["help"]:
        args = ["--help"]
    try:
        result: Any = cli.main(args=args, prog_name="adaclip", standalone_mode=False)
    except click.UsageError as exc:
        message = exc.format_message()
        if "No such command" in message:
            message = f"unknown command {args[0]!r}"
        click.echo(f"adaclip: {message}\n\n{usage()}", err=True)
        return 2
    except click.exceptions.Exit as exc:
        return int(exc.exit_code)
    except click.Abort:
        return 130
    if isinstance(result, int):
        return result
    return 0


def run() -> None:
    """Console-script entry point."""
    sys.exit(main())


if __name__ == "__main__":
    run()
