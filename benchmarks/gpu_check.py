"""GPU variant of both speed benchmarks, as one prepared script (about 5 minutes or less).

Runs ``benchmarks.search_speed`` (V = 1k, 10k, 100k; single-query and batched modes; the
Qdrant store stays on the CPU as it does in production) and ``benchmarks.compute`` (N/K =
16/12, 32/16, 64/32, 8 videos per call) on CUDA, then the index job's model stage
(``pipelines.embed.embed_batch``: bf16 autocast on CUDA) against the same model in fp32
(ViT-B-32, random weights, N=16, K=12; tiny with ``--smoke``): largest difference of the
video vectors, lowest cosine between them and the share of kept frames that agree. It
writes everything it prints to ``--out`` as well (default ``$OUT/gpu_check.txt`` when
$OUT is set). Last line: ``bf16_video_max_abs_diff: A bf16_video_min_cosine: C``.

    python -m benchmarks.gpu_check                  # on a machine with a GPU
    python -m benchmarks.gpu_check --smoke --device cpu   # tiny sizes: checks it runs
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time
from collections.abc import Sequence
from typing import TextIO

import torch

from benchmarks import compute, search_speed


class Tee:
    """Writes to several text streams at once."""

    def __init__(self, *streams: TextIO) -> None:
        self.streams = streams

    def write(self, text: str) -> int:
        for s in self.streams:
            s.write(text)
        return len(text)

    def flush(self) -> None:
        for s in self.streams:
            s.flush()


def bf16_check(device: str, smoke: bool) -> dict[str, float]:
    """The model stage in bf16 autocast (``embed_batch``) against fp32, same model and batch."""
    import numpy as np

    from adaclip.config import AdaClipConfig, ClipConfig, tiny_config
    from adaclip.model import AdaCLIP
    from pipelines.embed import embed_batch

    if smoke:
        cfg = tiny_config()
    else:
        cfg = AdaClipConfig(
            clip=ClipConfig(arch="ViT-B-32"), num_candidates=16, top_k=12, frame_agg="mlp"
        )
    torch.manual_seed(0)
    model = AdaCLIP(cfg, load_pretrained=False).eval().to(device)
    rng = np.random.default_rng(0)
    b, n, size = 8, cfg.num_candidates, 224
    batch = {
        "uri": np.array([f"v{i}" for i in range(b)], dtype=object),
        "video_id": np.array([f"v{i}" for i in range(b)], dtype=object),
        "etag": np.array(["e"] * b, dtype=object),
        "size_bytes": np.zeros(b, dtype=np.int64),
        "duration_s": np.full(b, 10.0),
        "frames": rng.integers(0, 256, size=(b, n, size, size, 3), dtype=np.uint8),
        "timestamps": np.tile(np.arange(n, dtype=np.float64), (b, 1)),
    }
    mixed = embed_batch(model, batch)  # bf16 autocast on CUDA, fp32 on a CPU
    with torch.no_grad():
        enc = model.encode_video(torch.from_numpy(batch["frames"]))  # fp32
    ref = enc.video.float().cpu().numpy()
    got = mixed["video_vector"]
    cos = (ref * got).sum(1) / (np.linalg.norm(ref, axis=1) * np.linalg.norm(got, axis=1))
    kept_ref = enc.indices.cpu().numpy()  # (B, K)
    kept_mixed = mixed["frame_ts"].astype(np.int64)  # timestamps are the candidate indices
    same = np.mean(
        [len(set(r) & set(m)) / len(r) for r, m in zip(kept_ref, kept_mixed, strict=True)]
    )
    figures = {
        "max_abs_diff": float(np.abs(ref - got).max()),
        "min_cosine": float(cos.min()),
        "kept_frames_agree": float(same),
    }
    print(f"[gpu_check] model stage bf16 vs fp32 on {device}: {figures}")
    print(
        f"bf16_video_max_abs_diff: {figures['max_abs_diff']:.2e} "
        f"bf16_video_min_cosine: {figures['min_cosine']:.6f}"
    )
    return figures


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--smoke", action="store_true", help="tiny sizes (runs on a CPU in seconds)")
    ap.add_argument("--skip-search", action="store_true")
    ap.add_argument("--skip-compute", action="store_true")
    ap.add_argument("--skip-bf16", action="store_true")
    default_out = os.path.join(os.environ["OUT"], "gpu_check.txt") if os.environ.get("OUT") else ""
    ap.add_argument("--out", default=default_out, help="also write the output to this file")
    args = ap.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("no CUDA device: run with --device cpu (and --smoke) to check the script")
        return 2
    threads = str(os.cpu_count() or 1)
    search_args = ["--device", args.device, "--threads", threads]
    compute_args = ["--device", args.device, "--threads", threads]
    if args.smoke:
        search_args += ["--smoke"]
        compute_args += ["--smoke"]
    else:
        search_args += ["--budget", "0.5"]
        compute_args += ["--videos", "8"]
    out_file = open(args.out, "w") if args.out else None  # noqa: SIM115
    streams: tuple[TextIO, ...] = (sys.stdout,) + ((out_file,) if out_file else ())
    started = time.perf_counter()
    try:
        with contextlib.redirect_stdout(Tee(*streams)):  # type: ignore[type-var]
            if not args.skip_search:
                search_speed.main(search_args)
                print(f"[gpu_check] search_speed done at {time.perf_counter() - started:.0f} s")
                print()
            if not args.skip_compute:
                compute.main(compute_args)
                print(f"[gpu_check] compute done at {time.perf_counter() - started:.0f} s")
                print()
            if not args.skip_bf16:
                bf16_check(args.device, args.smoke)
    finally:
        if out_file:
            out_file.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
