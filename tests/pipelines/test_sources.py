"""Object-storage sources against a real S3 endpoint (moto's HTTP server) and local files."""

from __future__ import annotations

import hashlib
import io
import os
import pickle
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import botocore.exceptions as bce
import pytest
from botocore.awsrequest import AWSResponse

import pipelines.object_fetch as object_fetch
import pipelines.sources as sources
from pipelines.object_fetch import backoff_delay, to_fetch_error
from pipelines.sources import (
    VIDEO_EXTENSIONS,
    AccessDeniedError,
    FetchError,
    ObjectChangedError,
    ObjectFetcher,
    ObjectNotFoundError,
    SourceError,
    TransientStorageError,
    VideoObject,
    classify_error,
    download_folder,
    list_videos,
    presigned_url,
    split_s3_uri,
    upload_folder,
)

pytestmark = pytest.mark.integration

MakeBucket = Callable[[str, str], Any]


def client_error(code: str, status: int = 400, op: str = "GetObject") -> bce.ClientError:
    response: Any = {
        "Error": {"Code": code, "Message": f"simulated {code}"},
        "ResponseMetadata": {"HTTPStatusCode": status},
    }
    return bce.ClientError(response, op)


class Raw:
    """The raw stream of a canned HTTP answer (what botocore's AWSResponse reads)."""

    def __init__(self, data: bytes) -> None:
        self.data = data

    def stream(self, **_: Any) -> Any:
        yield self.data


class CutBody:
    """A GET body that breaks after ``limit`` bytes, as a connection dropped mid-body does."""

    def __init__(self, body: Any, limit: int, on_cut: Callable[[], None] | None) -> None:
        self.body, self.left, self.on_cut = body, limit, on_cut

    def read(self, n: int = -1) -> bytes:
        if self.left <= 0:
            if self.on_cut is not None:
                self.on_cut()
            raise bce.ResponseStreamingError(error="connection reset mid-body")
        chunk = self.body.read(self.left if n < 0 else min(n, self.left))
        self.left -= len(chunk)
        return bytes(chunk)

    def close(self) -> None:
        self.body.close()


class Faults:
    """Faults injected into a real botocore client (retry mode included) by event hooks.

    ``requests`` answer the next requests instead of the endpoint, in order: an exception is
    raised where the HTTP send would be (a dropped connection), ``(status, code)`` is an S3
    error answer. ``cut_bodies`` break the next GET bodies after that many bytes, calling
    ``on_cut`` first. ``sent`` holds the headers of every attempt, injected ones included.
    """

    def __init__(
        self,
        requests: Sequence[BaseException | tuple[int, str]] = (),
        cut_bodies: Sequence[int] = (),
        on_cut: Callable[[], None] | None = None,
    ) -> None:
        self.requests = list(requests)
        self.cut_bodies = list(cut_bodies)
        self.on_cut = on_cut
        self.sent: list[dict[str, str]] = []

    def client(self, endpoint: str | None, max_attempts: int) -> Any:
        client = sources.s3_client(endpoint, max_attempts=max_attempts)
        client.meta.events.register("before-send.s3", self._before_send)
        client.meta.events.register("after-call.s3.GetObject", self._after_get)
        return client

    def fetcher(self, endpoint: str, **kwargs: Any) -> ObjectFetcher:
        kwargs.setdefault("backoff_base_s", 0.001)
        return ObjectFetcher(endpoint, client_factory=self.client, **kwargs)

    def _before_send(self, request: Any, **_: Any) -> AWSResponse | None:
        self.sent.append(
            {k: v.decode() if isinstance(v, bytes) else str(v) for k, v in request.headers.items()}
        )
        if not self.requests:
            return None
        fault = self.requests.pop(0)
        if isinstance(fault, BaseException):
            raise fault
        status, code = fault
        body = f"<Error><Code>{code}</Code><Message>simulated {code}</Message></Error>"
        return AWSResponse(
            request.url, status, {"Content-Type": "application/xml"}, Raw(body.encode())
        )

    def _after_get(self, parsed: dict[str, Any], **_: Any) -> None:
        if self.cut_bodies and "Body" in parsed:
            parsed["Body"] = CutBody(parsed["Body"], self.cut_bodies.pop(0), self.on_cut)


@pytest.fixture
def bucket(s3_endpoint: str, make_bucket: MakeBucket, bucket_name: str) -> tuple[Any, str]:
    return make_bucket(s3_endpoint, bucket_name), bucket_name


# ---- URIs ---------------------------------------------------------------------------------


def test_split_s3_uri() -> None:
    assert split_s3_uri("s3://my-bucket/a/b.mp4") == ("my-bucket", "a/b.mp4")
    assert split_s3_uri("s3://my.bucket") == ("my.bucket", "")
    for bad in ["/local/path", "s3:/x/y", "s3://", "s3://Upper/x", "s3://ab/x", "s3://a_b/x"]:
        with pytest.raises(ValueError):
            split_s3_uri(bad)


def test_video_extensions() -> None:
    assert {".mp4", ".mkv", ".webm", ".3gp", ".ts"} <= VIDEO_EXTENSIONS
    assert all(e == e.lower() and e.startswith(".") for e in VIDEO_EXTENSIONS)


# ---- listing ------------------------------------------------------------------------------


def test_list_s3_paginates_filters_and_reports_etags(
    s3_endpoint: str, bucket: tuple[Any, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    client, name = bucket
    bodies = {f"videos/clip{i}.mp4": f"video {i}".encode() * (i + 1) for i in range(7)}
    bodies["videos/sub/LOUD.MOV"] = b"upper-case extension"
    for key, body in bodies.items():
        client.put_object(Bucket=name, Key=key, Body=body)
    for key in ["videos/notes.txt", "videos/clip.mp4.json", "videos/sub/", "videos2/other.mp4"]:
        client.put_object(Bucket=name, Key=key, Body=b"x")

    list_calls = []
    real_factory = sources.s3_client

    def counting_client(endpoint: str | None) -> Any:
        c = real_factory(endpoint)
        c.meta.events.register("before-call.s3.ListObjectsV2", lambda **_: list_calls.append(1))
        return c

    monkeypatch.setattr(sources, "s3_client", counting_client)
    videos = list(list_videos(f"s3://{name}/videos", s3_endpoint_url=s3_endpoint, page_size=2))

    assert [v.uri for v in videos] == [f"s3://{name}/{k}" for k in sorted(bodies)]
    assert len(list_calls) == 6  # 12 keys under videos/, 2 per page
    for v in videos:
        body = bodies[v.uri.split("/", 3)[3]]
        assert v.size_bytes == len(body)
        assert v.etag == hashlib.md5(body).hexdigest()  # single-part ETag, quotes stripped
    assert videos[-1].video_id == "LOUD" and videos[0].video_id == "clip0"

    limited = list_videos(f"s3://{name}/videos/", s3_endpoint_url=s3_endpoint, limit=3)
    assert [v.uri for v in limited] == [v.uri for v in videos[:3]]
    only_mov = list_videos(f"s3://{name}", s3_endpoint_url=s3_endpoint, extensions=["mov"])
    assert [v.video_id for v in only_mov] == ["LOUD"]


def test_list_s3_missing_source(s3_endpoint: str, bucket: tuple[Any, str]) -> None:
    _, name = bucket
    with pytest.raises(SourceError, match="no objects under"):
        list(list_videos(f"s3://{name}/nothing-here", s3_endpoint_url=s3_endpoint))
    with pytest.raises(SourceError, match="not_found"):
        list(list_videos("s3://no-such-bucket-xyz/v", s3_endpoint_url=s3_endpoint))
    with pytest.raises(SourceError, match="invalid bucket"):
        list_videos("s3://Bad_Bucket/v")
    with pytest.raises(SourceError, match="unsupported"):
        list_videos("gs://bucket/v")


def write(path: Path, data: bytes = b"video") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def test_list_local_folder_recursive_sorted(tmp_path: Path) -> None:
    root = tmp_path / "videos"
    for rel in ["b.mp4", "a/z.MKV", "a/b/c.webm", "a-b.mov", "c.avi"]:
        write(root / rel, rel.encode())
    write(root / "readme.txt")
    write(root / "a" / "frames.jpg")

    videos = list(list_videos(str(root)))

    rels = [Path(v.uri).relative_to(root.resolve()).as_posix() for v in videos]
    assert rels == ["a/b/c.webm", "a/z.MKV", "a-b.mov", "b.mp4", "c.avi"]
    expected = sorted(p for p in root.rglob("*") if p.suffix.lower() in VIDEO_EXTENSIONS)
    assert rels == [p.relative_to(root).as_posix() for p in expected]
    first = videos[0]
    st = os.stat(first.uri)
    assert Path(first.uri).is_absolute() and not first.uri.startswith("file:")
    assert first.etag == f"{st.st_mtime_ns:x}-{st.st_size:x}"
    assert first.size_bytes == len(b"a/b/c.webm") and first.video_id == "c"
    assert list(list_videos(str(root), limit=2)) == videos[:2]
    assert list(list_videos(str(root / "b.mp4"))) == [videos[3]]  # a single video file

    with pytest.raises(SourceError, match="not found"):
        list_videos(str(tmp_path / "missing"))  # raises at call time


def test_list_manifest_mixed(s3_endpoint: str, bucket: tuple[Any, str], tmp_path: Path) -> None:
    client, name = bucket
    client.put_object(Bucket=name, Key="m/one.mp4", Body=b"one!")
    local = write(tmp_path / "data" / "two.mkv", b"two")
    elsewhere = write(tmp_path / "abs" / "three.webm", b"three")
    manifest = tmp_path / "data" / "list.txt"
    manifest.write_text(
        "# videos to index\n"
        f"s3://{name}/m/one.mp4\n"
        "\n"
        "  two.mkv  \n"
        f"{elsewhere}\n"
        f"s3://{name}/m/one.mp4\n"  # duplicate
        "   # indented comment\n"
    )

    videos = list(list_videos(str(manifest), s3_endpoint_url=s3_endpoint))

    head = client.head_object(Bucket=name, Key="m/one.mp4")
    assert videos == [
        VideoObject(f"s3://{name}/m/one.mp4", 4, head["ETag"].strip('"'), "one"),
        VideoObject(str(local.resolve()), 3, sources.local_etag(local.stat()), "two"),
        VideoObject(str(elsewhere), 5, sources.local_etag(elsewhere.stat()), "three"),
    ]

    bad = tmp_path / "bad.txt"
    bad.write_text(f"{local}\ns3://{name}/m/missing.mp4\nnope.mp4\n")
    with pytest.raises(SourceError, match=r"bad.txt:2: .*missing.mp4"):
        list(list_videos(str(bad), s3_endpoint_url=s3_endpoint))
    kept = list_videos(str(bad), s3_endpoint_url=s3_endpoint, on_missing="skip")
    assert [v.video_id for v in kept] == ["two"]
    (tmp_path / "scheme.txt").write_text("https://example.com/a.mp4\n")
    with pytest.raises(SourceError, match="scheme.txt:1: unsupported"):
        list(list_videos(str(tmp_path / "scheme.txt")))


# ---- fetching -----------------------------------------------------------------------------


def test_fetch_small_in_memory(s3_endpoint: str, bucket: tuple[Any, str], tmp_path: Path) -> None:
    client, name = bucket
    data = os.urandom(5000)
    client.put_object(Bucket=name, Key="small.mp4", Body=data)
    fetcher = ObjectFetcher(s3_endpoint, spool_dir=tmp_path)

    with fetcher.fetch(f"s3://{name}/small.mp4") as f:
        assert isinstance(f, io.BytesIO)
        assert f.read() == data
        f.seek(100)
        assert f.read(4) == data[100:104]
    assert not list(tmp_path.iterdir())

    local = write(tmp_path / "local.mp4", b"local bytes")
    with fetcher.fetch(str(local)) as f:
        assert f.read() == b"local bytes" and f.seekable()
    assert f.closed


def test_fetch_large_is_spooled_and_removed(
    s3_endpoint: str, bucket: tuple[Any, str], tmp_path: Path
) -> None:
    client, name = bucket
    data = os.urandom(300_000)
    client.put_object(Bucket=name, Key="big.mkv", Body=data)
    spool = tmp_path / "spool"
    fetcher = ObjectFetcher(
        s3_endpoint, spool_threshold_bytes=100_000, spool_dir=spool, chunk_bytes=64 << 10
    )
    uri = f"s3://{name}/big.mkv"

    with fetcher.fetch(uri) as f:
        assert not isinstance(f, io.BytesIO)
        (spooled,) = spool.iterdir()
        assert spooled.suffix == ".mkv" and spooled.stat().st_size == len(data)
        f.seek(-10, os.SEEK_END)
        assert f.read() == data[-10:]
    assert not list(spool.iterdir())

    with pytest.raises(RuntimeError, match="decoder exploded"), fetcher.fetch(uri) as f:
        assert len(list(spool.iterdir())) == 1
        raise RuntimeError("decoder exploded")
    assert not list(spool.iterdir())


def test_fetch_missing_is_not_found_without_retry(
    s3_endpoint: str, bucket: tuple[Any, str], tmp_path: Path
) -> None:
    _, name = bucket
    faults = Faults()
    fetcher = faults.fetcher(s3_endpoint, max_retries=3)
    with pytest.raises(ObjectNotFoundError) as info, fetcher.fetch(f"s3://{name}/gone.mp4"):
        pass
    assert len(faults.sent) == 1
    err = info.value
    assert (err.uri, err.reason, err.attempts) == (f"s3://{name}/gone.mp4", "not_found", 1)
    assert "NoSuchKey" in str(err)

    with pytest.raises(ObjectNotFoundError), fetcher.fetch("s3://no-such-bucket-xyz/a.mp4"):
        pass
    missing = str(tmp_path / "missing.mp4")
    with pytest.raises(ObjectNotFoundError) as info, fetcher.fetch(missing):
        pass
    assert info.value.uri == missing
    with pytest.raises(ObjectNotFoundError):
        fetcher.stat(f"s3://{name}/gone.mp4")


@pytest.mark.parametrize(
    ("exc", "reason"),
    [
        (client_error("NoSuchKey", 404), "not_found"),
        (client_error("404", 404, "HeadObject"), "not_found"),
        (client_error("AccessDenied", 403), "access_denied"),
        (client_error("403", 403, "HeadObject"), "access_denied"),
        (client_error("InvalidAccessKeyId", 403), "access_denied"),
        (client_error("SlowDown", 503), "transient"),
        (client_error("Throttling", 400), "transient"),
        (client_error("RequestLimitExceeded", 400), "transient"),
        (client_error("InternalError", 500), "transient"),
        (client_error("WeirdCode", 502), "transient"),
        (client_error("InvalidRange", 416), "storage_error"),
        (client_error("PreconditionFailed", 412), "changed"),
        (bce.EndpointConnectionError(endpoint_url="http://127.0.0.1:1"), "transient"),
        (bce.ConnectionClosedError(endpoint_url="http://127.0.0.1:1"), "transient"),
        (bce.ReadTimeoutError(endpoint_url="http://127.0.0.1:1"), "transient"),
        (bce.SSLError(endpoint_url="https://x", error="bad cert"), "storage_error"),
        (ConnectionResetError(104, "reset"), "transient"),
        (FileNotFoundError(2, "missing"), "not_found"),
        (PermissionError(13, "denied"), "access_denied"),
        (IsADirectoryError(21, "dir"), "io_error"),
        (KeyError("not storage"), None),
    ],
)
def test_classify_error(exc: BaseException, reason: str | None) -> None:
    assert classify_error(exc) == reason
    err = to_fetch_error(exc, "s3://b/k.mp4")
    if reason is None:
        assert err is None
    else:
        assert err is not None and err.reason == reason and err.uri == "s3://b/k.mp4"


def test_access_denied_is_not_retried(
    s3_endpoint: str, bucket: tuple[Any, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    client, name = bucket
    client.put_object(Bucket=name, Key="secret.mp4", Body=b"s")
    faults = Faults(requests=[(403, "AccessDenied")] * 5)
    fetcher = faults.fetcher(s3_endpoint, max_retries=4)
    with pytest.raises(AccessDeniedError) as info, fetcher.fetch(f"s3://{name}/secret.mp4"):
        pass
    assert len(faults.sent) == 1
    assert (info.value.reason, info.value.attempts) == ("access_denied", 1)
    assert isinstance(info.value.__cause__, bce.ClientError)

    def denied(*args: Any, **kwargs: Any) -> Any:  # chmod 000 does not stop root
        raise PermissionError(13, "Permission denied")

    locked = write(tmp_path / "locked.mp4")
    monkeypatch.setattr(object_fetch, "open", denied, raising=False)
    with pytest.raises(AccessDeniedError) as info, fetcher.fetch(str(locked)):
        pass
    assert info.value.uri == str(locked)


def test_transient_errors_are_retried_by_botocore(
    s3_endpoint: str, bucket: tuple[Any, str]
) -> None:
    client, name = bucket
    data = os.urandom(50_000)
    client.put_object(Bucket=name, Key="flaky.mp4", Body=data)
    uri = f"s3://{name}/flaky.mp4"
    faults = Faults(
        requests=[
            (503, "SlowDown"),
            bce.EndpointConnectionError(endpoint_url=s3_endpoint),
            bce.ConnectionClosedError(endpoint_url=s3_endpoint),
        ]
    )
    with faults.fetcher(s3_endpoint, max_retries=3).fetch(uri) as f:
        assert f.read() == data
    assert len(faults.sent) == 4  # one GET, retried three times inside botocore

    head_faults = Faults(requests=[(503, "ServiceUnavailable")])
    assert head_faults.fetcher(s3_endpoint).stat(uri).size_bytes == len(data)
    assert len(head_faults.sent) == 2


def test_transient_errors_exhausted(s3_endpoint: str, bucket: tuple[Any, str]) -> None:
    _, name = bucket
    faults = Faults(requests=[(503, "SlowDown")] * 10)
    with (
        pytest.raises(TransientStorageError) as info,
        faults.fetcher(s3_endpoint, max_retries=2).fetch(f"s3://{name}/any.mp4"),
    ):
        pass
    assert len(faults.sent) == 3 and info.value.attempts == 3
    assert info.value.reason == "transient" and "after 3 attempts" in str(info.value)


@pytest.mark.parametrize("spooled", [False, True])
def test_broken_body_resumes_where_it_stopped(
    s3_endpoint: str, bucket: tuple[Any, str], tmp_path: Path, spooled: bool
) -> None:
    client, name = bucket
    data = os.urandom(50_000)
    etag = client.put_object(Bucket=name, Key="cut.mp4", Body=data)["ETag"]
    faults = Faults(cut_bodies=[20_000, 5_000])
    spool = tmp_path / "spool"
    fetcher = faults.fetcher(
        s3_endpoint,
        max_retries=2,
        spool_dir=spool,
        spool_threshold_bytes=10_000 if spooled else 1 << 20,
        chunk_bytes=4096,
    )
    with fetcher.fetch(f"s3://{name}/cut.mp4") as f:
        assert isinstance(f, io.BytesIO) is not spooled
        assert f.read() == data
    assert [h.get("Range") for h in faults.sent] == [None, "bytes=20000-", "bytes=25000-"]
    assert all(h.get("If-Match") == etag for h in faults.sent[1:])
    assert not spool.exists() or not list(spool.iterdir())


def test_broken_body_resumes_are_bounded(s3_endpoint: str, bucket: tuple[Any, str]) -> None:
    client, name = bucket
    client.put_object(Bucket=name, Key="cut.mp4", Body=os.urandom(50_000))
    faults = Faults(cut_bodies=[1000] * 5)
    fetcher = faults.fetcher(s3_endpoint, max_retries=2)
    with pytest.raises(TransientStorageError) as info, fetcher.fetch(f"s3://{name}/cut.mp4"):
        pass
    assert len(faults.sent) == 3 and info.value.attempts == 3
    assert "ResponseStreamingError" in str(info.value)


def test_broken_body_of_a_replaced_object_is_not_stitched(
    s3_endpoint: str, bucket: tuple[Any, str]
) -> None:
    client, name = bucket
    client.put_object(Bucket=name, Key="moving.mp4", Body=b"a" * 50_000)

    def replace() -> None:
        client.put_object(Bucket=name, Key="moving.mp4", Body=b"b" * 50_000)

    faults = Faults(cut_bodies=[20_000], on_cut=replace)
    fetcher = faults.fetcher(s3_endpoint, max_retries=3)
    with pytest.raises(ObjectChangedError) as info, fetcher.fetch(f"s3://{name}/moving.mp4"):
        pass
    assert info.value.reason == "changed" and len(faults.sent) == 2


def test_backoff_grows_with_jitter() -> None:
    for attempt in range(1, 6):
        d = backoff_delay(attempt, 0.2)
        assert 0.1 * 2 ** (attempt - 1) <= d <= 0.2 * 2 ** (attempt - 1)
    assert backoff_delay(30, 0.2) <= 20.0


def test_fetcher_and_errors_pickle(s3_endpoint: str, bucket: tuple[Any, str]) -> None:
    client, name = bucket
    client.put_object(Bucket=name, Key="p.mp4", Body=b"pickled")
    fetcher = ObjectFetcher(s3_endpoint, max_retries=1, spool_threshold_bytes=3)
    with fetcher.fetch(f"s3://{name}/p.mp4") as f:
        assert f.read() == b"pickled"
    assert fetcher._client is not None

    clone = pickle.loads(pickle.dumps(fetcher))
    assert clone._client is None
    assert (clone.max_retries, clone.spool_threshold_bytes) == (1, 3)
    with clone.fetch(f"s3://{name}/p.mp4") as f:
        assert f.read() == b"pickled"

    err = TransientStorageError("s3://b/k", "SlowDown", attempts=4)
    back = pickle.loads(pickle.dumps(err))
    assert type(back) is TransientStorageError and isinstance(back, FetchError)
    assert (back.uri, back.reason, back.attempts, str(back)) == (
        err.uri,
        "transient",
        4,
        str(err),
    )


# ---- folders and URLs ---------------------------------------------------------------------


def test_upload_download_folder_round_trip(
    s3_endpoint: str, bucket: tuple[Any, str], tmp_path: Path
) -> None:
    _, name = bucket
    src = tmp_path / "ckpt"
    files = {"config.json": b"{}", "model.safetensors": os.urandom(2048), "extra/notes.txt": b"n"}
    for rel, data in files.items():
        write(src / rel, data)

    uris = upload_folder(src, f"s3://{name}/runs/ckpt", s3_endpoint_url=s3_endpoint)
    assert uris == [f"s3://{name}/runs/ckpt/{rel}" for rel in sorted(files)]

    dest = download_folder(f"s3://{name}/runs/ckpt", tmp_path / "out", s3_endpoint_url=s3_endpoint)
    assert dest == tmp_path / "out"
    got = {p.relative_to(dest).as_posix(): p.read_bytes() for p in dest.rglob("*") if p.is_file()}
    assert got == files

    assert download_folder(str(src), tmp_path / "unused") == src
    assert not (tmp_path / "unused").exists()
    with pytest.raises(SourceError):
        download_folder(f"s3://{name}/runs/none", tmp_path / "x", s3_endpoint_url=s3_endpoint)
    with pytest.raises(SourceError):
        download_folder(str(tmp_path / "nope"), tmp_path / "x")


def test_presigned_url_is_fetchable(s3_endpoint: str, bucket: tuple[Any, str]) -> None:
    client, name = bucket
    data = os.urandom(1234)
    client.put_object(Bucket=name, Key="clips/play me.mp4", Body=data)

    url = presigned_url(f"s3://{name}/clips/play me.mp4", expires_s=60, s3_endpoint_url=s3_endpoint)

    assert url.startswith(s3_endpoint) and "Signature=" in url
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(url, timeout=10) as resp:
        assert resp.read() == data
    with pytest.raises(ValueError):
        presigned_url(f"s3://{name}/clips/", s3_endpoint_url=s3_endpoint)
    with pytest.raises(ValueError):
        presigned_url(f"s3://{name}/a.mp4", expires_s=0, s3_endpoint_url=s3_endpoint)
