"""Bucket-scale indexing: the index job's driver cost against the number of listed objects.

    .venv/bin/python -m benchmarks.scale                  # L = 10k and 100k
    .venv/bin/python -m benchmarks.scale --sizes 2000,20000 --new 40   # a quicker check

A moto S3 server (its own process, filled through moto's backend, not over HTTP) holds, per
size L, a bucket of L objects under ``s3://scale-<L>/L<L>/``: L - NEW tiny placeholder objects that are
already in the index (the embedded store is pre-filled with their points, same etag) and
NEW real tiny videos spread evenly through the key space. ``adaclip index`` runs as its own
driver process (``python -m pipelines.index``) against one shared local Ray cluster; this
script samples the driver's RSS from ``/proc`` and timestamps its output.

Figures per L: the driver's peak RSS, the time from start to the first upsert (the first
``indexed N/M`` line), the run's wall time; at the largest L, a re-run with nothing to do,
and the time of listing the L keys alone (boto3 ``ListObjectsV2`` pages, one process).

Last line: ``driver_rss_growth_mb_10k_to_100k: A first_upsert_ratio_100k_vs_10k: B
noop_rerun_vs_listing_100k: C`` (smallest and largest size when ``--sizes`` is changed).
Goals: A <= 64, B <= 1.5, C <= 2.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from benchmarks.common import load_average, machine

REPO = Path(__file__).resolve().parents[1]
BUCKET = "scale"
PLACEHOLDER = b"0"  # body of the already-indexed objects (their etag: its md5)


def bucket_of(size: int) -> str:
    return f"{BUCKET}-{size}"


def keys_of(size: int, new: int) -> tuple[list[str], set[int]]:
    """The L keys of one size and the indices of the new (real video) ones, spread evenly."""
    step = max(size // max(new, 1), 1)
    fresh = {i * step + step // 2 for i in range(new)}
    return [f"L{size}/k{i:07d}.mp4" for i in range(size)], fresh


# ---- the bucket server (a child process) --------------------------------------------------


def serve_bucket(sizes: list[int], new: int, videos: Path) -> None:
    """Child: a moto server filled through its backend; prints ``READY <port>``, then waits
    for stdin to close."""
    from moto.core import DEFAULT_ACCOUNT_ID
    from moto.s3.models import s3_backends
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    backend = s3_backends[DEFAULT_ACCOUNT_ID]["aws"]
    clips = [p.read_bytes() for p in sorted(videos.glob("*.mp4"))]
    for size in sizes:  # a bucket per size: a listing's cost is its own bucket's
        backend.create_bucket(bucket_of(size), "us-east-1")
        keys, fresh = keys_of(size, new)
        for i, key in enumerate(keys):
            body = clips[i % len(clips)] if i in fresh else PLACEHOLDER
            backend.put_object(bucket_of(size), key, body)
    print(f"READY {server.get_host_and_port()[1]}", flush=True)
    sys.stdin.read()
    server.stop()


# ---- measuring ----------------------------------------------------------------------------


def rss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def run_job(args: list[str], env: dict[str, str]) -> dict[str, Any]:
    """Run ``python -m pipelines.index ARGS``; its peak RSS, first-upsert time and wall time."""
    start = time.monotonic()
    proc = subprocess.Popen(
        [sys.executable, "-m", "pipelines.index", *args],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    peak = [0.0]
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], rss_mb(proc.pid))
            done.wait(0.1)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    first_upsert = None
    tail: list[str] = []
    assert proc.stdout is not None
    for line in proc.stdout:
        if first_upsert is None and line.startswith("indexed "):
            first_upsert = time.monotonic() - start
        tail = (tail + [line])[-40:]
    rc = proc.wait()
    wall = time.monotonic() - start
    done.set()
    sampler.join()
    if rc != 0:
        raise RuntimeError(f"index job failed ({rc}):\n{''.join(tail)}")
    return {"peak_rss_mb": peak[0], "first_upsert_s": first_upsert, "wall_s": wall}


def prefill_store(qdrant: Path, size: int, new: int, checkpoint: Path) -> None:
    """Index the placeholder objects: points with the objects' URI and etag."""
    import numpy as np

    from pipelines.checkpoints import describe_checkpoint
    from pipelines.store import EdgeVideoStore, VideoRecord

    info = describe_checkpoint(str(checkpoint))
    keys, fresh = keys_of(size, new)
    etag = hashlib.md5(PLACEHOLDER).hexdigest()
    rng = np.random.default_rng(0)
    k, d = info.top_k, info.embed_dim
    frames = rng.standard_normal((256, k, d)).astype(np.float32) + 0.1
    with EdgeVideoStore(qdrant) as store:
        store.ensure_collection("videos", d, k, info.model_id)
        batch = []
        for i, key in enumerate(keys):
            if i in fresh:
                continue
            f = frames[i % 256]
            batch.append(
                VideoRecord(
                    uri=f"s3://{bucket_of(size)}/{key}",
                    video_id=Path(key).stem,
                    etag=etag,
                    size_bytes=len(PLACEHOLDER),
                    duration_s=1.0,
                    video_vector=f.mean(axis=0),
                    frame_vectors=f,
                    frame_ts=[float(t) for t in range(k)],
                    frame_weights=[1.0 / k] * k,
                    model_id=info.model_id,
                )
            )
            if len(batch) >= 2000:
                store.upsert(batch)
                batch = []
        store.upsert(batch)
        store.optimize()


def listing_time(endpoint: str, size: int) -> tuple[float, int]:
    """Seconds to list ``s3://scale-<size>/L<size>/`` alone, and the keys listed."""
    from pipelines.sources import list_videos

    start = time.monotonic()
    source = f"s3://{bucket_of(size)}/L{size}/"
    count = sum(1 for _ in list_videos(source, s3_endpoint_url=endpoint))
    return time.monotonic() - start, count


# ---- the benchmark ------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="10000,100000", help="listed objects L, comma-separated")
    ap.add_argument("--new", type=int, default=200, help="new tiny videos per size")
    ap.add_argument("--serve-bucket", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--videos", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    sizes = sorted(int(s) for s in args.sizes.split(","))
    if args.serve_bucket:
        serve_bucket(sizes, args.new, Path(args.videos))
        return 0

    import ray
    import torch

    from adaclip.checkpoint import save_checkpoint
    from adaclip.config import tiny_config
    from adaclip.model import AdaCLIP
    from adaclip.synth import generate_dataset
    from tests.conftest import FAKE_AWS_ENV

    os.environ.update(FAKE_AWS_ENV)
    tmp = Path(tempfile.mkdtemp(prefix="adaclip-scale-"))
    generate_dataset(tmp / "videos", num_videos=8, seed=1, frames_per_video=8, size=32)
    torch.manual_seed(0)
    checkpoint = tmp / "ckpt"
    save_checkpoint(AdaCLIP(tiny_config()), checkpoint)
    print(f"filling a moto bucket with {sizes} objects ...", flush=True)
    server = subprocess.Popen(
        [sys.executable, "-m", "benchmarks.scale", "--serve-bucket", "--sizes", args.sizes,
         "--new", str(args.new), "--videos", str(tmp / "videos")],
        cwd=REPO, env={**os.environ}, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL, text=True,
    )  # fmt: skip
    assert server.stdout is not None and server.stdin is not None
    ready = server.stdout.readline().split()
    endpoint = f"http://127.0.0.1:{ready[1]}"
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    results: dict[int, dict[str, Any]] = {}
    try:
        for size in sizes:
            qdrant = tmp / f"qdrant-{size}"
            prefill_store(qdrant, size, args.new, checkpoint)
            job = [
                f"s3://{bucket_of(size)}/L{size}/", "--s3-endpoint-url", endpoint,
                "--checkpoint", str(checkpoint), "--qdrant-path", str(qdrant),
                "--collection", "videos", "--output", str(tmp / f"out-{size}"),
                "--frame-size", "32", "--decode-actors", "1", "--decode-batch-size", "4",
                "--model-batch-size", "8", "--upsert-batch-size", "8",
                "--ray-address", ray.get_runtime_context().gcs_address,
            ]  # fmt: skip
            first = run_job(job, env)
            summary = json.loads((tmp / f"out-{size}" / "summary.json").read_text())
            first |= {k: summary[k] for k in ("listed", "skipped", "indexed", "failed")}
            results[size] = {"first": first}
            print(f"L={size}: {json.dumps(first)}", flush=True)
            if size == sizes[-1]:
                results[size]["noop"] = run_job(job, env)
                again = json.loads((tmp / f"out-{size}" / "summary.json").read_text())
                results[size]["noop"] |= {
                    "indexed": again["indexed"],
                    "to_index": again["to_index"],
                }
                results[size]["listing_s"], listed = listing_time(endpoint, size)
                print(f"L={size} no-op: {json.dumps(results[size]['noop'])}", flush=True)
                print(f"L={size} listing alone: {results[size]['listing_s']:.1f}s, {listed} keys")
    finally:
        ray.shutdown()
        server.stdin.close()
        server.wait(timeout=60)

    small, large = results[sizes[0]]["first"], results[sizes[-1]]["first"]
    big = results[sizes[-1]]
    print(f"\nmachine: {machine()}; load: {load_average()}; new videos per size: {args.new}")
    print("| L | driver peak RSS MB | first upsert s | run s | listed | skipped | indexed |")
    print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for size in sizes:
        r = results[size]["first"]
        print(
            f"| {size} | {r['peak_rss_mb']:.0f} | {r['first_upsert_s']:.1f} | {r['wall_s']:.1f} "
            f"| {r['listed']} | {r['skipped']} | {r['indexed']} |"
        )
    print(
        f"no-op re-run at L={sizes[-1]}: {big['noop']['wall_s']:.1f}s (peak RSS "
        f"{big['noop']['peak_rss_mb']:.0f} MB, indexed {big['noop']['indexed']}); "
        f"listing alone {big['listing_s']:.1f}s"
    )
    growth = large["peak_rss_mb"] - small["peak_rss_mb"]
    ratio = large["first_upsert_s"] / small["first_upsert_s"]
    noop = big["noop"]["wall_s"] / big["listing_s"]
    label_small, label_large = f"{sizes[0] // 1000}k", f"{sizes[-1] // 1000}k"
    print(
        f"driver_rss_growth_mb_{label_small}_to_{label_large}: {growth:.1f} "
        f"first_upsert_ratio_{label_large}_vs_{label_small}: {ratio:.2f} "
        f"noop_rerun_vs_listing_{label_large}: {noop:.2f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
