"""Training throughput on CPU: 1 vs 2 Ray Train workers, first (decoding) vs cached epochs.

One synthetic set (``adaclip.synth.generate_dataset``, generated once, not timed; 240 px
clips of 5 s at 24 fps by default, ``--video-size``/``--video-frames``, so decoding costs
what it does on small real videos) is
trained twice with ``train.run.run_training`` and the ``train/configs/synthetic.json``
recipe (tiny CLIP, policy + MLP-Score, N=8, K=4, 64 px): with 1 worker and with 2 workers,
the same global batch and epochs, in one local Ray cluster. From each run's history:

* training samples/s per epoch (``samples_per_second``: optimiser steps only, validation
  excluded), the median over the cached epochs (all but the first), and the 2-vs-1 ratio;
* the fraction of an epoch rank 0 spent waiting for its next batch (``data_wait_fraction``:
  batches arrive as torch tensors, prefetched, pinned on a GPU);
* the first pass over the data, ``decode_seconds`` (Ray Data decodes and materialises the
  candidates once, before training) plus epoch 0, against the median later epoch, which
  reads the materialised frames and decodes nothing;
* a third run, 1 worker again, a resubmission on the same data and frame store: its first
  epoch (reading the store + epoch 0) against the first run's (decoding + epoch 0).

Run it ONLY as a module from the repository root::

    .venv/bin/python -m benchmarks.train [--videos 64] [--epochs 4] [--batch-size 8]

Running the file itself (``python benchmarks/train.py``) puts ``benchmarks/`` first on
``sys.path``, where this file shadows the top-level ``train`` package it imports.
Then one training step of ViT-B-32 at N=32, K=16 (``--step-*``), CLIP's graph on all N
candidates (the forward before) against the K picked ones only: step time and peak memory.
The last line is ``train_scaling_2w_vs_1w: <ratio> train_frame_store_first_epoch_ratio: <F>
train_step_time_ratio_n32k16: <R> train_peak_mem_ratio_n32k16: <M>
train_process_peak_mem_ratio_n32k16: <P>`` (``--skip-scaling``: the step figures only).
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


def _settings(
    root: Path, work: Path, workers: int, args: argparse.Namespace, name: str = ""
) -> Any:
    from train.settings import CONFIGS_DIR, TrainSettings, parse_with_config

    name = name or f"bench-{workers}w"
    store = work / ("frame_store" if workers == 1 else f"{name}-frame_store")
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
        "--frame-store",
        str(store),  # the 1-worker runs share one store: the second reads, decodes nothing
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
        "wait": statistics.median(r["data_wait_fraction"] for r in later),
        "val_r1": history[-1]["val"]["t2v_R1"],
        "decoded": result.decoded_videos,
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    import ray

    from adaclip.synth import generate_dataset
    from train.run import run_training

    with tempfile.TemporaryDirectory(prefix="adaclip-bench-train-") as tmp:
        root, work = Path(tmp) / "synth", Path(tmp) / "work"
        n = args.videos
        generate_dataset(
            root,
            n,
            seed=0,
            frames_per_video=args.video_frames,
            fps=24,
            size=args.video_size,
            splits=(0.8, 0.2, 0.0),
        )
        ray.init(num_cpus=args.cpus, include_dashboard=False, log_to_driver=False)
        try:
            summaries = {}
            for workers in (1, 2):
                start = time.perf_counter()
                result = run_training(_settings(root, work, workers, args))
                summaries[workers] = _summary(result)
                summaries[workers]["wall_s"] = time.perf_counter() - start
            # a second 1-worker run on the same data and frame store (a resubmission)
            start = time.perf_counter()
            again = run_training(_settings(root, work, 1, args, name="bench-1w-again"))
            summaries["again"] = _summary(again)
            summaries["again"]["wall_s"] = time.perf_counter() - start
        finally:
            ray.shutdown()
    train_videos = summaries[1]["steps"] * summaries[1]["local_batch"]
    return {"summaries": summaries, "train_videos": train_videos}


# ------------------------------------------------ no-grad CLIP on unselected frames
def _rss_mb(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def step_variant(variant: str, arch: str, n: int, k: int, batch: int, steps: int) -> dict:
    """One training step variant in this (fresh) process: median step time, peak memory.

    ``variant`` is ``all`` (today's forward: CLIP on all N candidates in the graph) or
    ``selected`` (CLIP's graph on the K picked frames only). A step is forward, the
    global-batch loss, backward, clipping and the AdamW update of the real loop. Peak
    memory is what the step holds: the process's peak resident set (VmHWM, reset at the
    start of each step through /proc/self/clear_refs) less its resident set once the
    libraries are imported, before the model exists. That is weights, gradients, optimiser
    state, the batch and activations, what ``torch.cuda.max_memory_allocated`` counts on a
    GPU; the interpreter and torch's own code, which a GPU does not hold, are left out
    (``process_peak_mb`` keeps the whole process's figure).
    """
    import torch

    from adaclip.commands import build_init_config
    from adaclip.model import AdaCLIP
    from train.loop import LoopConfig, build_optimizer, contrastive_loss

    torch.manual_seed(0)
    torch.ones(8) @ torch.ones(8)  # torch's CPU kernels loaded: part of the baseline
    baseline = _rss_mb("VmRSS")
    config = build_init_config(arch, num_candidates=n, top_k=k, frame_agg="mlp")
    model = AdaCLIP(config).train()
    cfg = LoopConfig(model_config={}, num_epochs=1, global_batch_size=batch, num_train_videos=1)
    optimizer = build_optimizer(model, cfg)
    size = model.image_size
    frames = torch.randint(0, 256, (batch, n, size, size, 3), dtype=torch.uint8)
    tokens = model.tokenize([f"a video of thing number {i}" for i in range(batch)])
    times, peaks, grown = [], [], []
    for step in range(steps + 1):  # step 0 allocates the optimiser state: not timed
        Path("/proc/self/clear_refs").write_text("5")
        before = _rss_mb("VmRSS")
        start = time.perf_counter()
        out = model(frames, tokens, tau=1.0, grad_all_frames=variant == "all")
        loss = contrastive_loss(model, out)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        if step > 0:
            times.append(time.perf_counter() - start)
            peaks.append(_rss_mb("VmHWM"))
            grown.append(peaks[-1] - before)
    return {
        "variant": variant,
        "step_s": statistics.median(times),
        "peak_mb": max(peaks) - baseline,
        "process_peak_mb": max(peaks),
        "step_growth_mb": max(grown),
        "threads": torch.get_num_threads(),
    }


def interleaved_step_times(arch: str, n: int, k: int, batch: int, steps: int) -> dict:
    """Median step time of both forwards in ONE process, steps alternating between them,
    so a change of machine load during the run hits both alike."""
    import torch

    from adaclip.commands import build_init_config
    from adaclip.model import AdaCLIP
    from train.loop import LoopConfig, build_optimizer, contrastive_loss

    torch.manual_seed(0)
    model = AdaCLIP(build_init_config(arch, num_candidates=n, top_k=k, frame_agg="mlp")).train()
    cfg = LoopConfig(model_config={}, num_epochs=1, global_batch_size=batch, num_train_videos=1)
    optimizer = build_optimizer(model, cfg)
    size = model.image_size
    frames = torch.randint(0, 256, (batch, n, size, size, 3), dtype=torch.uint8)
    tokens = model.tokenize([f"a video of thing number {i}" for i in range(batch)])
    times: dict[str, list[float]] = {"all": [], "selected": []}
    for step in range(steps + 1):  # round 0 warms up both: not timed
        for variant in ("all", "selected") if step % 2 == 0 else ("selected", "all"):
            start = time.perf_counter()
            out = model(frames, tokens, tau=1.0, grad_all_frames=variant == "all")
            loss = contrastive_loss(model, out)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if step > 0:
                times[variant].append(time.perf_counter() - start)
    return {variant: statistics.median(t) for variant, t in times.items()}


def run_step_benchmark(args: argparse.Namespace) -> dict[str, dict]:
    """Peak memory of each forward in its own fresh process (a peak is per process), then
    step times of both, interleaved in one process."""
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    shape = (args.step_arch, args.step_n, args.step_k, args.step_batch)
    out = {}
    for variant in ("all", "selected"):
        with ctx.Pool(1) as pool:
            out[variant] = pool.apply(step_variant, (variant, *shape, 1))
    with ctx.Pool(1) as pool:
        times = pool.apply(interleaved_step_times, (*shape, args.steps))
    for variant, seconds in times.items():
        out[variant]["step_s"] = seconds
    return out


def step_report(steps: dict[str, dict], args: argparse.Namespace) -> tuple[list[str], str]:
    old, new = steps["all"], steps["selected"]
    time_ratio = new["step_s"] / old["step_s"]
    mem_ratio = new["peak_mb"] / old["peak_mb"]
    process_ratio = new["process_peak_mb"] / old["process_peak_mb"]
    lines = [
        "",
        f"Training step, {args.step_arch}, N={args.step_n}, K={args.step_k}, batch "
        f"{args.step_batch}, policy + MLP-Score, AdamW ({old['threads']} torch threads). Step "
        f"time: median of {args.steps} steps per forward after one untimed round, the two "
        "forwards alternating in one process. Peak memory: each forward in its own fresh "
        "process, the second step (optimiser state allocated):",
        "",
        "| CLIP forward | step time | peak memory of the step | process peak | growth "
        "during a step |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for s, label in ((old, "all N frames in the graph (before)"), (new, "K picked in graph")):
        lines.append(
            f"| {label} | {s['step_s']:.2f} s | {s['peak_mb']:.0f} MB | "
            f"{s['process_peak_mb']:.0f} MB | {s['step_growth_mb']:.0f} MB |"
        )
    lines += [
        "",
        f"step time {time_ratio:.2f}x, peak memory of the step {mem_ratio:.2f}x (whole "
        f"process {process_ratio:.2f}x, growth during a step "
        f"{new['step_growth_mb'] / old['step_growth_mb']:.2f}x)",
    ]
    figures = (
        f"train_step_time_ratio_n32k16: {time_ratio:.2f} "
        f"train_peak_mem_ratio_n32k16: {mem_ratio:.2f} "
        f"train_process_peak_mem_ratio_n32k16: {process_ratio:.2f}"
    )
    return lines, figures


def report(out: dict[str, Any], args: argparse.Namespace) -> str:
    lines, figures = scaling_report(out, args) if "summaries" in out else ([], [])
    if "steps" in out:
        step_lines, step_figures = step_report(out["steps"], args)
        lines += step_lines
        figures.append(step_figures)
    lines += ["", " ".join(figures)]
    return "\n".join(lines)


def scaling_report(out: dict[str, Any], args: argparse.Namespace) -> tuple[list[str], list[str]]:
    s1, s2 = out["summaries"][1], out["summaries"][2]
    ratio = s2["sps"] / s1["sps"]
    lines = [
        f"`.venv/bin/python -m benchmarks.train --videos {args.videos} --epochs {args.epochs} "
        f"--batch-size {args.batch_size} --video-size {args.video_size} --video-frames "
        f"{args.video_frames}` — {time.strftime('%Y-%m-%d')}, {machine()}; "
        f"{load_average()} at the end. Clips {args.video_size} px, {args.video_frames} frames "
        "at 24 fps.",
        f"train/configs/synthetic.json recipe (tiny CLIP, policy + MLP-Score, N=8, K=4, "
        f"64 px frames), {out['train_videos']} training videos per epoch, global batch "
        f"{args.batch_size}, Ray cluster of {args.cpus} CPUs, 0.5 CPU per worker, gloo.",
        "",
        "| workers | steps/epoch x local batch | samples/s (median, epochs >= 1) | "
        "samples/s per epoch | data wait (median, epochs >= 1) | decode (train+val) | "
        "epoch 0 | later epoch (median) | val R@1 (last) |",
        "| ---: | ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for s in (s1, s2):
        lines.append(
            f"| {s['workers']} | {s['steps']} x {s['local_batch']} | {s['sps']:.1f} | "
            f"{s['sps_all']} | {100 * s['wait']:.1f}% | {s['decode_s']:.1f} s | {s['epoch0_s']:.1f} s | "
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
    ]
    figures = [f"train_scaling_2w_vs_1w: {ratio:.2f}"]
    if "again" in out["summaries"]:
        again = out["summaries"]["again"]
        first_epoch = s1["decode_s"] + s1["epoch0_s"]
        second = again["decode_s"] + again["epoch0_s"]
        lines += [
            "",
            f"Frame store: a second 1-worker run on the same data and --frame-store decoded "
            f"{again['decoded']} videos (the first: {s1['decoded']}); its first epoch "
            f"(reading the store + epoch 0) took {second:.1f} s against the first run's "
            f"{first_epoch:.1f} s (decode {s1['decode_s']:.1f} s + epoch 0): "
            f"**{second / first_epoch:.2f}x**. Whole runs ({args.epochs} epochs, validation, "
            f"checkpoints, Ray Train start-up): {again['wall_s']:.1f} s vs "
            f"{s1['wall_s']:.1f} s.",
        ]
        figures.append(f"train_frame_store_first_epoch_ratio: {second / first_epoch:.2f}")
    return lines, figures


def main(argv: Sequence[str] | None = None) -> str:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--videos", type=int, default=64, help="synthetic clips (80%% train)")
    ap.add_argument("--epochs", type=int, default=4, help="epochs per run (>= 2)")
    ap.add_argument("--batch-size", type=int, default=8, help="GLOBAL batch size")
    ap.add_argument("--cpus", type=int, default=2, help="CPUs of the local Ray cluster")
    ap.add_argument(
        "--video-size", type=int, default=240, help="synthetic clips' frame size (px, even)"
    )
    ap.add_argument(
        "--video-frames", type=int, default=120, help="frames per clip, 24 fps (120: 5 s)"
    )
    ap.add_argument("--step-arch", default="ViT-B-32", help="CLIP of the step benchmark")
    ap.add_argument("--step-n", type=int, default=32, help="N of the step benchmark")
    ap.add_argument("--step-k", type=int, default=16, help="K of the step benchmark")
    ap.add_argument("--step-batch", type=int, default=4, help="videos per step (one process)")
    ap.add_argument("--steps", type=int, default=3, help="timed steps per forward (0: skip)")
    ap.add_argument("--skip-scaling", action="store_true", help="only the step benchmark")
    args = ap.parse_args(argv)
    if args.epochs < 2:
        ap.error("--epochs must be >= 2 (epoch 0 is compared with the later ones)")
    logging.basicConfig(level=logging.WARNING)
    out = {} if args.skip_scaling else run(args)
    if args.steps > 0:
        out["steps"] = run_step_benchmark(args)
    text = report(out, args)
    print(text)
    return text


if __name__ == "__main__":
    main()
