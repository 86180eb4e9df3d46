"""Video store speed, embedded (qdrant-edge-py) vs qdrant-client local mode (in memory).

Writes N random videos in batches (a D-dim `video` vector and K frame vectors each, as the
ingestion job does; `--data clustered` mimics the structure of real embeddings), then times
top-10 queries before and after `optimize()`, the recall of the optimized search against
exact cosine, and Q-Score re-ranking of 100 candidates. The embedded index lives in a temp
folder that is deleted afterwards; one table is printed.

    python -m benchmarks.store_speed                       # 10k on both backends
    python -m benchmarks.store_speed --sizes 10000 100000 --backends edge
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from collections.abc import Iterator

import numpy as np

from benchmarks.common import synthetic_records
from pipelines.store import EdgeVideoStore, VideoRecord, VideoStore
from pipelines.store.server import ServerVideoStore

BATCH = 256


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


class Data:
    """Random frame embeddings: i.i.d. Gaussian (`random`, the worst case for HNSW) or
    `clustered` like real CLIP embeddings (a shared direction, 200 topics, noise)."""

    def __init__(self, kind: str, dim: int, seed: int) -> None:
        self.kind, self.rng = kind, np.random.default_rng(seed)
        self.common = self.rng.standard_normal(dim, dtype=np.float32)
        self.topics = self.rng.standard_normal((200, dim), dtype=np.float32)

    def _noise(self, *shape: int) -> np.ndarray:
        return self.rng.standard_normal(shape, dtype=np.float32)

    def frames(self, b: int, k: int) -> np.ndarray:  # (B, K, D)
        dim = self.common.shape[0]
        if self.kind == "random":
            return self._noise(b, k, dim)
        topic = self.topics[self.rng.integers(0, len(self.topics), b)]  # (B, D)
        video = self.common + topic + 0.7 * self._noise(b, dim)
        return video[:, None, :] + 0.5 * self._noise(b, k, dim)

    def queries(self, n: int) -> np.ndarray:  # (Q, D), unit norm
        dim = self.common.shape[0]
        q = self._noise(n, dim)
        if self.kind == "clustered":
            q += 0.5 * self.common + self.topics[self.rng.integers(0, len(self.topics), n)]
        return q / np.linalg.norm(q, axis=1, keepdims=True)


def batches(data: Data, n: int, k: int) -> Iterator[tuple[np.ndarray, list[VideoRecord]]]:
    """Videos in batches: (video vectors (B, D), records)."""
    for start in range(0, n, BATCH):
        b = min(BATCH, n - start)
        frames = data.frames(b, k)  # (B, K, D)
        video = frames.mean(axis=1)  # (B, D)
        records = synthetic_records(video, frames, start, "bench")
        yield video, records


def p50_ms(store: VideoStore, queries: np.ndarray, **kw: object) -> float:
    times = []
    for q in queries:
        t = time.perf_counter()
        store.search(q, **kw)  # type: ignore[arg-type]
        times.append(time.perf_counter() - t)
    return 1e3 * float(np.median(times))


def recall_at_10(store: VideoStore, queries: np.ndarray, videos: np.ndarray) -> float:
    unit = videos / np.linalg.norm(videos, axis=1, keepdims=True)  # (N, D)
    exact = np.argsort(-(queries @ unit.T), axis=1)[:, :10]  # (Q, 10)
    found = 0
    for q, want in zip(queries, exact, strict=True):
        got = {int(h.video_id[1:]) for h in store.search(q, top_k=10)}
        found += len(got & set(want.tolist()))
    return found / exact.size


def run(backend: str, n: int, args: argparse.Namespace, folder: str) -> dict[str, str]:
    store: VideoStore = (
        EdgeVideoStore(folder) if backend == "edge" else ServerVideoStore(location=":memory:")
    )
    store.ensure_collection("bench", args.dim, args.frames, "bench")
    data = Data(args.data, args.dim, seed=n)
    upsert_s, videos = 0.0, []
    for video, records in batches(data, n, args.frames):
        t = time.perf_counter()
        store.upsert(records)
        upsert_s += time.perf_counter() - t
        videos.append(video)
    queries = data.queries(args.queries)
    before = p50_ms(store, queries, top_k=10)
    t = time.perf_counter()
    store.optimize()
    optimize_s = time.perf_counter() - t
    row = {
        "backend": backend,
        "data": args.data,
        "videos": f"{n:,}",
        "upserts/s": f"{n / upsert_s:,.0f}",
        "optimize s": f"{optimize_s:.1f}" if backend == "edge" else "-",
        "query p50 ms (pre-opt)": f"{before:.2f}",
        "query p50 ms": f"{p50_ms(store, queries, top_k=10):.2f}",
        "recall@10": f"{recall_at_10(store, queries, np.concatenate(videos)):.3f}",
        "rerank(100) p50 ms": f"{p50_ms(store, queries[:30], top_k=10, rerank=True):.1f}",
    }
    store.close()
    return row


def print_table(rows: list[dict[str, str]]) -> None:
    cols = list(rows[0])
    width = {c: max(len(c), *(len(r[c]) for r in rows)) for c in cols}
    print(" | ".join(c.ljust(width[c]) for c in cols))
    print("-|-".join("-" * width[c] for c in cols))
    for r in rows:
        print(" | ".join(r[c].rjust(width[c]) for c in cols))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[10_000])
    ap.add_argument("--backends", nargs="+", default=["edge", "server"])
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--frames", type=int, default=12)
    ap.add_argument("--queries", type=int, default=100)
    ap.add_argument("--data", choices=["random", "clustered"], default="random")
    ap.add_argument(
        "--server-max",
        type=int,
        default=20_000,
        help="largest size for qdrant-client local mode (pure Python; it warns above 20k)",
    )
    args = ap.parse_args()
    print(f"{cpu_name()}, {os.cpu_count()} CPUs; D={args.dim}, K={args.frames} frames a video")
    rows, skipped = [], []
    for n in args.sizes:
        for backend in args.backends:
            if backend == "server" and n > args.server_max:
                skipped.append(f"server (local mode) at {n:,}: above --server-max")
                continue
            with tempfile.TemporaryDirectory(prefix="store_speed_") as folder:
                rows.append(run(backend, n, args, folder))
    print_table(rows)
    for s in skipped:
        print("skipped:", s)
    print("recall@10: top-10 after optimize() vs exact cosine over all videos")


if __name__ == "__main__":
    main()
