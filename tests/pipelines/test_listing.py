"""The streaming listing: key ranges cover every key once, pages stay small, and the
listing datasource yields the same videos as the plain listing, while it is still going."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from pipelines.listing import SPLIT_ALPHABET, key_ranges, listing_dataset, resolve_source
from pipelines.sources import (
    SourceError,
    in_key_range,
    list_folder_range,
    list_s3_range_pages,
    list_videos,
)

# first characters on both sides of every cut, and outside the alphabet ('_', '~', 'é')
NAMES = [f"{c}{i:03d}.mp4" for c in "09AZaz_~é" for i in range(12)] + ["m.txt", "q/x.mp4"]


def test_key_ranges_cover_every_key_once() -> None:
    for shards in (1, 2, 16, 62, 63, 100):
        ranges = key_ranges(shards)
        assert 1 <= len(ranges) <= min(shards, len(SPLIT_ALPHABET) + 1)
        assert ranges[0][0] is None and ranges[-1][1] is None
        for name in [*NAMES, "", "\x00", "0", "zzz"]:
            assert sum(in_key_range(name, r) for r in ranges) == 1, (shards, name)


def test_s3_ranges_and_pages_list_each_video_once(
    s3_endpoint: str, make_bucket: Any, bucket_name: str
) -> None:
    client = make_bucket(s3_endpoint, bucket_name)
    for name in NAMES:
        client.put_object(Bucket=bucket_name, Key=f"in/{name}", Body=name.encode())
    client.put_object(Bucket=bucket_name, Key="in0.mp4", Body=b"outside the prefix")
    source = f"s3://{bucket_name}/in"
    whole = [v.uri for v in list_videos(source, s3_endpoint_url=s3_endpoint)]
    assert len(whole) == len(NAMES) - 1  # m.txt is not a video
    pages: list[list[str]] = []
    for key_range in key_ranges(16):
        for page in list_s3_range_pages(
            source, key_range, s3_endpoint_url=s3_endpoint, page_size=10
        ):
            assert len(page) <= 10
            pages.append([v.uri for v in page])
    assert sorted(u for p in pages for u in p) == sorted(whole)
    assert len(pages) > len(NAMES) // 10  # many small blocks, not one big one


def test_listing_dataset_streams_a_folder_on_the_driver_node(
    ray_cluster: Any, tmp_path: Path
) -> None:
    for name in NAMES:
        path = tmp_path / "v" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x")
    spec = resolve_source(str(tmp_path / "v"), page_size=10, shards=8)
    assert spec.kind == "folder" and spec.prune_prefix == f"{(tmp_path / 'v').resolve()}/"
    ds = listing_dataset(spec)
    blocks = [bundle.num_rows() for bundle in ds.iter_internal_ref_bundles()]
    assert max(blocks) <= 10 and len(blocks) > 1
    rows = ds.take_all()
    expected = {v.uri for v in list_folder_range(tmp_path / "v")}
    assert sorted(r["uri"] for r in rows) == sorted(expected)
    assert len(rows) == len(NAMES) - 1 and {r["etag"] for r in rows} != {""}


def test_resolve_source_errors(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="source not found"):
        resolve_source(str(tmp_path / "missing"))
    with pytest.raises(SourceError, match="unsupported"):
        resolve_source("gs://bucket/v")
    with pytest.raises(SourceError, match="invalid bucket"):
        resolve_source("s3://Bad_Bucket/v")
    (tmp_path / "list.txt").write_text("a.mp4\n")
    assert resolve_source(str(tmp_path / "list.txt")).prune_prefix is None
