"""Every command and flag the README shows exists in the CLI (the README is parsed)."""

from __future__ import annotations

import contextlib
import importlib
import io
import re
import shlex
from pathlib import Path

import pytest

from adaclip.cli import SUBCOMMANDS

README = Path(__file__).resolve().parents[2] / "README.md"
MODULE_COMMANDS = {
    "pipelines.index": "index",
    "train.run": "train",
    "train.inference": "eval",
    "demo.run": "demo",
}


def readme_commands() -> list[list[str]]:
    """Shell commands in the README's bash blocks, continuation lines joined."""
    blocks = re.findall(r"```bash\n(.*?)```", README.read_text(), re.S)
    commands = []
    for block in blocks:
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split(" # ")[0].strip()
            if line and not line.startswith("#"):
                commands.append(shlex.split(line))
    return commands


def adaclip_invocations() -> list[tuple[str, list[str]]]:
    """(subcommand, args) for every `adaclip X` and `python -m module` in the README."""
    found = []
    for argv in readme_commands():
        if "--" in argv and argv[0] == "ray":
            argv = argv[argv.index("--") + 1 :]
        if argv and argv[0] == "adaclip":
            found.append((argv[1], argv[2:]))
        elif argv[:2] == ["python", "-m"]:
            assert argv[2] in MODULE_COMMANDS, f"README runs unknown module {argv[2]}"
            found.append((MODULE_COMMANDS[argv[2]], argv[3:]))
    return found


def help_text(command: str) -> str:
    module, func, _ = SUBCOMMANDS[command]
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit) as exit_info:
        getattr(importlib.import_module(module), func)(["--help"])
    assert exit_info.value.code in (0, None)
    return out.getvalue()


def test_readme_shows_the_two_setup_commands() -> None:
    commands = [" ".join(c) for c in readme_commands()]
    assert "make install" in commands and "make test" in commands


def test_every_readme_command_and_flag_exists() -> None:
    invocations = adaclip_invocations()
    assert len(invocations) >= 8
    helps: dict[str, str] = {}
    for command, args in invocations:
        assert command in SUBCOMMANDS, f"README uses `adaclip {command}`, which does not exist"
        if command not in helps:
            helps[command] = help_text(command)
        for arg in args:
            if arg.startswith("--"):
                flag = arg.split("=")[0]
                assert re.search(re.escape(flag) + r"\b", helps[command]), (
                    f"README passes {flag} to `adaclip {command}`, which has no such flag"
                )


def test_serve_run_arguments_are_settings_fields() -> None:
    from serve.settings import ServeSettings

    runs = [c for c in readme_commands() if c[:2] == ["serve", "run"]]
    assert runs, "the README shows `serve run`"
    for argv in runs:
        module, attr = argv[2].split(":")
        assert callable(getattr(importlib.import_module(module), attr))
        for kv in argv[3:]:
            assert kv.split("=")[0] in ServeSettings.model_fields, kv


def test_configuration_reference_is_generated_from_the_settings() -> None:
    from demo.settings_doc import BEGIN, END, render

    text = README.read_text()
    block = text[text.index(BEGIN) : text.index(END) + len(END)]
    assert block == render(), "run: python -m demo.settings_doc --write"
