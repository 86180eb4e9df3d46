"""HLS: the .ts segments of a playlist are not indexed as videos; a lone .ts is."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from pipelines.embed import DecodeSpec, DecodeVideos
from pipelines.hls import HlsFolders
from pipelines.object_fetch import ObjectFetcher

pytestmark = pytest.mark.integration


def write_ts(path: Path, seconds: int = 2) -> Path:
    import av

    with av.open(str(path), mode="w", format="mpegts") as container:
        stream = container.add_stream("libx264", rate=10, options={"preset": "ultrafast"})
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        for i in range(seconds * 10):
            image = np.full((48, 64, 3), i * 10, dtype=np.uint8)
            container.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
        container.mux(stream.encode(None))
    return path


def stream_folder(root: Path) -> list[Path]:
    """An HLS folder (playlist + 2 segments) and a folder with one recording in .ts."""
    hls, rec = root / "stream", root / "recordings"
    hls.mkdir(parents=True)
    rec.mkdir(parents=True)
    (hls / "index.m3u8").write_text(
        "#EXTM3U\n#EXT-X-TARGETDURATION:2\n#EXTINF:2,\nseg0.ts\n#EXTINF:2,\nseg1.ts\n"
    )
    return [write_ts(hls / "seg0.ts"), write_ts(hls / "seg1.ts"), write_ts(rec / "match.ts")]


class Rows:
    def __init__(self) -> None:
        self.rows: list[dict[str, Any]] = []

    def record(self, rows: list[dict[str, Any]]) -> None:
        self.rows += rows


def listing(uris: list[str]) -> dict[str, np.ndarray]:
    return {
        "uri": np.array(uris, dtype=object),
        "video_id": np.array([u.rsplit("/", 1)[1] for u in uris], dtype=object),
        "etag": np.array(["e"] * len(uris), dtype=object),
        "size_bytes": np.array([100] * len(uris), dtype=np.int64),
    }


def test_segments_are_reported_and_a_lone_ts_is_indexed(
    tmp_path: Path, s3_endpoint: str, make_bucket: Any, bucket_name: str
) -> None:
    files = stream_folder(tmp_path)
    client = make_bucket(s3_endpoint, bucket_name)
    for path in [*files, tmp_path / "stream" / "index.m3u8"]:
        client.upload_file(str(path), bucket_name, str(path.relative_to(tmp_path)))
    s3_uris = [f"s3://{bucket_name}/{p.relative_to(tmp_path)}" for p in files]
    for uris in ([str(p) for p in files], s3_uris):
        failures = Rows()
        stage = DecodeVideos(ObjectFetcher(s3_endpoint), DecodeSpec(4, 32), failures)
        out = stage(listing(uris))
        assert [str(u) for u in out["uri"]] == [uris[2]]  # the recording, decoded
        assert out["frames"].shape == (1, 4, 32, 32, 3)
        assert [(r["uri"], r["stage"], r["reason"]) for r in failures.rows] == [
            (uris[0], "decode", "hls_segment"),
            (uris[1], "decode", "hls_segment"),
        ]
        assert stage.hls.listings == 2  # one per folder, not one per segment


def test_folders_are_asked_once(tmp_path: Path) -> None:
    files = stream_folder(tmp_path)
    folders = HlsFolders()
    assert [folders.is_segment(str(p)) for p in files * 2] == [True, True, False] * 2
    assert folders.listings == 2
    assert folders.is_segment(str(tmp_path / "stream" / "clip.mp4")) is False
