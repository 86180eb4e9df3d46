"""Live index: upload-to-searchable latency, and search latency while indexing vs idle.

    python -m benchmarks.live                       # tiny model and ViT-B-32, 10 s clips
    python -m benchmarks.live --models tiny --uploads 4 --interval-s 3   # a quick run

One box, one Ray cluster: a moto S3 + SQS server on 127.0.0.1 (bucket notifications into a
queue), ``adaclip watch`` (the :class:`pipelines.watch.Watcher`, SQS mode) and the search
app (Ray Serve, HTTP) on the same embedded store through its store actor. Clips are
uploaded one at a time every ``--interval-s``; a searcher queries ``POST /search`` without
pause and notes when each upload first appears in the results (upload-to-searchable) and
how long each search took. Search p50 while uploads are pending is compared with search
p50 on the idle server before the first upload.

Goals (issue 18, ViT-B-32, 10 s clips, this CPU): upload-to-searchable p50 <= 10 s;
search p50 while indexing <= 1.5x idle. Last line:
``live_upload_to_searchable_p50_s: L search_p50_ratio_indexing_vs_idle: R`` (ViT-B-32's
figures when it ran, else the last model's).
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from benchmarks.common import load_average, machine

CACHE = Path(".adaclip/bench-cache/live")
QUERY = "a colourful pattern drifting across the screen"


def make_checkpoint(arch: str, out: Path) -> Path:
    """An untrained AdaCLIP checkpoint: the tiny test model, or ViT-B-32 in the MSR-VTT
    setting (N=16, K=12). Speed does not depend on trained weights."""
    import torch

    from adaclip.checkpoint import save_checkpoint
    from adaclip.config import AdaClipConfig, ClipConfig, tiny_config
    from adaclip.model import AdaCLIP

    torch.manual_seed(0)
    if arch == "tiny":
        cfg = tiny_config()
    else:
        cfg = AdaClipConfig(clip=ClipConfig(arch=arch), num_candidates=16, top_k=12)
    save_checkpoint(AdaCLIP(cfg), out, kind="bench")
    return out


def make_clips(seconds: int, count: int) -> list[Path]:
    from benchmarks.ingest import make_clip

    CACHE.mkdir(parents=True, exist_ok=True)
    return [
        make_clip(CACHE / f"clip_{seconds}s_{i}.mp4", seconds, 568, 320, {}, seed=100 + i)
        for i in range(count)
    ]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


class Searcher(threading.Thread):
    """Queries without pause; notes each search's latency and when each URI first shows."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        import httpx

        self.client = httpx.Client(timeout=60)
        self.url = url
        self.stop = threading.Event()
        self.first_seen: dict[str, float] = {}
        self.searches: list[tuple[float, float]] = []  # (started at, seconds)

    def search(self) -> tuple[float, set[str]]:
        started = time.time()
        resp = self.client.post(f"{self.url}/search", json={"query": QUERY, "top_k": 100})
        resp.raise_for_status()
        return started, {r["uri"] for r in resp.json()["results"]}

    def run(self) -> None:
        while not self.stop.is_set():
            started, uris = self.search()
            self.searches.append((started, time.time() - started))
            for uri in uris:
                self.first_seen.setdefault(uri, started)


def run_model(arch: str, args: argparse.Namespace, endpoint: str, tmp: Path) -> dict[str, float]:
    import boto3
    from ray import serve

    from pipelines.store.actor import find_store_actor, stop_store_actor
    from pipelines.watch import Watcher, WatchSettings
    from serve.app import build_app
    from serve.cli import wait_ready

    work = tmp / arch
    checkpoint = make_checkpoint(arch, work / "checkpoint")
    clips = make_clips(args.seconds, 3)
    bucket = f"live-{arch.lower().replace('-', '')}"
    s3 = boto3.client("s3", endpoint_url=endpoint)
    sqs = boto3.client("sqs", endpoint_url=endpoint)
    s3.create_bucket(Bucket=bucket)
    queue = sqs.create_queue(QueueName=f"{bucket}-events")["QueueUrl"]
    arn = sqs.get_queue_attributes(QueueUrl=queue, AttributeNames=["QueueArn"])["Attributes"][
        "QueueArn"
    ]
    s3.put_bucket_notification_configuration(
        Bucket=bucket,
        NotificationConfiguration={
            "QueueConfigurations": [
                {"QueueArn": arn, "Events": ["s3:ObjectCreated:*", "s3:ObjectRemoved:*"]}
            ]
        },
    )
    qdrant = work / "qdrant"
    frame_size = 64 if arch == "tiny" else 224
    watcher = Watcher(
        WatchSettings(
            source=f"s3://{bucket}/clips/",
            queue_url=queue,
            sqs_endpoint_url=endpoint,
            s3_endpoint_url=endpoint,
            checkpoint=str(checkpoint),
            qdrant_path=str(qdrant),
            collection="live",
            output=str(work / "watch"),
            frame_size=frame_size,
            decode_cpus=0.5,
            model_cpus=1.0,
            batch_size=args.batch_size,
            batch_wait_s=args.batch_wait_s,
            status_every_s=30.0,
        )
    )
    thread = threading.Thread(target=watcher.run, daemon=True)
    thread.start()
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    try:
        serve.run(
            build_app(
                {
                    "checkpoint": str(checkpoint),
                    "qdrant_path": str(qdrant),
                    "collection": "live",
                    "encoder_cpus": 0.25,
                    "ingress_cpus": 0.25,
                }
            ),
            name="live",
            route_prefix="/",
        )
        url = f"http://127.0.0.1:{port}"
        wait_ready(url)
        searcher = Searcher(url)
        for _ in range(5):  # warm-up
            searcher.search()
        idle = []
        for _ in range(args.idle_queries):
            started, _ = searcher.search()
            idle.append(time.time() - started)
        searcher.start()
        uploaded: dict[str, float] = {}
        t0 = time.time()
        for i in range(args.uploads):
            time.sleep(max(0.0, t0 + i * args.interval_s - time.time()))
            key = f"clips/u{i:03d}.mp4"
            s3.upload_file(str(clips[i % len(clips)]), bucket, key)
            uploaded[f"s3://{bucket}/{key}"] = time.time()
        deadline = time.time() + args.timeout_s
        while time.time() < deadline and not set(uploaded) <= set(searcher.first_seen):
            time.sleep(0.2)
        searcher.stop.set()
        searcher.join()
        missing = set(uploaded) - set(searcher.first_seen)
        if missing:
            raise RuntimeError(f"{len(missing)} uploads never became searchable: {missing}")
        latency = [searcher.first_seen[u] - t for u, t in uploaded.items()]
        last = max(searcher.first_seen[u] for u in uploaded)
        busy = [s for started, s in searcher.searches if t0 <= started <= last]
    finally:
        watcher.stop()
        thread.join(timeout=120)
        watcher.close()
        serve.shutdown()
        handle = find_store_actor(str(qdrant))
        if handle is not None:
            stop_store_actor(handle)
    idle_p50, busy_p50 = statistics.median(idle), statistics.median(busy)
    return {
        "upload_to_searchable_p50_s": pct(latency, 50),
        "upload_to_searchable_p95_s": pct(latency, 95),
        "search_p50_idle_ms": idle_p50 * 1000,
        "search_p50_indexing_ms": busy_p50 * 1000,
        "search_p95_indexing_ms": pct(busy, 95) * 1000,
        "ratio": busy_p50 / idle_p50,
        "searches_indexing": float(len(busy)),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="tiny,ViT-B-32", help="comma-separated: tiny, ViT-B-32")
    ap.add_argument("--uploads", type=int, default=8, help="clips uploaded per model")
    ap.add_argument("--interval-s", type=float, default=12.0, help="seconds between uploads")
    ap.add_argument("--seconds", type=int, default=10, help="clip length")
    ap.add_argument("--batch-size", type=int, default=2, help="watch --batch-size")
    ap.add_argument("--batch-wait-s", type=float, default=0.2, help="watch --batch-wait-s")
    ap.add_argument("--idle-queries", type=int, default=30, help="searches on the idle server")
    ap.add_argument("--timeout-s", type=float, default=300.0, help="wait for the last upload")
    args = ap.parse_args()

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    for name, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_CONFIG_FILE": "/nonexistent/aws-config",
        "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent/aws-credentials",
        "NO_PROXY": "127.0.0.1,localhost",
    }.items():
        os.environ[name] = value
    import logging

    import ray
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # moto's request log

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    print(f"machine: {machine()}; before: {load_average()}", flush=True)
    results: dict[str, dict[str, float]] = {}
    try:
        with tempfile.TemporaryDirectory(prefix="adaclip-live-") as tmp:
            for arch in [m.strip() for m in args.models.split(",") if m.strip()]:
                r = run_model(arch, args, endpoint, Path(tmp))
                results[arch] = r
                print(
                    f"{arch}: {args.uploads} uploads of {args.seconds} s clips every "
                    f"{args.interval_s} s: upload-to-searchable p50 "
                    f"{r['upload_to_searchable_p50_s']:.2f} s, p95 "
                    f"{r['upload_to_searchable_p95_s']:.2f} s; search p50 idle "
                    f"{r['search_p50_idle_ms']:.1f} ms, while indexing "
                    f"{r['search_p50_indexing_ms']:.1f} ms (p95 "
                    f"{r['search_p95_indexing_ms']:.1f} ms, {int(r['searches_indexing'])} "
                    f"searches): {r['ratio']:.2f}x",
                    flush=True,
                )
    finally:
        ray.shutdown()
        server.stop()
    print(f"after: {load_average()}")
    main_arch = "ViT-B-32" if "ViT-B-32" in results else list(results)[-1]
    r = results[main_arch]
    print(
        f"live_upload_to_searchable_p50_s: {r['upload_to_searchable_p50_s']:.2f} "
        f"search_p50_ratio_indexing_vs_idle: {r['ratio']:.2f}"
    )


if __name__ == "__main__":
    main()
