"""GPU variant of both speed benchmarks, as one prepared script (about 5 minutes or less).

Runs ``benchmarks.search_speed`` (V = 1k, 10k, 100k; single-query and batched modes; the
Qdrant store stays on the CPU as it does in production) and ``benchmarks.compute`` (N/K =
16/12, 32/16, 64/32, 8 videos per call) on CUDA, and writes everything it prints to
``--out`` as well (default ``$OUT/gpu_check.txt`` when $OUT is set).

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


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--smoke", action="store_true", help="tiny sizes (runs on a CPU in seconds)")
    ap.add_argument("--skip-search", action="store_true")
    ap.add_argument("--skip-compute", action="store_true")
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
    finally:
        if out_file:
            out_file.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
