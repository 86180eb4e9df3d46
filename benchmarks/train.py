"""Training throughput on CPU: 1 vs 2 Ray Train workers, first (decoding) vs cached epochs.

One synthetic set (``adaclip.synth.generate_dataset``, generated once, not timed) is
trained twice with ``train.run.run_training`` and the ``train/configs/synthetic.json``
recipe (tiny CLIP, policy + MLP-Score, N=8, K=4, 64 px): with 1 worker and with 2 workers,
the same global batch and epochs, in one local Ray cluster. From each run's history:

* training samples/s per epoch (``samples_per_second``: optimiser steps only, validation
  excluded), the median over the cached epochs (all but the first), and the 2-vs-1 ratio;
* the first pass over the data, ``decode_seconds`` (Ray Data decodes and materialises the
  candidates once, before training) plus epoch 0, against the median later epoch, which
  reads the materialised frames and decodes nothing.

Run it ONLY as a module from the repository root::

    .venv/bin/python -m benchmarks.train [--videos 64] [--epochs 4] [--batch-size 8]

Running the file itself (``python benchmarks/train.py``) puts ``benchmarks/`` first on
``sys.path``, where this file shadows the top-level ``train`` package it imports.
The last line is ``train_scaling_2w_vs_1w: <ratio>``.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks.common import load_average, machine


def _settings(root: Path, work: Path, workers: int, args: argparse.Namespace) -> Any:
    from train.settings import CONFIGS_DIR, TrainSettings, parse_with_config

    name = f"bench-{workers}w"
    argv = [
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
        "--num-workers",
        str(workers),
        "--num-epochs",
        str(args.epochs),
        "--batch-size",
        str(args.batch_size),
        "--cpus-per-worker",
        "0.5",
        "--decode-cpus",
        "0.25",
        "--no-resume",
    ]
    return parse_with_config(TrainSettings, argv, "adaclip train")


def _summary(result: Any) -> dict[str, Any]:
    history = result.history
    later = history[1:]
    return {
        "workers": result.num_workers,
        "steps": history[0]["steps"],
        "local_batch": history[0]["local_batch_size"],
        "decode_s": sum(result.decode_seconds.values()),
        "epoch0_s": history[0]["train_seconds"],
        "later_s": statistics.median(r["train_seconds"] for r in later),
        "epoch0_sps": history[0]["samples_per_second"],
        "sps": statistics.median(r["samples_per_second"] for r in later),
        "sps_all": [round(r["samples_per_second"], 1) for r in history],
        "val_r1": history[-1]["val"]["t2v_R1"],
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    import ray

    from adaclip.synth import generate_dataset
    from train.run import run_training

    with tempfile.TemporaryDirectory(prefix="adaclip-bench-train-") as tmp:
        root, work = Path(tmp) / "synth", Path(tmp) / "work"
        n = args.videos
        generate_dataset(root, n, seed=0, frames_per_video=16, size=64, splits=(0.8, 0.2, 0.0))
        ray.init(num_cpus=args.cpus, include_dashboard=False, log_to_driver=False)
        try:
            summaries = {}
            for workers in (1, 2):
                start = time.perf_counter()
                result = run_training(_settings(root, work, workers, args))
                summaries[workers] = _summary(result)
                summaries[workers]["wall_s"] = time.perf_counter() - start
        finally:
            ray.shutdown()
    train_videos = summaries[1]["steps"] * summaries[1]["local_batch"]
    return {"summaries": summaries, "train_videos": train_videos}


def report(out: dict[str, Any], args: argparse.Namespace) -> str:
    s1, s2 = out["summaries"][1], out["summaries"][2]
    ratio = s2["sps"] / s1["sps"]
    lines = [
        f"`.venv/bin/python -m benchmarks.train --videos {args.videos} --epochs {args.epochs} "
        f"--batch-size {args.batch_size}` — {time.strftime('%Y-%m-%d')}, {machine()}; "
        f"{load_average()} at the end.",
        f"train/configs/synthetic.json recipe (tiny CLIP, policy + MLP-Score, N=8, K=4, "
        f"64 px), {out['train_videos']} training videos per epoch, global batch "
        f"{args.batch_size}, Ray cluster of {args.cpus} CPUs, 0.5 CPU per worker, gloo.",
        "",
        "| workers | steps/epoch x local batch | samples/s (median, epochs >= 1) | "
        "samples/s per epoch | decode (train+val) | epoch 0 | later epoch (median) | "
        "val R@1 (last) |",
        "| ---: | ---: | ---: | --- | ---: | ---: | ---: | ---: |",
    ]
    for s in (s1, s2):
        lines.append(
            f"| {s['workers']} | {s['steps']} x {s['local_batch']} | {s['sps']:.1f} | "
            f"{s['sps_all']} | {s['decode_s']:.1f} s | {s['epoch0_s']:.1f} s | "
            f"{s['later_s']:.1f} s | {s['val_r1']:.1f} |"
        )
    lines += [
        "",
        "First pass over the data (decode + epoch 0) vs a later, cached epoch: "
        + "; ".join(
            f"{s['workers']} worker(s) {s['decode_s'] + s['epoch0_s']:.1f} s vs "
            f"{s['later_s']:.1f} s ({(s['decode_s'] + s['epoch0_s']) / s['later_s']:.1f}x)"
            for s in (s1, s2)
        )
        + ".",
        "",
        f"train_scaling_2w_vs_1w: {ratio:.2f}",
    ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> str:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--videos", type=int, default=64, help="synthetic clips (80%% train)")
    ap.add_argument("--epochs", type=int, default=4, help="epochs per run (>= 2)")
    ap.add_argument("--batch-size", type=int, default=8, help="GLOBAL batch size")
    ap.add_argument("--cpus", type=int, default=2, help="CPUs of the local Ray cluster")
    args = ap.parse_args(argv)
    if args.epochs < 2:
        ap.error("--epochs must be >= 2 (epoch 0 is compared with the later ones)")
    logging.basicConfig(level=logging.WARNING)
    text = report(run(args), args)
    print(text)
    return text


if __name__ == "__main__":
    main()
