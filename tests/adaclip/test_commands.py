"""`adaclip init-checkpoint` and `adaclip synth` as a user runs them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from adaclip.checkpoint import load_checkpoint, read_checkpoint_config
from adaclip.cli import SUBCOMMANDS, main
from adaclip.config import tiny_config
from adaclip.model import AdaCLIP


def test_init_checkpoint_with_local_clip_weights(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    torch.manual_seed(3)
    source = AdaCLIP(tiny_config())
    weights = tmp_path / "clip.safetensors"
    save_file({k: v.contiguous() for k, v in source.clip.state_dict().items()}, str(weights))

    out = tmp_path / "ckpt"
    assert (
        main(["init-checkpoint", str(out), "--arch", "tiny", "--clip-weights", str(weights)]) == 0
    )
    config, extra = read_checkpoint_config(out)
    assert extra["kind"] == "init" and config.policy.enabled and config.frame_agg == "mlp"
    model = load_checkpoint(out)
    for name, tensor in source.clip.state_dict().items():
        assert torch.equal(model.clip.state_dict()[name], tensor), name


def test_init_checkpoint_zero_shot_and_bad_weights(tmp_path: Path) -> None:
    assert main(["init-checkpoint", str(tmp_path / "zs"), "--zero-shot", "--top-k", "3"]) == 0
    config, _ = read_checkpoint_config(tmp_path / "zs")
    assert config.zero_shot and config.top_k == 3 and config.aggregation == "mean"
    from adaclip.clip_backbone import ClipWeightsError

    with pytest.raises(ClipWeightsError, match="not found"):
        main(["init-checkpoint", str(tmp_path / "x"), "--clip-weights", str(tmp_path / "none.pt")])


def test_synth_command_writes_videos_and_splits(tmp_path: Path) -> None:
    assert main(["synth", str(tmp_path), "--videos", "5", "--seed", "2", "--frames", "16"]) == 0
    splits = {s: json.loads((tmp_path / f"{s}.json").read_text()) for s in ("train", "val", "test")}
    ids = [vid for split in splits.values() for vid in split]
    assert sorted(ids) == sorted(p.stem for p in tmp_path.glob("*.mp4")) and len(ids) == 5


def test_synth_command_concepts_and_noise(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["synth", str(tmp_path), "--videos", "12", "--frames", "8", "--size", "16"]
    assert main([*args, "--concepts", "4", "--noise", "0"]) == 0
    meta = json.loads((tmp_path / "synth_meta.json").read_text())["videos"]
    assert len({(v["color"], v["shape"], v["motion"]) for v in meta.values()}) == 4
    with pytest.raises(SystemExit) as exit_info:
        main([*args, "--concepts", "999"])
    assert exit_info.value.code == 2 and "concepts must be in 1..128" in capsys.readouterr().err


def test_unknown_command_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["nope"]) == 2
    assert "unknown command" in capsys.readouterr().err
    assert main([]) == 0 and "index" in capsys.readouterr().out


def test_subcommand_help_comes_from_its_settings(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["ls", "--help"])  # click passes --help through to the settings parser
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: adaclip ls") and "--collection" in out and "--json" in out


def test_group_lists_commands_in_order_and_rejects_bad_options(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    listed = out.split("Commands:")[1].splitlines()
    names = [line.split()[0] for line in listed if line.startswith("  ") and line[2] != " "]
    assert names == list(SUBCOMMANDS)
    assert main(["--bogus"]) == 2
    assert "--bogus" in capsys.readouterr().err
