"""The ``adaclip`` program: a click command group, one subcommand per job.

Each subcommand is imported only when it runs, which keeps ``adaclip --help`` fast and the
model package free of Ray, Qdrant and the web stack until a subcommand needs them. Click
owns the command level (help, dispatch, unknown commands, exit codes); a subcommand's own
flags are parsed by its pydantic-settings model (``pipelines.settings.parse_settings``),
so every flag and its ``ADACLIP_*`` variable are declared exactly once, in that model, and
``adaclip <command> --help`` is generated from it by :func:`parse_flags`, in the shape of a
standard CLI: ``--checkpoint PATH``, ``--num-workers N``, ``--use-gpu / --no-use-gpu``.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Literal, TypeVar, Union, get_args, get_origin

import click

if TYPE_CHECKING:
    from pydantic.fields import FieldInfo
    from pydantic_settings import BaseSettings

S = TypeVar("S", bound="BaseSettings")

# subcommand -> (module, function, one-line help)
SUBCOMMANDS: dict[str, tuple[str, str, str]] = {
    "init-checkpoint": (
        "adaclip.commands",
        "init_checkpoint_main",
        "write an untrained AdaCLIP checkpoint folder",
    ),
    "index": ("pipelines.index", "main", "bulk-index videos (s3://, folder, manifest) into Qdrant"),
    "ls": ("pipelines.ls", "main", "list the videos of an index (uri, etag, duration, model)"),
    "watch": (
        "pipelines.watch",
        "main",
        "keep an index in sync with a bucket or folder (S3 events via SQS, or polling)",
    ),
    "store": (
        "pipelines.store.actor",
        "main",
        "status or stop of the store actors that own embedded indexes on a Ray cluster",
    ),
    "demo": ("demo.run", "main", "synthesise, train, index and search end to end (a few minutes)"),
    "synth": ("adaclip.commands", "synth_main", "generate a synthetic captioned video set"),
    "prepare": ("adaclip.prepare", "prepare_main", "build split files from original annotations"),
    "train": ("train.run", "main", "train AdaCLIP with Ray Train (DDP, elastic, fault tolerant)"),
    "eval": ("train.inference", "main", "retrieval metrics of a checkpoint on a split"),
    "serve": ("serve.cli", "serve_main", "run the HTTP search API (Ray Serve) over an index"),
    "search": ("serve.cli", "search_main", "query a running search server (or the index, --local)"),
    "publish": ("serve.rollout", "publish_main", "copy a checkpoint to an immutable <model_id>/"),
    "alias": ("serve.rollout", "alias_main", "point a collection alias at a per-model collection"),
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


# Metavars by the last word of a field's name (``--qdrant-url URL``, ``--checkpoint PATH``);
# other names show their last word (``--collection COLLECTION``, ``--api-key KEY``).
_PATH_WORDS = {"annotations", "checkpoint", "config", "output", "path", "root", "weights"}
_NUMBER_WORDS = {"s": "SECONDS", "mb": "MB", "port": "PORT"}
_TRUE, _FALSE = {"true", "1", "yes", "on"}, {"false", "0", "no", "off"}


def _value_type(annotation: Any) -> Any:
    """``annotation`` without ``None`` (``int | None`` -> ``int``)."""
    if get_origin(annotation) in (Union, type(int | None)):
        rest = [a for a in get_args(annotation) if a is not type(None)]
        return rest[0] if len(rest) == 1 else annotation
    return annotation


def _is_bool(field: FieldInfo) -> bool:
    return _value_type(field.annotation) is bool


def flag_metavar(name: str, field: FieldInfo) -> str | None:
    """The metavar of field ``name`` in ``--help`` (None: a bool flag or a choice)."""
    extra = field.json_schema_extra
    if isinstance(extra, dict) and isinstance(extra.get("metavar"), str):
        return str(extra["metavar"])
    kind = _value_type(field.annotation)
    origin = get_origin(kind)
    if kind is bool or origin is Literal:
        return None
    if origin is dict or kind is dict:
        return "JSON"
    if origin is list or kind is list:
        return "LIST"
    last = name.rsplit("_", 1)[-1]
    if name.startswith("num_") or (kind in (int, float) and last not in _NUMBER_WORDS):
        return "N"
    if kind in (int, float):
        return _NUMBER_WORDS[last]
    return "PATH" if last in _PATH_WORDS or name == "workdir" else last.upper()


def flag_help(field: FieldInfo, positional: bool = False) -> str:
    """A field's description and its default, as ``--help`` shows them."""
    text = field.description or ""
    if field.is_required():
        return text if positional else f"{text} (required)".strip()
    default = field.get_default(call_default_factory=True)
    shown = "(default" in text or default is None or default is False or default in ({}, [])
    if not shown:
        value = json.dumps(default) if isinstance(default, bool | dict | list) else default
        text = f"{text} (default: {value})".strip()
    return text.replace("%", "%%")


def _bool_values_as_flags(fields: dict[str, FieldInfo], argv: list[str]) -> list[str]:
    """``--use-gpu true`` / ``--use-gpu=false`` (the form of older commands) as the flags
    ``--use-gpu`` / ``--no-use-gpu``."""
    flags = {"--" + n.replace("_", "-") for n, f in fields.items() if _is_bool(f)}
    out: list[str] = []
    i = 0
    while i < len(argv):
        word = argv[i]
        flag, eq, value = word.partition("=")
        if not eq and flag in flags and i + 1 < len(argv) and argv[i + 1].lower() in _TRUE | _FALSE:
            value, i = argv[i + 1], i + 1
        if flag in flags and value.lower() in _TRUE | _FALSE:
            word = flag if value.lower() in _TRUE else "--no-" + flag[2:]
        out.append(word)
        i += 1
    return out


def _readable_help(parser: argparse.ArgumentParser, fields: dict[str, FieldInfo]) -> None:
    for action in parser._actions:
        field = fields.get(action.dest)
        if field is None or isinstance(action, argparse._HelpAction):
            continue
        if action.option_strings:
            action.metavar = flag_metavar(action.dest, field)
            if action.metavar is None and action.choices is None and not _is_bool(field):
                action.metavar = (
                    "{" + ",".join(map(str, get_args(_value_type(field.annotation)))) + "}"
                )
        action.help = flag_help(field, positional=not action.option_strings)


def parse_flags(cls: type[S], argv: Sequence[str], prog: str) -> S:
    """Parse ``argv`` over the ``ADACLIP_*`` environment into settings model ``cls``.

    ``prog --help`` prints the model as a standard CLI: one metavar per value
    (``--checkpoint PATH``), bool fields as ``--flag`` / ``--no-flag`` (a ``bool | None``
    field stays unset, its automatic choice, unless one is given), defaults that exist.

    Args:
        cls: the command's settings model (a pydantic-settings ``BaseSettings``).
        argv: the command's arguments, without the program name.
        prog: the program name in usage lines and errors.

    Returns:
        The validated settings.
    """
    from pydantic_settings import CliApp, CliSettingsSource

    fields = dict(cls.model_fields)
    source: CliSettingsSource[Any] = CliSettingsSource(
        cls,
        cli_prog_name=prog,
        cli_hide_none_type=True,
        case_sensitive=bool(cls.model_config.get("case_sensitive", False)),
    )
    _readable_help(source.root_parser, fields)
    args = _bool_values_as_flags(fields, list(argv))
    return CliApp.run(cls, cli_args=args, cli_settings_source=source)


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
