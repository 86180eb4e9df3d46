"""The Ray Train job end to end on a small synthetic set (2 CPUs, tiny CLIP).

One module-wide synthetic set; one run that survives a killed worker, a restart of it that
resumes, ``--do-inference`` of the exported model. The elastic run whose world size
changes is ``test_train_elastic.py`` (a cluster of its own).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest

from adaclip.checkpoint import load_checkpoint, read_checkpoint_config
from adaclip.synth import generate_dataset
from train.settings import CONFIGS_DIR, TrainSettings, parse_with_config

pytestmark = pytest.mark.integration

VAL_KEYS = {f"{d}_{m}" for d in ("t2v", "v2t") for m in ("R1", "R5", "R10", "R50", "MdR", "MnR")}


@pytest.fixture(scope="module")
def synth_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """20 clips (12 train / 6 val / 2 test) plus a corrupt and a missing training video."""
    root = tmp_path_factory.mktemp("synth")
    generate_dataset(root, 20, seed=1, frames_per_video=16, size=64, splits=(0.6, 0.3, 0.1))
    (root / "broken.mp4").write_bytes(b"this is not a video" * 100)
    train = json.loads((root / "train.json").read_text())
    train["broken"] = {"extension": "mp4", "sentences": ["a corrupt file"]}
    train["ghost"] = {"extension": "mp4", "sentences": ["a missing file"]}
    (root / "train.json").write_text(json.dumps(train))
    return root


def flags(root: Path, work: Path, name: str, *extra: str) -> list[str]:
    return [
        "--config",
        str(CONFIGS_DIR / "synthetic.json"),
        "--videos-root",
        str(root),
        "--storage-path",
        str(work / "storage"),
        "--output",
        str(work / name),
        "--name",
        name,
        "--batch-size",
        "4",
        "--cpus-per-worker",
        "0.4",
        "--decode-cpus",
        "0.2",
        *extra,
    ]


def settings(*args: str) -> TrainSettings:
    return parse_with_config(TrainSettings, list(args), "adaclip train")


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("train")


@pytest.fixture(scope="module")
def first_run(ray_cluster: Any, synth_root: Path, work: Path) -> Any:
    """2 workers, 2 epochs; rank 0 is killed at the start of epoch 1 and the run recovers."""
    from train.run import run_training

    s = settings(
        *flags(synth_root, work, "run", "--num-epochs", "2", "--num-workers", "2"),
        "--inject-failure-at-epoch",
        "1",
        "--max-failures",
        "2",
    )
    return run_training(s)


def test_run_checkpoints_every_epoch_and_exports_best(first_run: Any, work: Path) -> None:
    run_dir = Path(first_run.run_dir)
    assert sorted(p.name for p in run_dir.glob("epoch_*")) == ["epoch_0000", "epoch_0001"]
    for ckpt in run_dir.glob("epoch_*"):
        assert (ckpt / "model.safetensors").is_file() and (ckpt / "train_state.pt").is_file()
    assert [r["epoch"] for r in first_run.history] == [0, 1]
    assert all(r["world_size"] == 2 and math.isfinite(r["loss"]) for r in first_run.history)
    # the best epoch is the one with the highest validation R@1
    best_r1 = max(r["val"]["t2v_R1"] for r in first_run.history)
    assert first_run.best_val["t2v_R1"] == best_r1
    model = load_checkpoint(first_run.best_checkpoint)
    _, extra = read_checkpoint_config(first_run.best_checkpoint)
    assert extra["epoch"] == first_run.best_epoch
    assert model.config.num_candidates == 8 and model.config.top_k == 4
    for record in first_run.history:
        report = json.loads(
            (work / "run" / "reports" / f"val_epoch{record['epoch']:04d}.json").read_text()
        )
        assert set(report["metrics"]) >= VAL_KEYS
        assert report["metrics"]["num_videos"] == 6
        # what the policy chose: validation (6 videos x K=4) and training (12 x 4) picks
        assert sum(report["metrics"]["kept_position_histogram"]) == 6 * 4
        assert 0.0 <= report["metrics"]["selection_entropy"] <= math.log(8)
        assert sum(report["train_kept_position_histogram"]) == 12 * 4
        assert 0.0 <= report["train_selection_entropy"] <= math.log(8)


def test_killed_worker_is_survived(first_run: Any, work: Path) -> None:
    assert (work / "run" / "injected_failure.marker").is_file()  # the kill happened
    assert [r["epoch"] for r in first_run.history] == [0, 1]  # and epoch 0 was not redone


def test_missing_and_corrupt_videos_are_left_out(first_run: Any, work: Path) -> None:
    rows = [json.loads(line) for line in (work / "run" / "failures.jsonl").read_text().splitlines()]
    reasons = {r["video_id"]: r["reason"] for r in rows}
    assert reasons == {"ghost": "missing", "broken": "decode"}
    assert first_run.history[0]["steps"] == (12 // 2) // 2  # 12 good videos, 2 workers x 2


def test_restart_resumes_from_storage(first_run: Any, synth_root: Path, work: Path) -> None:
    from adaclip.cli import main

    args = flags(synth_root, work, "run", "--num-epochs", "3", "--num-workers", "2")
    assert main(["train", *args]) == 0
    summary = json.loads((work / "run" / "train_summary.json").read_text())
    history = summary["history"]
    assert [r["epoch"] for r in history] == [0, 1, 2]
    # the frame store under --output (the default) held both splits: nothing decoded again
    assert (work / "run" / "frame_store").is_dir()
    assert first_run.decoded_videos == {"train": 13, "val": 6}  # 12 good + broken; 6
    assert summary["decoded_videos"] == {"train": 0, "val": 0}
    for old, new in zip(first_run.history, history[:2], strict=True):
        assert new["loss"] == pytest.approx(old["loss"])
        assert new["val"]["t2v_R1"] == old["val"]["t2v_R1"]
    assert (Path(first_run.run_dir) / "epoch_0002").is_dir()


def test_do_inference_reproduces_validation_metrics(
    first_run: Any, synth_root: Path, work: Path
) -> None:
    from train.inference import run_inference

    s = settings(*flags(synth_root, work, "infer"))
    best = json.loads((work / "run" / "train_summary.json").read_text())
    report = run_inference(s, best["best_checkpoint"], "val")
    for key in VAL_KEYS:
        assert report["metrics"][key] == pytest.approx(best["best_val"][key]), key
    assert Path(report["report"]).is_file()
    test_report = run_inference(s, best["best_checkpoint"], s.test_split)
    assert test_report["metrics"]["num_videos"] == 2


@pytest.mark.timeout(300)
def test_frame_store_decodes_once_and_follows_etags(
    ray_cluster: Any, synth_root: Path, tmp_path: Path
) -> None:
    import os
    import shutil

    import numpy as np

    from train.data import DecodeOptions, decode_split
    from train.frame_store import FrameStore

    videos = tmp_path / "videos"
    shutil.copytree(synth_root, videos)
    store = FrameStore(str(tmp_path / "store"))
    options = DecodeOptions(num_candidates=8, frame_size=64, num_cpus=0.2)

    def decode() -> Any:
        return decode_split(str(videos), "train", "synthetic", str(videos), options, store)

    def frames(split: Any) -> dict[str, np.ndarray]:
        rows = split.dataset.take_all()
        return {str(r["video_id"]): np.asarray(r["frames"]) for r in rows}

    first = decode()
    assert first.decoded_videos == 13 and first.num_videos == 12  # 12 good + broken
    again = decode()  # a later run: nothing decoded, the bad video not retried
    assert again.decoded_videos == 0 and again.num_videos == 12
    assert {f["video_id"]: f["reason"] for f in again.failures} == {
        "ghost": "missing", "broken": "decode",
    }  # fmt: skip
    before, after = frames(first), frames(again)
    assert before.keys() == after.keys() and len(before) == 12
    for vid, value in before.items():
        assert value.shape == (8, 64, 64, 3) and np.array_equal(value, after[vid])
    first_video = sorted(before)[0]
    stat = (videos / f"{first_video}.mp4").stat()
    os.utime(videos / f"{first_video}.mp4", ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    changed = decode()  # a new etag: that video alone is decoded again, not read twice
    assert changed.decoded_videos == 1 and changed.num_videos == 12
    assert sorted(frames(changed)) == sorted(before)


def test_changed_config_and_no_resume_are_refused(
    first_run: Any, synth_root: Path, work: Path
) -> None:
    from train.run import run_training

    base = flags(synth_root, work, "run", "--num-epochs", "3", "--num-workers", "2")
    with pytest.raises(ValueError, match="already exists"):
        run_training(settings(*base, "--no-resume"))
    with pytest.raises(ValueError, match=r"another configuration \(changed: lr\)"):
        run_training(settings(*base, "--lr", "0.5"))


def test_do_inference_from_frame_folders_reports_gflops(
    first_run: Any, synth_root: Path, work: Path
) -> None:
    from adaclip.frames_dir import extract_frames
    from train.inference import run_inference

    frames_root = work / "frames"
    val = json.loads((synth_root / "val.json").read_text())
    for video_id in val:
        extract_frames(synth_root / f"{video_id}.mp4", frames_root / video_id)
    s = settings(
        *flags(frames_root, work, "infer-frames"),
        "--annotations", str(synth_root), "--frames-dir", "--frames-fps", "8",
    )  # fmt: skip
    best = json.loads((work / "run" / "train_summary.json").read_text())
    report = run_inference(s, best["best_checkpoint"], "val")
    assert report["metrics"]["num_videos"] == len(val) and not report["left_out"]
    cost = report["gflops_per_video"]
    assert cost["total"] == pytest.approx(cost["policy"] + cost["clip_k"] + cost["aggregation"])
    assert cost["no_policy_clip_n"] > cost["clip_k"] > 0
    saved = json.loads(Path(report["report"]).read_text())
    assert saved["gflops_per_video"] == cost
