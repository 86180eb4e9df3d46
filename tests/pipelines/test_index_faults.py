"""The ingestion job against bad inputs and a bad network, and its placement on two nodes.

- an S3 bucket (moto on 127.0.0.1) holding good videos and every kind of corrupt one;
- the same bucket behind a fault-injecting HTTP proxy (503 SlowDown, dropped connections,
  cut bodies) that botocore's retries and the fetcher's body resumes must ride out;
- a two-node ``ray.cluster_utils.Cluster`` (in a subprocess: it cannot share this session's
  Ray) where the decode and model actors must land on the nodes carrying the custom
  resources that ``ray_cluster.yaml`` declares.
"""

from __future__ import annotations

import http.client
import io
import itertools
import json
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import av
import numpy as np
import pytest
import yaml
from PIL import Image

from adaclip.config import tiny_config
from adaclip.decode import decode_candidates
from adaclip.synth import generate_dataset
from pipelines.index import main, run_index
from pipelines.store import open_store
from tests.fresh_ray import run_with_own_cluster
from tests.pipelines.conftest import index_settings

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]
NUM_GOOD = 4
TOP_K = tiny_config().top_k


# ---- inputs -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def videos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Four small good clips (16 frames at 8 fps: 2 s each)."""
    root = tmp_path_factory.mktemp("good")
    generate_dataset(root, num_videos=NUM_GOOD, seed=11, frames_per_video=16)
    return root


def _image_bytes(fmt: str) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.full((32, 48, 3), 120, dtype=np.uint8)).save(buf, format=fmt)
    return buf.getvalue()


def _audio_only_mp4() -> bytes:
    """An AAC track in an MP4 container and no video stream (1.3 s of a 440 Hz tone)."""
    buf = io.BytesIO()
    rate, n = 16000, 1024
    with av.open(buf, "w", format="mp4") as container:
        stream = container.add_stream("aac", rate=rate)
        stream.layout = "mono"
        for i in range(20):
            t = (np.arange(n) + i * n) / rate
            tone = (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)[None]
            frame = av.AudioFrame.from_ndarray(tone, format="fltp", layout="mono")
            frame.sample_rate, frame.pts = rate, i * n
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return buf.getvalue()


def corrupt_objects(good: bytes) -> dict[str, tuple[bytes, set[str]]]:
    """Bad ``.mp4`` objects: name -> (bytes, the failure reasons each may be reported as)."""
    return {
        "truncated.mp4": (good[: len(good) // 2], {"NotAMediaFileError", "CorruptVideoError"}),
        "zero_bytes.mp4": (b"", {"NotAMediaFileError"}),
        "random_bytes.mp4": (np.random.default_rng(7).bytes(4096), {"NotAMediaFileError"}),
        "png_image.mp4": (_image_bytes("PNG"), {"NoVideoStreamError"}),
        "jpeg_image.mp4": (_image_bytes("JPEG"), {"NoVideoStreamError"}),
        "audio_only.mp4": (_audio_only_mp4(), {"NoVideoStreamError"}),
    }


def _failures(output: Path) -> list[dict[str, str]]:
    return [json.loads(x) for x in (output / "failures.jsonl").read_text().splitlines()]


def _payloads(qdrant_path: Path) -> dict[str, dict[str, Any]]:
    """Stored payload of every indexed video, by URI."""
    store = open_store(qdrant_path=str(qdrant_path))
    store.open_collection("videos")
    try:
        out = {}
        for uri in store.indexed_etags():
            hit = store.get(Path(uri).stem)
            assert hit is not None and hit.uri == uri
            out[uri] = hit.payload
        assert store.count() == len(out)
        return out
    finally:
        store.close()


# ---- 1. corrupt objects in a bucket -------------------------------------------------------


def test_s3_bucket_with_corrupt_videos(
    ray_cluster: Any,
    s3_endpoint: str,
    make_bucket: Callable[[str, str], Any],
    bucket_name: str,
    videos: Path,
    checkpoint: Path,
    tmp_path: Path,
) -> None:
    client = make_bucket(s3_endpoint, bucket_name)
    good = sorted(videos.glob("video*.mp4"))
    for path in good:
        client.upload_file(str(path), bucket_name, f"clips/{path.name}")
    bad = corrupt_objects(good[0].read_bytes())
    for name, (body, _) in bad.items():
        client.put_object(Bucket=bucket_name, Key=f"clips/{name}", Body=body)
    etags = {
        f"s3://{bucket_name}/{obj['Key']}": obj["ETag"].strip('"')
        for obj in client.list_objects_v2(Bucket=bucket_name)["Contents"]
    }

    settings = index_settings(
        f"s3://{bucket_name}/clips/",
        tmp_path,
        checkpoint,
        s3_endpoint_url=s3_endpoint,
        upsert_batch_size=4,
    )
    summary = run_index(settings)
    total = NUM_GOOD + len(bad)
    assert (summary.listed, summary.indexed, summary.failed, summary.skipped) == (
        total,
        NUM_GOOD,
        len(bad),
        0,
    )

    # exactly the bad objects failed, each at the decode stage with a fitting reason
    failures = _failures(tmp_path / "job")
    by_uri = {row["uri"]: row for row in failures}
    assert len(by_uri) == len(failures) == len(bad)
    assert set(by_uri) == {f"s3://{bucket_name}/clips/{name}" for name in bad}
    for name, (_, reasons) in bad.items():
        row = by_uri[f"s3://{bucket_name}/clips/{name}"]
        assert row["stage"] == "decode", row
        assert row["reason"] in reasons and row["error_type"] == row["reason"], row
        assert row["message"], row
    assert sum(summary.failed_by_reason.values()) == len(bad)

    # every good video indexed, with the payload its object and its decoding give
    payloads = _payloads(tmp_path / "qdrant")
    assert set(payloads) == {f"s3://{bucket_name}/clips/{p.name}" for p in good}
    for path in good:
        uri = f"s3://{bucket_name}/clips/{path.name}"
        payload = payloads[uri]
        assert payload["uri"] == uri and payload["video_id"] == path.stem
        assert payload["etag"] == etags[uri]
        assert payload["size_bytes"] == path.stat().st_size
        assert payload["model_id"] == summary.model_id
        duration = decode_candidates(path, 8, 64).duration
        assert payload["duration_s"] == pytest.approx(duration, abs=1e-6)
        assert payload["duration_s"] == pytest.approx(2.0, abs=0.2)  # 16 frames at 8 fps
        ts = payload["frame_ts"]
        assert len(ts) == TOP_K and ts == sorted(ts)
        assert ts[0] >= 0.0 and ts[-1] <= payload["duration_s"]

    # a second run skips the good videos and the bad ones (same etags: not downloaded
    # again) and writes nothing
    again = run_index(settings)
    assert (again.listed, again.indexed, again.skipped, again.failed) == (total, 0, NUM_GOOD, 0)
    assert again.skipped_failed == len(bad)
    assert _failures(tmp_path / "job") == []
    assert _payloads(tmp_path / "qdrant") == payloads  # indexed_at included: untouched


# ---- 2. a flaky endpoint ------------------------------------------------------------------

SLOW_DOWN = (
    b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>SlowDown</Code>'
    b"<Message>Please reduce your request rate.</Message>"
    b"<RequestId>fault-proxy</RequestId></Error>"
)
HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "proxy-connection", "upgrade"}


@dataclass
class FaultPlan:
    """Every ``every``-th GET (the 1st, 4th, 7th ...) fails, cycling through the modes,
    until ``max_faults`` have been injected; other requests pass through unchanged."""

    every: int = 3
    max_faults: int = 12
    gets: int = 0
    faults: list[tuple[str, str]] = field(default_factory=list)  # (mode, path)
    served: list[tuple[str, str, int]] = field(default_factory=list)  # (method, path, status)
    lock: threading.Lock = field(default_factory=threading.Lock)
    modes: Iterator[str] = field(
        default_factory=lambda: itertools.cycle(["slow_down", "drop", "cut_body"])
    )

    def next_fault(self, method: str, path: str) -> str | None:
        with self.lock:
            if method != "GET":
                return None
            self.gets += 1
            if (self.gets - 1) % self.every or len(self.faults) >= self.max_faults:
                return None
            mode = next(self.modes)
            if mode == "cut_body" and "list-type" in path:
                mode = "slow_down"  # cut bodies only on object GETs
            self.faults.append((mode, path))
            return mode


def _proxy_handler(upstream: str, plan: FaultPlan) -> type[BaseHTTPRequestHandler]:
    up = urlsplit(upstream)

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: Any) -> None:
            pass

        def _forward(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else None
            fault = plan.next_fault(self.command, self.path)
            if fault == "drop":  # close the socket without a word
                self.close_connection = True
                self.connection.shutdown(2)
                return
            if fault == "slow_down":
                self._reply(503, [("Content-Type", "application/xml")], SLOW_DOWN)
                return
            conn = http.client.HTTPConnection(up.hostname or "127.0.0.1", up.port, timeout=30)
            try:
                headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
                conn.request(self.command, self.path, body=body, headers=headers)
                resp = conn.getresponse()
                data = resp.read()
                kept = [(k, v) for k, v in resp.getheaders() if k.lower() not in HOP_BY_HOP]
            finally:
                conn.close()
            if fault == "cut_body" and len(data) > 1:  # promise all, send half, hang up
                self._reply(resp.status, kept, data, cut=len(data) // 2)
                return
            self._reply(resp.status, kept, data)

        def _reply(
            self, status: int, headers: list[tuple[str, str]], data: bytes, cut: int | None = None
        ) -> None:
            plan.served.append((self.command, self.path, status))
            self.send_response(status)
            for key, value in headers:
                if key.lower() != "content-length" or self.command == "HEAD":
                    self.send_header(key, value)
            if self.command != "HEAD":
                self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(data if cut is None else data[:cut])
            if cut is not None:
                self.wfile.flush()
                self.close_connection = True
                self.connection.shutdown(2)

        do_GET = do_HEAD = do_PUT = do_POST = do_DELETE = _forward

    return Handler


@contextmanager
def running_fault_proxy(upstream: str, plan: FaultPlan) -> Iterator[str]:
    """Run a fault-injecting proxy in front of ``upstream``; yield its URL."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _proxy_handler(upstream, plan))
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def fault_proxy(s3_endpoint: str) -> Iterator[tuple[str, FaultPlan]]:
    """``(url, plan)`` of a fault-injecting proxy in front of the moto endpoint."""
    plan = FaultPlan()
    with running_fault_proxy(s3_endpoint, plan) as url:
        yield url, plan


def test_fetcher_resumes_bodies_the_network_cuts(
    s3_endpoint: str,
    make_bucket: Callable[[str, str], Any],
    bucket_name: str,
    videos: Path,
) -> None:
    """Two cut bodies in a row: the fetcher goes on from the byte each one stopped at."""
    from pipelines.object_fetch import ObjectFetcher, TransientStorageError

    client = make_bucket(s3_endpoint, bucket_name)
    data = (videos / "video00000.mp4").read_bytes()
    client.put_object(Bucket=bucket_name, Key="v.mp4", Body=data)
    uri = f"s3://{bucket_name}/v.mp4"
    cuts = FaultPlan(every=1, max_faults=2, modes=itertools.cycle(["cut_body"]))
    with running_fault_proxy(s3_endpoint, cuts) as url:
        fetcher = ObjectFetcher(url, max_retries=2, backoff_base_s=0.001)
        with fetcher.fetch(uri) as f:
            assert f.read() == data
    # a GET cut at half, a ranged GET of the rest cut at half, a ranged GET of the rest
    assert [status for _, _, status in cuts.served] == [200, 206, 206]
    assert len(cuts.faults) == 2

    more_cuts = FaultPlan(every=1, max_faults=3, modes=itertools.cycle(["cut_body"]))
    with running_fault_proxy(s3_endpoint, more_cuts) as url:
        fetcher = ObjectFetcher(url, max_retries=2, backoff_base_s=0.001)
        with pytest.raises(TransientStorageError) as info, fetcher.fetch(uri):
            pass
    assert info.value.attempts == 3 and info.value.reason == "transient"


def test_flaky_s3_endpoint_still_indexes_everything(
    ray_cluster: Any,
    s3_endpoint: str,
    make_bucket: Callable[[str, str], Any],
    bucket_name: str,
    fault_proxy: tuple[str, FaultPlan],
    videos: Path,
    checkpoint: Path,
    tmp_path: Path,
) -> None:
    proxy_url, plan = fault_proxy
    client = make_bucket(s3_endpoint, bucket_name)  # set up directly, not through the proxy
    good = sorted(videos.glob("video*.mp4"))
    for path in good:
        client.upload_file(str(path), bucket_name, f"in/{path.name}")

    # one decode actor fetching one video at a time: the n-th GET is always the same request
    rc = main([
        f"s3://{bucket_name}/in/", "--s3-endpoint-url", proxy_url,
        "--checkpoint", str(checkpoint), "--qdrant-path", str(tmp_path / "qdrant"),
        "--collection", "videos", "--output", str(tmp_path / "job"), "--frame-size", "64",
        "--decode-actors", "1", "--decode-batch-size", "1", "--model-batch-size", "4",
        "--max-retries", "3", "--list-shards", "1",  # one LIST: faults reach object GETs too
    ])  # fmt: skip
    assert rc == 0
    summary = json.loads((tmp_path / "job" / "summary.json").read_text())
    assert (summary["listed"], summary["indexed"], summary["failed"]) == (NUM_GOOD, NUM_GOOD, 0)
    assert _failures(tmp_path / "job") == []
    uris = {f"s3://{bucket_name}/in/{p.name}" for p in good}
    assert set(_payloads(tmp_path / "qdrant")) == uris

    # the faults really happened: on the listing and on object GETs, in each of the three
    # modes (503 and drops: botocore's standard retries; cut bodies: ObjectFetcher's resumes)
    modes = {mode for mode, _ in plan.faults}
    assert modes == {"slow_down", "drop", "cut_body"}, plan.faults
    assert any("list-type" in path for _, path in plan.faults), plan.faults
    object_faults = [path for _, path in plan.faults if "list-type" not in path]
    assert len(object_faults) >= 2, plan.faults
    assert len(plan.faults) <= plan.max_faults
    # and every object was served whole in the end
    served = {path.split("?")[0] for m, path, s in plan.served if m == "GET" and s == 200}
    assert {f"/{bucket_name}/in/{p.name}" for p in good} <= served


# ---- 3. placement on two nodes ------------------------------------------------------------

TWO_NODE_SCRIPT = """
def main(args):
    import time
    import ray
    from ray.util.state import list_actors

    from pipelines.index import run_index
    from pipelines.settings import IndexSettings
    from tests.fresh_ray import start_cluster

    cluster, (decode_node, model_node) = start_cluster(
        [{"num_cpus": 1, "resources": {args["decode_resource"]: 1000}},
         {"num_cpus": 1, "resources": {args["model_resource"]: 1000}}],
        dashboard=True,  # the state API (list_actors) needs it
    )
    try:
        settings = IndexSettings(
            decode_resources={args["decode_resource"]: 0.001},
            model_resources={args["model_resource"]: 0.001},
            **args["settings"],
        )
        summary = run_index(settings)
        actors = []
        for _ in range(30):  # the state API may lag the GCS by a moment
            actors = [
                {"class_name": a.class_name, "node_id": a.node_id, "state": a.state}
                for a in list_actors(address=cluster.address, detail=True, limit=1000,
                                     raise_on_missing_output=False)
                if a.class_name.startswith("MapWorker(")
            ]
            if {"DecodeVideos", "EmbedVideos"} <= {
                n for a in actors for n in ("DecodeVideos", "EmbedVideos")
                if n in a["class_name"]
            }:
                break
            time.sleep(1)
        return {
            "head": cluster.head_node.node_id,
            "decode_node": decode_node.node_id,
            "model_node": model_node.node_id,
            "actors": actors,
            "indexed": summary.indexed,
            "failed": summary.failed,
        }
    finally:
        ray.shutdown()
        cluster.shutdown()
"""


def node_resources(path: Path = REPO / "ray_cluster.yaml") -> tuple[str, str]:
    """The custom resources of the decode (CPU-only) and model (GPU) node types."""
    config = yaml.safe_load(path.read_text())
    node_types, head = config["available_node_types"], config["head_node_type"]
    decode: list[str] = []
    model: list[str] = []
    for name, spec in node_types.items():
        custom = [r for r in spec.get("resources", {}) if r not in ("CPU", "GPU", "memory")]
        if name == head or not custom:
            continue
        (model if spec["resources"].get("GPU", 0) > 0 else decode).extend(custom)
    assert len(decode) == 1 and len(model) == 1, node_types
    return decode[0], model[0]


@pytest.mark.slow  # a two-node cluster of its own (~70 s): make test-slow
def test_two_node_cluster_places_decode_and_model_actors(
    videos: Path, checkpoint: Path, tmp_path: Path
) -> None:
    decode_resource, model_resource = node_resources()
    assert (decode_resource, model_resource) == ("cpu_worker", "gpu_worker")  # as documented
    args = {
        "decode_resource": decode_resource,
        "model_resource": model_resource,
        "settings": {
            "source": str(videos),
            "checkpoint": str(checkpoint),
            "qdrant_path": str(tmp_path / "qdrant"),
            "collection": "videos",
            "output": str(tmp_path / "job"),
            "frame_size": 64,
            "decode_actors": 1,
            "decode_batch_size": 2,
            "model_batch_size": 4,
            "use_gpu": False,
        },
    }
    result = run_with_own_cluster(TWO_NODE_SCRIPT, args, tmp_path, timeout_s=180)
    assert (result["indexed"], result["failed"]) == (NUM_GOOD, 0)
    nodes = {result["head"], result["decode_node"], result["model_node"]}
    assert len(nodes) == 3, result

    decode_actors = [a for a in result["actors"] if "DecodeVideos" in a["class_name"]]
    model_actors = [a for a in result["actors"] if "EmbedVideos" in a["class_name"]]
    assert decode_actors and model_actors, result["actors"]
    assert {a["node_id"] for a in decode_actors} == {result["decode_node"]}, result
    assert {a["node_id"] for a in model_actors} == {result["model_node"]}, result
