"""Search server speed over real HTTP: latency and throughput, batching, Serve overhead.

Writes a ViT-B-32 checkpoint with random weights (speed does not depend on them) and an
embedded index of 10k videos (random clustered 512-d vectors, K=12 frame vectors each) in a
temp folder, then, on a local 2-CPU Ray cluster, serves them with the search app of
`serve/` (fractional CPUs: text encoder + ingress fit in the 2 cores) and POSTs the 1000
MSR-VTT 1k-A test captions to `http://127.0.0.1:<port>/search`:

- in process, before the server: `QueryEncoder.encode` + `VideoStore.search` (top_k 10)
  with the replica's torch thread count (Ray: floor(num_cpus), at least 1) and with all;
- for four configurations: the default (the ingress encodes queries itself, behind Serve's
  HTTP proxy), the same with Ray Serve's experimental direct ingress (the replica answers
  HTTP itself: `--direct-ingress`; a Ray cluster of its own, started with the switch), and
  a separate batched encoder deployment with batching on (`max_batch_size` 16) and off (1):
  p50/p99 latency and requests/s at concurrency 1 and 8, bounded request counts, every
  caption sent once (cache_size=0 too, so no cache hit can help); errors are counted;
- Serve's overhead: HTTP p50 at concurrency 1 / in-process p50 of the same captions, run
  paired (each caption in process just before its request, on a copy of the index) so
  that both halves see the same machine load on a shared machine.

Ray workers are started at niceness 0 (`RAY_worker_niceness`, Ray's default 15 would make
the replicas lose the CPU to this driver and to any other job).

Run it as a module from the repository root:

    .venv/bin/python -m benchmarks.serve [--videos 10000] [--c1-requests 200]

not as `python benchmarks/serve.py`: that would put `benchmarks/` first on sys.path, where
this file (`serve.py`) shadows the top-level `serve` package the script imports.

The last line is `serve_p50_ms_c1: <ms> serve_overhead_ratio: <ratio> serve_p99_ms_c8: <ms>`
(the server's default configuration). The 1000 captions hold 995 distinct texts: 150 + 96 requests per
configuration, each text sent once over HTTP.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import math
import os
import shutil
import socket
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from benchmarks.common import load_average, machine, msrvtt_test_captions, synthetic_records

APP = "adaclip-bench"
DIRECT_INGRESS_ENV = "RAY_SERVE_ENABLE_DIRECT_INGRESS"


@dataclass
class LoadStats:
    """One bounded load run: per-request latencies and the wall time of the whole run."""

    latencies_s: list[float]
    took_ms: list[float]  # the server's own `took_ms` (ingress: embed + store search)
    wall_s: float
    errors: int
    error_samples: list[str] = field(default_factory=list)
    local_s: list[float] = field(default_factory=list)  # paired in-process times (c1)

    def p(self, q: float) -> float:
        """Latency percentile `q` (0..100) in ms."""
        return 1e3 * float(np.percentile(self.latencies_s, q))

    @property
    def rps(self) -> float:
        return len(self.latencies_s) / self.wall_s


def write_checkpoint(out: Path, arch: str) -> tuple[str, int]:
    """A checkpoint of `arch` with random weights (nothing downloaded); its model_id, dim."""
    import torch

    from adaclip.checkpoint import save_checkpoint
    from adaclip.commands import build_init_config
    from adaclip.model import AdaCLIP

    torch.manual_seed(0)
    model = AdaCLIP(build_init_config(arch))
    model_id, dim = save_checkpoint(model, out, kind="benchmark"), int(model.embed_dim)
    del model
    gc.collect()
    return model_id, dim


def build_index(
    qdrant_path: Path, collection: str, model_id: str, n: int, k: int, dim: int, seed: int = 0
) -> tuple[float, float]:
    """Upsert `n` videos of `k` unit frame vectors (shared direction + 200 topics + noise,
    like real CLIP embeddings) and optimize; (upsert seconds, optimize seconds)."""
    from pipelines.store import open_store

    rng = np.random.default_rng(seed)
    common = rng.standard_normal(dim, dtype=np.float32)
    topics = rng.standard_normal((200, dim), dtype=np.float32)
    store = open_store(qdrant_path=str(qdrant_path))
    upsert_s = 0.0
    try:
        store.ensure_collection(collection, dim, k, model_id)
        for start in range(0, n, 256):
            b = min(256, n - start)
            topic = topics[rng.integers(0, len(topics), b)]  # (B, D)
            video = common + topic + 0.7 * rng.standard_normal((b, dim), dtype=np.float32)
            frames = video[:, None, :] + 0.5 * rng.standard_normal((b, k, dim), dtype=np.float32)
            frames /= np.linalg.norm(frames, axis=-1, keepdims=True)  # (B, K, D)
            pooled = frames.mean(axis=1)
            pooled /= np.linalg.norm(pooled, axis=-1, keepdims=True)  # (B, D)
            records = synthetic_records(pooled, frames, start, model_id)
            t = time.perf_counter()
            store.upsert(records)
            upsert_s += time.perf_counter() - t
        t = time.perf_counter()
        store.optimize()
        optimize_s = time.perf_counter() - t
    finally:
        store.close()
    return upsert_s, optimize_s


class InProcess:
    """The search without Serve: `QueryEncoder.encode` + `VideoStore.search` in this process
    (top_k 10, no re-ranking: what `POST /search {query, top_k: 10}` does here), on its own
    copy of the embedded index (the server's ingress owns the original)."""

    def __init__(self, checkpoint: Path, qdrant_path: Path, collection: str) -> None:
        from pipelines.store import open_store
        from serve.encoder import QueryEncoder

        self.encoder = QueryEncoder(str(checkpoint), device="cpu")
        self.store = open_store(qdrant_path=str(qdrant_path))
        self.store.open_collection(collection)

    def run(self, query: str) -> tuple[float, float]:
        """Seconds spent encoding `query`, and in all (encode + store search)."""
        t0 = time.perf_counter()
        vector = self.encoder.encode([query])[0]
        t1 = time.perf_counter()
        self.store.search(vector, top_k=10)
        return t1 - t0, time.perf_counter() - t0

    def close(self) -> None:
        self.store.close()


def thread_scan(
    local: InProcess, queries: list[str], threads: list[int]
) -> dict[int, dict[str, float]]:
    """In-process p50 ms of encode, store search and both per torch thread count."""
    import torch

    before = torch.get_num_threads()
    out: dict[int, dict[str, float]] = {}
    try:
        for n_threads in threads:
            torch.set_num_threads(n_threads)
            for i in range(10):  # warm-up (not captions)
                local.run(f"warm up query {i}")
            runs = [local.run(q) for q in queries]
            enc, total = [r[0] for r in runs], [r[1] for r in runs]
            out[n_threads] = {
                "encode": 1e3 * statistics.median(enc),
                "search": 1e3 * statistics.median([t - e for e, t in runs]),
                "total": 1e3 * statistics.median(total),
                "p99": 1e3 * float(np.percentile(total, 99)),
            }
    finally:
        torch.set_num_threads(before)
    return out


async def _load(
    url: str, queries: list[str], concurrency: int, timeout_s: float, local: InProcess | None
) -> LoadStats:
    import httpx

    todo: asyncio.Queue[str] = asyncio.Queue()
    for q in queries:
        todo.put_nowait(q)
    latencies: list[float] = []
    took: list[float] = []
    local_s: list[float] = []
    errors: list[str] = []
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=timeout_s) as client:

        async def worker() -> None:
            while not todo.empty():
                q = todo.get_nowait()
                # paired: the same query in process, just before its request
                in_process_s = local.run(q)[1] if local is not None else 0.0
                t = time.perf_counter()
                try:
                    r = await client.post("/search", json={"query": q, "top_k": 10})
                    ok = r.status_code == 200 and len(r.json()["results"]) == 10
                except httpx.HTTPError as err:
                    errors.append(repr(err))
                    continue
                elapsed = time.perf_counter() - t
                if ok:
                    latencies.append(elapsed)
                    took.append(float(r.json()["took_ms"]))
                    if local is not None:
                        local_s.append(in_process_s)
                else:
                    errors.append(f"{r.status_code}: {r.text[:200]}")

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall = time.perf_counter() - start
    return LoadStats(latencies, took, wall, len(errors), errors[:3], local_s)


def load(
    url: str,
    queries: list[str],
    concurrency: int,
    local: InProcess | None = None,
    timeout_s: float = 60.0,
) -> LoadStats:
    """POST each query once to `url`/search with `concurrency` requests in flight; with
    `local` (concurrency 1), run each query in process too, just before its request, so
    that both see the same machine load."""
    assert local is None or concurrency == 1
    return asyncio.run(_load(url, queries, concurrency, timeout_s, local))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def serve_config(
    args: argparse.Namespace,
    checkpoint: Path,
    qdrant_path: Path,
    port: int,
    overrides: dict[str, object],
    c1_queries: list[str],
    c8_queries: list[str],
    local: InProcess,
) -> tuple[LoadStats, LoadStats, float]:
    """Deploy with the settings `overrides`, run the two loads, delete the app."""
    from ray import serve

    from serve.cli import start_server, wait_ready
    from serve.settings import ServeSettings

    settings = ServeSettings(
        checkpoint=str(checkpoint),
        qdrant_path=str(qdrant_path),
        port=port,
        app_name=APP,
        min_replicas=1,
        max_replicas=1,
        encoder_cpus=args.encoder_cpus,
        ingress_cpus=args.ingress_cpus,
        max_batch_size=args.batch_size,
        batch_wait_timeout_s=args.batch_wait_s,
        cache_size=0,
        use_gpu=False,
    ).model_copy(update=overrides)
    t = time.perf_counter()
    url = start_server(settings)
    wait_ready(url, timeout_s=180.0)
    deploy_s = time.perf_counter() - t
    try:
        load(url, [f"warm up request {i}" for i in range(20)], 4)  # not captions
        c1 = load(url, c1_queries, 1, local)
        c8 = load(url, c8_queries, 8)
    finally:
        serve.delete(APP)
    return c1, c8, deploy_s


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--arch", default="ViT-B-32")
    ap.add_argument("--videos", type=int, default=10_000)
    ap.add_argument("--frames", type=int, default=12)
    ap.add_argument("--c1-requests", type=int, default=150)
    ap.add_argument("--c8-requests", type=int, default=96)
    ap.add_argument("--batch-size", type=int, default=16, help="max_batch_size, batching on")
    ap.add_argument("--batch-wait-s", type=float, default=0.005, help="batch_wait_timeout_s")
    ap.add_argument("--encoder-cpus", type=float, default=1.5)
    ap.add_argument("--ingress-cpus", type=float, default=0.25)
    ap.add_argument("--ray-cpus", type=int, default=2)
    ap.add_argument("--scan-queries", type=int, default=50, help="in-process thread scan")
    args = ap.parse_args()
    t_start = time.perf_counter()

    import ray
    import torch

    from pipelines.settings import default_collection

    all_captions = msrvtt_test_captions()
    # 5 of the 1000 captions repeat another one: keep the first of each (no cache hits).
    captions = list(dict.fromkeys(" ".join(c.split()) for c in all_captions))
    per_config = args.c1_requests + args.c8_requests
    # (label, ServeSettings overrides); the first is the server's default configuration.
    configs: list[tuple[str, dict[str, object]]] = [
        ("ingress encodes (default)", {}),
        ("ingress encodes, direct ingress (experimental)", {"direct_ingress": True}),
        (f"encoder deployment, batching on ({args.batch_size})", {"encode_in_ingress": False}),
        ("encoder deployment, batching off", {"encode_in_ingress": False, "max_batch_size": 1}),
    ]
    if len(configs) * per_config > len(captions):
        raise SystemExit(
            f"{len(configs)} x {per_config} requests > {len(captions)} unique captions"
        )
    print(f"{len(all_captions)} MSR-VTT test captions, {len(captions)} unique, each sent once")
    slices = {
        name: (captions[i * per_config : i * per_config + args.c1_requests],
               captions[i * per_config + args.c1_requests : (i + 1) * per_config])
        for i, (name, _) in enumerate(configs)
    }  # fmt: skip
    replica_threads = int(
        os.environ.get("OMP_NUM_THREADS") or max(math.floor(args.encoder_cpus), 1)
    )

    print(f"machine: {machine()}")
    print(f"at start: {load_average()}")
    tmp = Path(tempfile.mkdtemp(prefix="bench_serve_"))
    try:
        t = time.perf_counter()
        checkpoint = tmp / "ckpt"
        model_id, dim = write_checkpoint(checkpoint, args.arch)
        ckpt_s = time.perf_counter() - t
        collection = default_collection(model_id)
        qdrant = tmp / "qdrant"
        upsert_s, optimize_s = build_index(
            qdrant, collection, model_id, args.videos, args.frames, dim
        )
        print(
            f"setup: {args.arch} checkpoint {ckpt_s:.0f} s; {args.videos:,} videos "
            f"(D={dim}, K={args.frames}) upserted in {upsert_s:.0f} s, optimize {optimize_s:.0f} s"
        )

        local_qdrant = tmp / "qdrant-local"
        shutil.copytree(qdrant, local_qdrant)
        local = InProcess(checkpoint, local_qdrant, collection)
        try:
            # torch threads in process: the replica's count (Ray sets OMP_NUM_THREADS to
            # floor(num_cpus), at least 1) and this process's default.
            threads = sorted({replica_threads, torch.get_num_threads()})
            scan = thread_scan(local, slices[configs[0][0]][0][: args.scan_queries], threads)
            print(f"after in-process thread scan: {load_average()}")
            torch.set_num_threads(replica_threads)  # the paired baseline matches the replica

            # Ray starts workers (replicas, proxy) at niceness 15 unless told otherwise: on a
            # shared machine they would lose the CPU to this driver and its in-process baseline.
            os.environ.setdefault("RAY_worker_niceness", "0")
            from ray import serve

            results: dict[str, tuple[LoadStats, LoadStats, float]] = {}
            loads: dict[str, str] = {}
            # Direct ingress is a cluster-wide switch read at start: the configurations
            # that use it get a Ray cluster of their own, started with it.
            for direct in (False, True):
                group = [c for c in configs if bool(c[1].get("direct_ingress")) is direct]
                if not group:
                    continue
                if direct:
                    os.environ[DIRECT_INGRESS_ENV] = "1"
                ray.init(num_cpus=args.ray_cpus, include_dashboard=False, log_to_driver=False)
                port = free_port()
                for name, overrides in group:
                    c1_q, c8_q = slices[name]
                    results[name] = serve_config(
                        args, checkpoint, qdrant, port, overrides, c1_q, c8_q, local
                    )
                    loads[name] = load_average()
                serve.shutdown()
                ray.shutdown()
                os.environ.pop(DIRECT_INGRESS_ENV, None)
        finally:
            local.close()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    print()
    print(
        "In process (QueryEncoder.encode + VideoStore.search, top_k 10, "
        f"{min(args.scan_queries, args.c1_requests)} captions one by one, before the server), ms:"
    )
    print("| torch threads | encode p50 | store search p50 | total p50 | total p99 |")
    print("|---:|---:|---:|---:|---:|")
    for n_threads, r in scan.items():
        note = " (= replica)" if n_threads == replica_threads else ""
        print(
            f"| {n_threads}{note} | {r['encode']:.1f} | {r['search']:.2f} | "
            f"{r['total']:.1f} | {r['p99']:.1f} |"
        )
    print()
    print(
        f"HTTP POST /search over 127.0.0.1 (encoder {args.encoder_cpus} CPU = "
        f"{replica_threads} torch thread(s), ingress {args.ingress_cpus} CPU, "
        f"1 replica each, cache off, batch wait {1e3 * args.batch_wait_s:.0f} ms):"
    )
    print(
        "| batching | concurrency | requests | errors | p50 ms | p99 ms | req/s "
        "| ingress took_ms p50 | load avg after |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---|")
    for name, _ in configs:
        c1, c8, _ = results[name]
        label = name
        for conc, st in ((1, c1), (8, c8)):
            print(
                f"| {label} | {conc} | {len(st.latencies_s) + st.errors} | {st.errors} | "
                f"{st.p(50):.1f} | {st.p(99):.1f} | {st.rps:.1f} | "
                f"{statistics.median(st.took_ms):.1f} | {loads[name]} |"
            )
            for sample in st.error_samples:
                print(f"  error sample: {sample}")
    print()
    print(
        "Serve overhead at concurrency 1, paired: each caption in process "
        f"({replica_threads} torch thread(s)) just before its HTTP request, ms:"
    )
    print(
        "| batching | in-process p50 | HTTP p50 | ingress took_ms p50 | overhead "
        "(HTTP p50 / in-process p50) | median per-query ratio |"
    )
    print("|---|---:|---:|---:|---:|---:|")
    ratios: dict[str, float] = {}
    for name, _ in configs:
        c1 = results[name][0]
        base = 1e3 * statistics.median(c1.local_s)
        ratios[name] = c1.p(50) / base
        per_query = statistics.median(
            h / b for h, b in zip(c1.latencies_s, c1.local_s, strict=True)
        )
        print(
            f"| {name} | {base:.1f} | {c1.p(50):.1f} | "
            f"{statistics.median(c1.took_ms):.1f} | {ratios[name]:.2f}x | {per_query:.2f}x |"
        )
    deploys = ", ".join(f"{n}: {results[n][2]:.0f} s" for n, _ in configs)
    print(f"deploy until /readyz: {deploys}")
    print(f"at end: {load_average()}; runtime {time.perf_counter() - t_start:.0f} s")
    for name, overrides in configs[1:]:
        if overrides.get("direct_ingress"):
            c1_direct = results[name][0]
            print(
                f"serve_p50_ms_c1_direct_ingress: {c1_direct.p(50):.1f} "
                f"serve_overhead_ratio_direct_ingress: {ratios[name]:.2f}"
            )
    default = configs[0][0]
    c1_default, c8_default = results[default][0], results[default][1]
    print(
        f"serve_p50_ms_c1: {c1_default.p(50):.1f} serve_overhead_ratio: {ratios[default]:.2f} "
        f"serve_p99_ms_c8: {c8_default.p(99):.1f}"
    )


if __name__ == "__main__":
    main()
