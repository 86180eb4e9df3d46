"""Ranged reads: PyAV decodes a long video from S3 reading a fraction of its bytes.

The bytes are counted on the server side: a second moto server (same in-process backends,
so it serves the same buckets) behind a WSGI middleware that sums every response body.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from adaclip.decode import decode_candidates
from pipelines.embed import DecodeSpec, decode_object
from pipelines.object_fetch import ObjectChangedError, ObjectFetcher
from pipelines.ranged_object import RangedObject, parse_content_range

pytestmark = pytest.mark.integration
N, SIZE = 6, 64


@dataclass
class Counted:
    """What the counting server sent: GET requests and body bytes per key."""

    requests: dict[str, int] = field(default_factory=dict)
    bytes: dict[str, int] = field(default_factory=dict)
    ranges: list[str | None] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def reset(self) -> None:
        with self.lock:
            self.requests.clear()
            self.bytes.clear()
            self.ranges.clear()


@pytest.fixture(scope="module")
def counting_s3(s3_endpoint: str) -> Iterator[tuple[str, Counted]]:
    from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app
    from werkzeug.serving import make_server

    counted = Counted()
    app = DomainDispatcherApplication(create_backend_app)

    def middleware(environ: dict[str, Any], start_response: Any) -> Any:
        key = environ.get("PATH_INFO", "")
        body = app(environ, start_response)
        if environ["REQUEST_METHOD"] != "GET":
            return body
        chunks = list(body)
        with counted.lock:
            counted.requests[key] = counted.requests.get(key, 0) + 1
            counted.bytes[key] = counted.bytes.get(key, 0) + sum(len(c) for c in chunks)
            counted.ranges.append(environ.get("HTTP_RANGE"))
        return chunks

    server = make_server("127.0.0.1", 0, middleware, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}", counted
    server.shutdown()


def long_clip(path: Path, seconds: int = 30, faststart: bool = False) -> Path:
    """A 192x144 H.264 clip with a keyframe every second and noisy (costly) content; each
    frame's mean level encodes its index, so decoded frames can be told apart."""
    import av

    rng = np.random.default_rng(0)
    noise = rng.integers(0, 60, size=(8, 144, 192, 3), dtype=np.uint8)
    options = {"g": "25", "keyint_min": "25", "sc_threshold": "0", "preset": "ultrafast"}
    if faststart:
        options["movflags"] = "+faststart"
    with av.open(str(path), mode="w", options=options if faststart else {}) as container:
        stream = container.add_stream("libx264", rate=25, options=options)
        stream.width, stream.height, stream.pix_fmt = 192, 144, "yuv420p"
        for i in range(seconds * 25):
            image = noise[i % 8] + np.uint8(i % 190)
            container.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
        container.mux(stream.encode(None))
    return path


@pytest.mark.parametrize("faststart", [True, False], ids=["faststart", "moov_at_end"])
def test_decoding_reads_a_fraction_of_the_object(
    counting_s3: tuple[str, Counted],
    make_bucket: Any,
    s3_endpoint: str,
    bucket_name: str,
    tmp_path: Path,
    faststart: bool,
) -> None:
    endpoint, counted = counting_s3
    clip = long_clip(tmp_path / "long.mp4", faststart=faststart)
    size = clip.stat().st_size
    client = make_bucket(s3_endpoint, bucket_name)
    client.upload_file(str(clip), bucket_name, "videos/long.mp4")
    uri = f"s3://{bucket_name}/videos/long.mp4"
    key = f"/{bucket_name}/videos/long.mp4"
    spec = DecodeSpec(N, SIZE)
    local = decode_candidates(str(clip), N, SIZE)

    counted.reset()
    ranged = ObjectFetcher(endpoint, ranged_min_bytes=0, ranged_block_bytes=32 << 10)
    frames, times, duration = decode_object(ranged, uri, spec, size_hint=size)
    ranged_bytes, ranged_requests = counted.bytes[key], counted.requests[key]
    assert all(r is not None and r.startswith("bytes=") for r in counted.ranges)

    counted.reset()
    whole = ObjectFetcher(endpoint)  # the default: a small object is downloaded whole
    frames_w, times_w, _ = decode_object(whole, uri, spec, size_hint=size)
    assert counted.bytes[key] == size and counted.requests[key] == 1
    assert counted.ranges == [None]

    np.testing.assert_array_equal(frames, local.frames)  # the same frames, bit for bit
    np.testing.assert_array_equal(frames_w, local.frames)
    np.testing.assert_allclose(times, local.timestamps)
    assert abs(duration - 30.0) < 0.1
    print(f"ranged read: {ranged_bytes} of {size} bytes in {ranged_requests} requests")
    assert ranged_bytes < 0.3 * size, (ranged_bytes, size, ranged_requests)
    assert ranged_requests > 2


def test_the_etag_is_pinned(
    counting_s3: tuple[str, Counted], make_bucket: Any, s3_endpoint: str, bucket_name: str
) -> None:
    endpoint, _ = counting_s3
    client = make_bucket(s3_endpoint, bucket_name)
    client.put_object(Bucket=bucket_name, Key="a.bin", Body=bytes(range(256)) * 400)
    fetcher = ObjectFetcher(endpoint, ranged_min_bytes=0, ranged_block_bytes=4096)
    obj = RangedObject.open(fetcher.client, "s3://x/a.bin", bucket_name, "a.bin", block_bytes=4096)
    assert obj.size == 102400 and obj.requests == 1
    obj.seek(50000)
    assert obj.read(10) == bytes((50000 + i) % 256 for i in range(10))
    obj.seek(-5, 2)
    assert obj.read(100) == bytes([251, 252, 253, 254, 255]) and obj.read(1) == b""
    client.put_object(Bucket=bucket_name, Key="a.bin", Body=b"replaced" * 20000)
    obj.seek(80000)
    with pytest.raises(ObjectChangedError):  # If-Match: never a mix of two versions
        obj.read(10)


def test_forward_reads_grow_the_window() -> None:
    class FakeClient:
        def __init__(self) -> None:
            self.data = bytes(range(256)) * 4096  # 1 MiB
            self.asked: list[str] = []

        def get_object(self, Range: str, **_: Any) -> dict[str, Any]:  # noqa: N803
            import io

            self.asked.append(Range)
            a, b = (int(x) for x in Range[len("bytes=") :].split("-"))
            b = min(b, len(self.data) - 1)
            return {
                "Body": io.BytesIO(self.data[a : b + 1]),
                "ContentRange": f"bytes {a}-{b}/{len(self.data)}",
                "ETag": '"e"',
            }

    fake = FakeClient()
    obj = RangedObject.open(fake, "s3://b/k", "b", "k", block_bytes=1024, max_window_bytes=8192)
    assert obj.read() == fake.data  # read on to the end: windows 2k, 4k, 8k, 8k ...
    spans = [parse_content_range("bytes " + r[len("bytes=") :] + "/0") for r in fake.asked]
    widths = [s[1] - s[0] + 1 for s in spans if s is not None]
    assert widths[:5] == [1024, 2048, 4096, 8192, 8192]
    asked = len(fake.asked)
    obj.seek(0)
    obj.read(100)  # cached
    assert len(fake.asked) == asked
