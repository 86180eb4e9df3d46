"""Shared helpers of the benchmark scripts: timing, machine description, shared data."""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

SHARED_ANNOTS = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "annots"


def msrvtt_test_captions() -> list[str]:
    """The 1000 captions of the MSR-VTT 1k-A test split (one per video)."""
    path = Path(os.environ.get("ADACLIP_ANNOTS", SHARED_ANNOTS)) / "msrvtt-jsfusion" / "val.json"
    annots = json.loads(path.read_text())
    return [entry["sentences"][0] for entry in annots.values()]


def median_time(fn: Callable[[], object], repeats: int = 5, warmup: int = 1) -> float:
    """Median wall time in seconds of ``fn`` over ``repeats`` runs after ``warmup`` runs."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def machine() -> str:
    """One line naming the CPU (and GPU when present)."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    desc = f"{cpu}, {os.cpu_count()} cores"
    try:
        import torch

        if torch.cuda.is_available():
            desc += f", GPU {torch.cuda.get_device_name(0)}"
        desc += f", torch {torch.__version__}, {torch.get_num_threads()} threads"
    except ImportError:
        pass
    return desc


def load_average() -> str:
    """The 1-minute load average and the core count: how contended the timings were."""
    try:
        return f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores"
    except OSError:
        return "load average unknown"


def print_table(rows: Sequence[dict[str, str]]) -> None:
    """Print rows (same keys, string values) as a markdown table, numbers right-aligned."""
    cols = list(rows[0])
    width = {c: max(len(c), *(len(r[c]) for r in rows)) for c in cols}
    print("| " + " | ".join(c.ljust(width[c]) for c in cols) + " |")
    print("|" + "|".join("-" * (width[c] + 2) for c in cols) + "|")
    for r in rows:
        print("| " + " | ".join(r[c].rjust(width[c]) for c in cols) + " |")


def verdict(ok: bool) -> str:
    """How a target check reads in the output."""
    return "MET" if ok else "NOT MET"


def synthetic_records(video: Any, frames: Any, start: int, model_id: str) -> list[Any]:
    """Store records for benchmark vectors: video (B, D), frames (B, K, D), ids from ``start``."""
    from pipelines.store import VideoRecord

    k = frames.shape[1]
    return [
        VideoRecord(
            uri=f"s3://bench/d{(start + i) % 100}/v{start + i}.mp4",
            video_id=f"v{start + i}",
            etag="x",
            size_bytes=1,
            duration_s=float(k),
            video_vector=video[i],
            frame_vectors=frames[i],
            frame_ts=[0.5 + j for j in range(k)],
            frame_weights=[1.0 / k] * k,
            model_id=model_id,
        )
        for i in range(len(video))
    ]


def write_scrolling_clip(
    path: Path,
    field: Any,
    grain: Any,
    seconds: int,
    fps: int,
    width: int,
    height: int,
    x264: dict[str, str],
) -> Path:
    """Write (once) an H.264 MP4 scrolling through ``field`` (2H x 2W x 3) plus ``grain``.

    The window moves 2 px down and 3 px right per frame (real motion for the encoder);
    ``grain`` (G, H, W, 3) cycles frame by frame. The file is written under a temporary
    name and renamed, so an interrupted run never leaves a truncated clip in the cache.
    """
    if path.exists():
        return path
    import av

    partial = path.with_suffix(".partial.mp4")
    with av.open(str(partial), mode="w") as container:
        stream = container.add_stream("libx264", rate=fps, options={"crf": "23", **x264})
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for i in range(seconds * fps):
            y, x = (2 * i) % height, (3 * i) % width
            image = field[y : y + height, x : x + width] + grain[i % len(grain)]
            container.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
        container.mux(stream.encode(None))
    partial.rename(path)
    return path
