"""Candidate-frame decoding (``adaclip.decode.decode_candidates``) vs a full decode.

Two clips, generated once with PyAV + libx264 and cached (generation is not timed):
  (a) 720p, 10 s at 30 fps, x264 defaults (keyframe every 250 frames, B-frames):
      decode_candidates(N=16, 224 px) against ``ffmpeg -i clip -f null -``;
  (b) 320x240, 10 min at 25 fps, a keyframe every 2 s: decode_candidates(N=16)
      against the faster of the ffmpeg command line and a PyAV full decode.
Repeats are interleaved and the medians reported. Without an ``ffmpeg`` binary the
full decode is PyAV's alone, and the table says so.

    .venv/bin/python -m benchmarks.decode_speed [--repeats 5] [--cache-dir DIR]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import av
import numpy as np

from adaclip.decode import decode_candidates
from benchmarks.common import machine, write_scrolling_clip


def _texture(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A blocky colour field twice the frame size, to scroll through: real motion."""
    cells = rng.integers(0, 256, (height // 8 + 2, width // 8 + 2, 3), dtype=np.uint8)
    return np.kron(cells, np.ones((8, 8, 1), dtype=np.uint8))


def make_clip(
    path: Path, seconds: int, fps: int, width: int, height: int, x264: dict[str, str]
) -> Path:
    """Write (once) an H.264 MP4 of a scrolling texture with light grain."""
    if path.exists():
        return path
    rng = np.random.default_rng(0)
    field = _texture(rng, 2 * height, 2 * width)
    grain = rng.integers(0, 5, (8, height, width, 3), dtype=np.uint8)
    return write_scrolling_clip(path, field, grain, seconds, fps, width, height, x264)


def ffmpeg_full_decode(path: Path) -> None:
    cmd = ["ffmpeg", "-hide_banner", "-nostdin", "-v", "error", "-i", str(path), "-f", "null", "-"]
    subprocess.run(cmd, check=True)


def pyav_full_decode(path: Path) -> None:
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        for _ in container.decode(stream):
            pass


def interleaved_medians(fns: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    """Median wall time of each function; one warm-up each, then rounds of all of them."""
    for fn in fns.values():
        fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def describe(path: Path) -> str:
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        duration, time_base = stream.duration, stream.time_base
        seconds = float(duration * time_base) if duration and time_base else 0.0
        rate = path.stat().st_size * 8 / max(seconds, 1e-9) / 1e6
        return f"{stream.width}x{stream.height} {seconds:.0f}s {rate:.1f}Mb/s"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--long-repeats", type=int, default=3)
    parser.add_argument("--num-frames", type=int, default=16)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument(
        "--cache-dir", type=Path, default=Path(tempfile.gettempdir()) / "adaclip-bench"
    )
    args = parser.parse_args()
    args.cache_dir.mkdir(parents=True, exist_ok=True)

    short = make_clip(args.cache_dir / "clip_720p_10s.mp4", 10, 30, 1280, 720, {})
    gop = {"preset": "veryfast", "g": "50", "keyint_min": "50", "sc_threshold": "0"}
    long = make_clip(args.cache_dir / "clip_240p_10min_gop2s.mp4", 600, 25, 320, 240, gop)

    has_ffmpeg = shutil.which("ffmpeg") is not None
    n, size = args.num_frames, args.size
    rows: list[tuple[str, str, float]] = []
    results: dict[str, dict[str, float]] = {}
    for label, path, repeats in (
        (("720p", short, args.repeats)),
        ("10min", long, args.long_repeats),
    ):
        fns: dict[str, Callable[[], object]] = {
            f"decode_candidates N={n} {size}px": partial(decode_candidates, path, n, size),
            "PyAV full decode (no RGB)": partial(pyav_full_decode, path),
        }
        if has_ffmpeg:
            fns["ffmpeg -i clip -f null -"] = partial(ffmpeg_full_decode, path)
        results[label] = interleaved_medians(fns, repeats)
        rows += [(f"{label} ({describe(path)})", name, t) for name, t in results[label].items()]

    print(f"decode speed on {machine()}; PyAV {av.__version__}, FFmpeg {av.ffmpeg_version_info}")
    if not has_ffmpeg:
        print("ffmpeg binary not found: the full-decode reference is PyAV's full decode")
    print(f"{'clip':<32} {'method':<34} {'median_s':>9}")
    for clip, method, seconds in rows:
        print(f"{clip:<32} {method:<34} {seconds:>9.3f}")

    cand = f"decode_candidates N={n} {size}px"
    ref_720 = "ffmpeg -i clip -f null -" if has_ffmpeg else "PyAV full decode (no RGB)"
    ratio_720 = results["720p"][cand] / results["720p"][ref_720]
    full_10min = min(t for name, t in results["10min"].items() if name != cand)
    print(f"decode_vs_ffmpeg_ratio_720p: {ratio_720:.3f}")
    print(f"decode_fraction_10min: {results['10min'][cand] / full_10min:.4f}")


if __name__ == "__main__":
    main()
