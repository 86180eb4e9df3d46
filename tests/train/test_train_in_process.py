"""``train_in_process``: the Ray workers' training step on one process, without Ray."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from adaclip.config import tiny_config
from adaclip.synth import generate_dataset
from train.data import DecodeCandidates, DecodeOptions
from train.datasets import load_split
from train.loop import LoopConfig, train_in_process


def decoded_rows(root: Path, split: str, n: int, size: int) -> dict[str, np.ndarray]:
    """A split decoded in this process (the Ray Data UDF called directly)."""
    records = load_split(str(root), split, "synthetic")
    batch = {
        "video_id": np.array([r.video_id for r in records], dtype=object),
        "uri": np.array([str(root / r.filename) for r in records], dtype=object),
        "captions": np.array([json.dumps(list(r.captions)) for r in records], dtype=object),
    }
    rows = DecodeCandidates(DecodeOptions(num_candidates=n, frame_size=size))(batch)
    assert not any(rows.pop("error"))
    return rows


@pytest.mark.timeout(90)
def test_train_in_process_runs_the_policy_model(tmp_path: Path) -> None:
    generate_dataset(tmp_path, 8, seed=4, frames_per_video=8, size=32, splits=(0.5, 0.5, 0.0))
    train, val = (decoded_rows(tmp_path, s, 4, 32) for s in ("train", "val"))
    config = tiny_config(num_candidates=4, top_k=2)
    config.policy.resolution = 32
    cfg = LoopConfig(
        model_config=config.to_dict(),
        num_epochs=3,
        global_batch_size=2,
        num_train_videos=4,
        lr=1e-3,
        clip_lr=1e-3,
        amp=False,
    )
    seen: list[int] = []
    model, history = train_in_process(
        cfg, train, val, validate_every=2, on_epoch=lambda _, r: seen.append(r["epoch"])
    )
    assert seen == [0, 1, 2] and [r["steps"] for r in history] == [2, 2, 2]
    assert all(math.isfinite(r["loss"]) for r in history)
    assert ["val" in r for r in history] == [False, True, True]  # every 2nd and the last
    assert history[-1]["val"]["num_videos"] == 4
    assert model.policy is not None


def test_synth_noise_zero_makes_every_uninformative_frame_black(tmp_path: Path) -> None:
    generate_dataset(
        tmp_path, 4, seed=5, frames_per_video=8, size=32, uninformative=(0.6, 0.8), noise=0.0
    )
    meta = json.loads((tmp_path / "synth_meta.json").read_text())["videos"]
    rows = decoded_rows(tmp_path, "train", 8, 32)
    for video_id, frames in zip(rows["video_id"], rows["frames"], strict=True):
        informative = np.array(meta[video_id]["informative"])
        assert (~informative).any()
        assert frames[~informative].max() <= 8  # black up to H.264 ringing
        assert frames[informative].reshape(int(informative.sum()), -1).mean(1).min() > 40
    with pytest.raises(ValueError, match="noise"):
        generate_dataset(tmp_path / "bad", 1, seed=0, noise=1.5)


# ---- the learned policy against uniform sampling ------------------------------------------
#
# Measured with this recipe, one torch thread, data seed x training seed (policy+MLP-Score
# vs uniform+mean, in-sample t2v R@1 / R@5 with pessimistic ties):
#   (3,0) 31.5/84.3 vs 21.3/36.0   (3,1) 40.4/88.8 vs 27.0/37.1   (3,2) 43.8/93.3 vs 19.1/36.0
#   (4,0) 12.6/57.5 vs 20.7/35.6   (4,1) 36.8/87.4 vs 19.5/35.6   (4,2)  8.0/44.8 vs 23.0/32.2
#   (5,0) 11.0/41.8 vs 20.9/29.7   (5,1) 68.1/100. vs 12.1/27.5   (6,0) 15.7/67.4 vs 30.3/44.9
# (measured before synth drew shapes larger and with a motion trail; since then row (3,0)
# gives 47.2/97.8 vs 24.7/38.2, kept-informative 1.00 vs 0.39).
# This test is row (3,0) (two torch threads gave 23.6/75.3 vs 21.3/36.0). R@5 margin >= 12
# on all of them (>= 39 on data seed 3, which this test uses), the share of clips with an
# informative kept frame 0.72-1.00 vs 0.31-0.44. The R@1 margin is NOT robust at this
# budget (-15 .. +56: single frames rarely tell the motion apart, the tiny CLIP is trained
# from scratch for 30 short epochs), so R@1 is printed, not asserted.
# Why the recipe looks like this:
# - uninformative frames are all black (noise=0) and H.264's +-2 ringing is cleared: grey
#   noise or ringing is unique to a clip, so in-sample retrieval could memorise it.
# - informative frames sit anywhere (anywhere=True): by default they cluster at the ends
#   of a clip, exactly where uniform K=2 of N=8 looks (indices 0 and 7): it then finds one
#   in 69% of clips instead of ~31-39%.
# - ties are pessimistic: clips whose kept frames are all black get one identical vector,
#   and optimistic ties would rank every such clip first.
# - policy lr 3e-4: at 1e-3 the policy sometimes stays near uniform's hit rate (data seed
#   4: 0.39), at 3e-3 and 1e-2 it was seen collapsing onto black frames (only black kept
#   in 92% of clips) with MLP-Score; batch 4 for more steps in 30 epochs.
def kept_informative(meta: dict[str, dict], rows: dict[str, np.ndarray], model: object) -> float:
    """Share of clips of which at least one kept frame is informative."""
    import torch

    frames = torch.from_numpy(np.ascontiguousarray(rows["frames"]))
    with torch.no_grad():
        idx, _ = model.select_indices(frames)  # type: ignore[attr-defined]
    return float(
        np.mean(
            [
                any(meta[str(v)]["informative"][i] for i in row)
                for v, row in zip(rows["video_id"], idx.tolist(), strict=True)
            ]
        )
    )


@pytest.mark.slow  # a learning-quality measurement: make test-slow
@pytest.mark.timeout(240)
def test_policy_with_mlp_score_beats_uniform_mean_pooling(tmp_path: Path) -> None:
    import torch

    n, k = 8, 2
    generate_dataset(
        tmp_path, 40, seed=3, frames_per_video=n, size=64, splits=(0.9, 0.1, 0.0),
        uninformative=(0.7, 0.85), noise=0.0, anywhere=True,
    )  # fmt: skip
    meta = json.loads((tmp_path / "synth_meta.json").read_text())["videos"]
    rows = decoded_rows(tmp_path, "train", n, 64)
    frames = rows["frames"]  # (V, N, S, S, 3)
    dark = frames.reshape(*frames.shape[:2], -1).max(-1) <= 8
    frames[dark] = 0  # H.264 ringing on black frames would tell clips apart
    informative = np.array([meta[str(v)]["informative"] for v in rows["video_id"]])
    assert (dark == ~informative).all() and informative.mean() < 0.3

    results: dict[str, dict[str, float]] = {}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the measured setting; 2 threads on a busy 2-core box crawl
    try:
        for name, use_policy, agg in RECIPES:
            results[name] = train_and_score(rows, meta, n, k, use_policy, agg)
            print(name, results[name])
    finally:
        torch.set_num_threads(threads)
    policy, uniform = results["policy+mlp"], results["uniform+mean"]
    assert policy["kept_informative"] >= uniform["kept_informative"] + 0.25, results
    assert policy["R5"] >= uniform["R5"] + 8.0, results


RECIPES = (("policy+mlp", True, "mlp"), ("uniform+mean", False, "mean"))


def train_and_score(
    rows: dict[str, np.ndarray], meta: dict[str, dict], n: int, k: int, use_policy: bool, agg: str
) -> dict[str, float]:
    """Train one configuration in process; in-sample t2v R@1/R@5 (pessimistic ties)."""
    from adaclip.metrics import t2v_v2t_metrics
    from train.evaluate import embed_batches

    config = tiny_config(num_candidates=n, top_k=k, frame_agg=agg)
    config.policy.enabled = use_policy
    cfg = LoopConfig(
        model_config=config.to_dict(),
        num_epochs=30,
        global_batch_size=4,
        num_train_videos=len(rows["video_id"]),
        lr=3e-4,
        clip_lr=1e-3,
        seed=0,
        amp=False,
        eval_batch_size=64,
    )
    model, _ = train_in_process(cfg, rows, rows, validate_every=cfg.num_epochs)
    emb = embed_batches(model, [rows])
    sim = model.similarity(emb.texts, emb.videos, emb.frames)
    metrics = t2v_v2t_metrics(sim.float(), emb.query_to_video, ties="pessimistic")
    return {
        "R1": metrics["t2v_R1"],
        "R5": metrics["t2v_R5"],
        "kept_informative": kept_informative(meta, rows, model),
    }
