"""``adaclip eval --zero-shot``: plain CLIP weights tested on a split in one command."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
import torch

from adaclip.clip_backbone import build_clip
from adaclip.commands import init_checkpoint_main
from adaclip.config import TINY_CLIP_CFG
from adaclip.synth import generate_dataset
from train.inference import main as eval_main
from train.inference import run_inference
from train.settings import EvalSettings, parse_with_config

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("zero-shot")
    generate_dataset(root, 10, seed=3, frames_per_video=16, size=64, splits=(0.2, 0.6, 0.2))
    torch.manual_seed(7)
    torch.save(build_clip(copy.deepcopy(TINY_CLIP_CFG)).state_dict(), root / "clip.pt")
    return root


def test_zero_shot_eval_matches_the_same_weights_as_a_checkpoint(
    ray_cluster: Any, clips: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = ["--videos-root", str(clips), "--frame-size", "64", "--decode-cpus", "0.2"]
    weights = str(clips / "clip.pt")
    out = tmp_path / "zs"
    argv = ["--zero-shot", "--arch", "tiny", "--clip-weights", weights, "--num-candidates", "6"]
    assert eval_main([*argv, *data, "--split", "val", "--output", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "zero-shot tiny on val: " in printed
    report = json.loads(next((out / "reports").glob("val_*.json")).read_text())
    val = json.loads((clips / "val.json").read_text())
    assert report["metrics"]["num_videos"] == len(val)

    # The same CLIP weights written as a zero-shot checkpoint (all 6 frames, mean pooling)
    # and tested the usual way give the same figures: --zero-shot is that model, no more.
    ckpt = tmp_path / "ckpt"
    assert init_checkpoint_main(
        [str(ckpt), "--arch", "tiny", "--clip-weights", weights, "--zero-shot",
         "--num-candidates", "6", "--top-k", "6"]
    ) == 0  # fmt: skip
    settings = parse_with_config(EvalSettings, [str(ckpt), *data, "--output", str(tmp_path)], "e")
    expected = run_inference(settings, str(ckpt), "val")["metrics"]
    for key in ("t2v_R1", "t2v_R5", "t2v_MdR", "v2t_R1"):
        assert report["metrics"][key] == pytest.approx(expected[key]), key


@pytest.mark.parametrize("argv", [[], ["ckpt", "--zero-shot"]])
def test_eval_needs_a_checkpoint_or_zero_shot(argv: list[str]) -> None:
    with pytest.raises((SystemExit, ValueError)):
        parse_with_config(EvalSettings, argv, "adaclip eval")
