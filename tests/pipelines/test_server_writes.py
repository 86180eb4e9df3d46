"""Server-backend writes: retries with backoff, gRPC with a REST fallback, direct write tasks.

No Qdrant server runs here: qdrant-client's local mode stands in for it, and a narrow fault
injection into the client makes it "unavailable" for a while, as a restarting server is.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import grpc
import httpx
import numpy as np
import pytest
from qdrant_client.http.exceptions import ResponseHandlingException, UnexpectedResponse

from pipelines.store import VideoRecord
from pipelines.store.retry import RetryPolicy, is_transient, with_retries
from pipelines.store.server import ServerVideoStore, _server_client

D, K = 8, 3


def http_error(status: int) -> UnexpectedResponse:
    return UnexpectedResponse(status, "x", b"{}", httpx.Headers())


def grpc_error(code: grpc.StatusCode) -> grpc.RpcError:
    cls = type("_InactiveRpcError", (grpc.RpcError,), {"code": lambda self: code})
    cls.__module__ = "grpc._channel"
    return cls()


def test_transient_errors_are_told_apart() -> None:
    transient = [
        http_error(503),
        http_error(502),
        http_error(429),
        ResponseHandlingException(httpx.ConnectError("refused")),
        httpx.ReadTimeout("slow"),
        ConnectionResetError(),
        grpc_error(grpc.StatusCode.UNAVAILABLE),
        grpc_error(grpc.StatusCode.DEADLINE_EXCEEDED),
    ]
    permanent = [
        http_error(400),
        http_error(404),
        http_error(401),
        ValueError("bad point"),
        grpc_error(grpc.StatusCode.INVALID_ARGUMENT),
        grpc_error(grpc.StatusCode.UNAUTHENTICATED),
    ]
    assert all(is_transient(e) for e in transient)
    assert not any(is_transient(e) for e in permanent)


def test_with_retries_backs_off_and_gives_up() -> None:
    slept: list[float] = []
    errors = iter([http_error(503), http_error(503)])

    def flaky() -> str:
        err = next(errors, None)
        if err is not None:
            raise err
        return "ok"

    policy = RetryPolicy(attempts=3, base_s=1.0, cap_s=8.0)
    assert with_retries(flaky, "upsert", policy, sleep=slept.append) == "ok"
    assert len(slept) == 2 and 0.5 <= slept[0] <= 1.0 and 1.0 <= slept[1] <= 2.0
    with pytest.raises(UnexpectedResponse):  # out of attempts: the last error
        with_retries(lambda: (_ for _ in ()).throw(http_error(503)), "x", policy, lambda s: None)
    calls: list[int] = []

    def bad_request() -> None:
        calls.append(1)
        raise http_error(400)

    with pytest.raises(UnexpectedResponse):
        with_retries(bad_request, "x", policy, sleep=slept.append)
    assert calls == [1]  # never retried


def records(n: int) -> list[VideoRecord]:
    rng = np.random.default_rng(0)
    return [
        VideoRecord(
            uri=f"s3://b/v{i:04d}.mp4",
            video_id=f"v{i:04d}",
            etag=f"e{i}",
            size_bytes=i,
            duration_s=1.0,
            video_vector=rng.normal(size=D).astype(np.float32),
            frame_vectors=rng.normal(size=(K, D)).astype(np.float32),
            frame_ts=[0.0, 0.5, 1.0],
            frame_weights=[1 / 3] * 3,
            model_id="m1",
        )
        for i in range(n)
    ]


class Outage:
    """Wraps a client so that, while ``down`` is set, its calls fail as an unreachable or
    restarting server's do (refused connection, 503, gRPC UNAVAILABLE, in turn)."""

    def __init__(self, client: Any) -> None:
        self.client = client
        self.down = threading.Event()
        self.refused = 0
        self.kinds = [
            lambda: ResponseHandlingException(httpx.ConnectError("connection refused")),
            lambda: http_error(503),
            lambda: grpc_error(grpc.StatusCode.UNAVAILABLE),
        ]

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self.client, name)
        if name not in {"upsert", "retrieve", "set_payload", "delete", "scroll", "count"}:
            return attr

        def call(*args: Any, **kwargs: Any) -> Any:
            if self.down.is_set():
                self.refused += 1
                raise self.kinds[self.refused % 3]()
            return attr(*args, **kwargs)

        return call


def test_a_few_seconds_of_unavailability_lose_nothing() -> None:
    store = ServerVideoStore(location=":memory:")
    store.ensure_collection("videos", D, K, "m1")
    outage = Outage(store._client)
    store._client = outage  # type: ignore[assignment]
    batches = [records(200)[i : i + 20] for i in range(0, 200, 20)]
    outage.down.set()
    restart = threading.Timer(2.5, outage.down.clear)  # the server is back after 2.5 s
    restart.start()
    start = time.monotonic()
    for batch in batches:  # the default policy: the job's own
        store.upsert(batch)
    assert time.monotonic() - start >= 2.4 and outage.refused >= 3
    refused = outage.refused
    outage.down.set()  # down again: the reads the job makes (skip check, count) wait too
    threading.Timer(1.0, outage.down.clear).start()
    known = store.lookup([r.uri for b in batches for r in b])
    assert len(known) == 200 and known["s3://b/v0123.mp4"].etag == "e123"
    assert store.count() == 200 and outage.refused > refused
    store.close()


def test_an_outage_longer_than_the_retries_fails_loudly() -> None:
    store = ServerVideoStore(
        location=":memory:", retry=RetryPolicy(attempts=3, base_s=0.01, cap_s=0.02)
    )
    store.ensure_collection("videos", D, K, "m1")
    outage = Outage(store._client)
    store._client = outage  # type: ignore[assignment]
    outage.down.set()
    with pytest.raises((ResponseHandlingException, UnexpectedResponse, grpc.RpcError)):
        store.upsert(records(5))
    assert outage.refused == 3
    store.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def rest_only_server() -> Iterator[str]:
    """An HTTP server answering the two REST calls a client opens with, and no gRPC port."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            body: dict[str, Any] = {"title": "qdrant", "version": "1.20.0"}
            if self.path.startswith("/collections"):
                body = {"result": {"collections": []}, "status": "ok", "time": 0.0}
            data = json.dumps(body).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_grpc_falls_back_to_rest_when_its_port_does_not_answer(rest_only_server: str) -> None:
    client, transport = _server_client(rest_only_server, None, True, free_port(), 5)
    assert transport == "rest"
    assert client.get_collections().collections == []
    client.close()
    client, transport = _server_client(rest_only_server, None, False, free_port(), 5)
    assert transport == "rest"
    client.close()


@pytest.mark.integration
def test_direct_write_tasks_upsert_through_their_own_client(
    ray_cluster: Any, tmp_path: Any
) -> None:
    """The server path of the sink: each write task opens its own store (here a local-mode
    one, behind an outage) and only counts its writes on the owner."""
    from ray.data.block import BlockAccessor

    from pipelines.store_sink import StoreTarget, StoreWriter, VideoStoreDatasink

    ray = ray_cluster
    server = ServerVideoStore(location=":memory:")
    server.ensure_collection("videos", D, K, "m1")
    outage = Outage(server._client)
    server._client = outage  # type: ignore[assignment]

    closed: list[bool] = []

    class Borrowed:  # the task's store: upserts into `server`; closing it is recorded
        upsert = server.upsert

        def close(self) -> None:
            closed.append(True)

    class LocalTarget(StoreTarget):
        def open_writer(self) -> Any:
            return Borrowed()

    owner_target = StoreTarget(str(tmp_path / "qdrant"), None, None, "videos", D, K, "m1")
    owner: Any = ray.remote(StoreWriter).options(num_cpus=0).remote(owner_target)
    direct = LocalTarget(None, "http://qdrant:6333", None, "videos", D, K, "m1")
    sink = VideoStoreDatasink(owner, "m1", 16, direct=direct)
    rows = records(40)
    block = BlockAccessor.batch_to_block(
        {
            "uri": np.array([r.uri for r in rows], dtype=object),
            "video_id": np.array([r.video_id for r in rows], dtype=object),
            "etag": np.array([r.etag for r in rows], dtype=object),
            "size_bytes": np.array([r.size_bytes for r in rows]),
            "duration_s": np.array([r.duration_s for r in rows]),
            "video_vector": np.stack([r.video_vector for r in rows]),
            "frame_vectors": np.stack([r.frame_vectors for r in rows]),
            "frame_ts": np.array([r.frame_ts for r in rows]),
            "frame_weights": np.array([r.frame_weights for r in rows]),
        }
    )
    outage.down.set()
    threading.Timer(1.0, outage.down.clear).start()
    assert sink.write([block], None) == 40
    assert ray.get(owner.progress.remote()) == [16, 32, 40]  # counted on the owner
    assert server.count() == 40 and outage.refused >= 1 and closed == [True]
    ray.get(owner.close.remote())
