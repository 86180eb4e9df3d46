"""`adaclip <command> --help` reads like a standard CLI: one metavar per value
(`--checkpoint PATH`, `--num-workers N`), bool fields as `--flag, --no-flag`, no
pydantic type names (`{str,null}`, `dict[str,float]`) and no `(default: null)`."""

from __future__ import annotations

import re

import pytest

from adaclip.cli import SUBCOMMANDS, main

TYPE_METAVAR = re.compile(r"--[a-z0-9-]+ (str|int|float|bool|dict|list)\b|\{(str|int|bool|float)")


def help_of(command: str, capsys: pytest.CaptureFixture[str]) -> str:
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code in (0, None)
    return capsys.readouterr().out


def settings_of(command: str) -> type | None:
    from demo.settings_doc import ENTRY_POINTS, _load

    paths = dict(ENTRY_POINTS)
    return _load(paths[f"adaclip {command}"]) if f"adaclip {command}" in paths else None


@pytest.mark.parametrize("command", list(SUBCOMMANDS))
def test_help_reads_like_a_standard_cli(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    from adaclip.cli import flag_metavar

    out = help_of(command, capsys)
    assert out.startswith(f"usage: adaclip {command}")
    assert "null" not in out and not TYPE_METAVAR.search(out), out
    model = settings_of(command)
    if model is None:  # an argparse command (init-checkpoint, synth, prepare)
        return
    shortcuts = model.model_config.get("cli_shortcuts") or {}
    for name, field in model.model_fields.items():
        flag = name.replace("_", "-")
        if any(getattr(m, "__name__", "") == "_CliPositionalArg" for m in field.metadata):
            assert name.upper() in out.split("\n\n")[0], f"{command}: positional {name}"
            continue
        metavar = flag_metavar(name, field)
        if metavar is None and "bool" in str(field.annotation):
            assert f"--{flag}, --no-{flag}" in out, f"{command}: --{flag} is not a flag pair"
        elif metavar is None:  # a choice
            assert re.search(rf"--{flag} \{{[a-z,]+\}}", out), f"{command}: --{flag}"
        else:
            assert re.fullmatch(r"[A-Z]+", metavar), (name, metavar)
            assert f"--{flag} {metavar}" in out, f"{command}: --{flag} {metavar}"
        for alias in [shortcuts.get(flag)] if isinstance(shortcuts.get(flag), str) else []:
            assert f"--{alias}" in out


def test_help_shows_the_metavars_and_defaults_a_user_expects(
    capsys: pytest.CaptureFixture[str],
) -> None:
    index = help_of("index", capsys)
    for text in (
        "--checkpoint PATH",
        "--qdrant-url URL",
        "--decode-actors N",
        "--decode-resources JSON",
        "--use-gpu, --no-use-gpu",
        "[--use-gpu | --no-use-gpu]",
        "(default: 224)",
        "SOURCE",
    ):
        assert text in index, text
    assert "(default: {})" not in index and "(default: False)" not in index
    train = help_of("train", capsys)
    assert "--num-workers N" in train and "--dataset {msrvtt,didemo,activitynet,synthetic}" in train
    assert "--amp, --no-amp" in train and "(default: true)" in train
    assert "--port PORT" in help_of("serve", capsys)
    assert "--timeout-s SECONDS" in help_of("search", capsys)


def test_bool_flags_and_their_older_value_form_parse_alike(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from pipelines.settings import IndexSettings, parse_settings

    monkeypatch.delenv("ADACLIP_USE_GPU", raising=False)

    def use_gpu(*args: str) -> bool | None:
        return parse_settings(IndexSettings, ["./videos", *args], "adaclip index").use_gpu

    assert use_gpu() is None  # unset: the job decides from the cluster
    assert use_gpu("--use-gpu") is True and use_gpu("--no-use-gpu") is False
    assert use_gpu("--use-gpu", "true") is True and use_gpu("--use-gpu=false") is False
    settings = parse_settings(
        IndexSettings, ["--use-gpu", "false", "./videos", "--prune"], "adaclip index"
    )
    assert settings.source == "./videos" and settings.use_gpu is False and settings.prune
    with pytest.raises(SystemExit):
        parse_settings(IndexSettings, ["./videos", "--use-gpu", "maybe"], "adaclip index")
