"""Client-side cost of one Qdrant upsert batch: REST/JSON vs gRPC/protobuf, per point.

Builds the batch the index job sends (``ServerVideoStore._upsert_points``: 64 points of a
D-dim ``video`` vector, K frame vectors and the payload with its Gram matrix), then encodes
the request body exactly as qdrant-client 1.20 does on each transport:

- REST: ``points_api.jsonable_encoder(PointsList(points=...))`` (pydantic JSON), the body
  of ``PUT /collections/{name}/points``;
- gRPC: ``UpsertPoints(points=[RestToGrpc.convert_point_struct(p) ...])`` serialised with
  ``SerializeToString()``, the message ``Points.Upsert`` sends.

No server is involved: this is what the client spends and puts on the wire per point.

    python -m benchmarks.upsert_wire                  # D=512, K=12, 64 points a batch
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import numpy as np

from benchmarks.common import machine, print_table, synthetic_records


def _best_time(fn: Callable[[], object], repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def main(argv: list[str] | None = None) -> None:
    from qdrant_client import grpc as qgrpc
    from qdrant_client import models as qm
    from qdrant_client.conversions.conversion import RestToGrpc
    from qdrant_client.http.api.points_api import jsonable_encoder

    from pipelines.store.base import FRAMES_VECTOR, VIDEO_VECTOR, point_id_for

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--frames", type=int, default=12)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    rng = np.random.default_rng(0)
    b, k, d = args.batch, args.frames, args.dim
    video = rng.normal(size=(b, d)).astype(np.float32)
    frames = rng.normal(size=(b, k, d)).astype(np.float32)
    records = synthetic_records(video, frames, 0, "bench")

    def build() -> list[qm.PointStruct]:  # what both transports start from
        return [
            qm.PointStruct(
                id=point_id_for(r.uri),
                vector={
                    VIDEO_VECTOR: r.video_vector.tolist(),
                    FRAMES_VECTOR: r.frame_vectors.tolist(),
                },
                payload=r.payload(),
            )
            for r in records
        ]

    points = build()

    def rest() -> bytes:
        return str(jsonable_encoder(qm.PointsList(points=points))).encode()

    def grpc() -> bytes:
        msg = qgrpc.UpsertPoints(
            collection_name="videos",
            wait=True,
            points=[RestToGrpc.convert_point_struct(p) for p in points],
        )
        return bytes(msg.SerializeToString())

    t_build = _best_time(build, args.repeats)
    sizes = {"rest": len(rest()), "grpc": len(grpc())}
    times = {"rest": _best_time(rest, args.repeats), "grpc": _best_time(grpc, args.repeats)}
    floats = d * (k + 1)
    rows = [
        {
            "transport": name,
            "bytes/point": f"{sizes[name] / b:,.0f}",
            "bytes/float": f"{sizes[name] / b / floats:.2f}",
            "encode us/point": f"{times[name] / b * 1e6:,.0f}",
            "+ PointStruct build us/point": f"{(times[name] + t_build) / b * 1e6:,.0f}",
        }
        for name in ("rest", "grpc")
    ]
    print(f"{machine()}; D={d}, K={k}, {b} points a batch, best of {args.repeats}")
    print_table(rows)
    print(
        f"upsert_rest_bytes_per_point: {sizes['rest'] / b:.0f} "
        f"upsert_grpc_bytes_per_point: {sizes['grpc'] / b:.0f} "
        f"upsert_rest_us_per_point: {times['rest'] / b * 1e6:.0f} "
        f"upsert_grpc_us_per_point: {times['grpc'] / b * 1e6:.0f}"
    )


if __name__ == "__main__":
    main()
