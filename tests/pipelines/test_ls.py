"""``adaclip ls``: the table, the JSON lines and the error of the command (embedded store).

The store's own listing (`iter_videos`) is tested on both backends in test_store.py.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from adaclip.cli import main as adaclip_main
from pipelines.store import EdgeVideoStore
from pipelines.store.base import LISTED_FIELDS
from tests.pipelines.test_store import MODEL, make_record

URIS = ["s3://b/x/2.mp4", "s3://b/x/1.mp4", "s3://b/y/3.mp4"]


@pytest.fixture
def filled_index(tmp_path: Path) -> Path:
    path = tmp_path / "qdrant"
    with EdgeVideoStore(path) as s:
        s.ensure_collection("videos", 16, 4, MODEL)
        gen = np.random.default_rng(1)
        s.upsert([make_record(gen, u, etag=f"e{i}") for i, u in enumerate(URIS)])
    return path


def test_ls_table_and_count(filled_index: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = adaclip_main(["ls", "--collection", "videos", "--qdrant-path", str(filled_index)])
    out = capsys.readouterr().out.splitlines()
    assert code == 0
    assert out[0].split() == ["URI", "ETAG", "DURATION_S", "MODEL_ID", "INDEXED_AT"]
    rows = {line.split()[0]: line.split()[1:4] for line in out[1:-1]}
    assert sorted(rows) == sorted(URIS)  # in the index's order: streamed, not sorted
    assert rows["s3://b/x/1.mp4"] == ["e1", "10.00", MODEL]
    assert out[-1] == "3 videos in videos"


def test_ls_json_lines(filled_index: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["ls", "--collection", "videos", "--qdrant-path", str(filled_index), "--json"]
    argv += ["--uri-prefix", "s3://b/x/"]
    assert adaclip_main(argv) == 0
    captured = capsys.readouterr()
    rows = [json.loads(line) for line in captured.out.splitlines()]
    assert sorted(r["uri"] for r in rows) == ["s3://b/x/1.mp4", "s3://b/x/2.mp4"]
    assert all(set(r) == set(LISTED_FIELDS) for r in rows)
    assert captured.err.strip() == "2 videos in videos"


def test_ls_json_lines_flag_and_variable(
    filled_index: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    argv = ["ls", "--collection", "videos", "--qdrant-path", str(filled_index)]
    monkeypatch.setenv("JSON", "true")  # a generic name: not read
    assert adaclip_main(argv) == 0
    assert capsys.readouterr().out.startswith("URI")
    for extra, env in (["--json-lines"], None), ([], "true"):
        if env:
            monkeypatch.setenv("ADACLIP_JSON_LINES", env)
        assert adaclip_main(argv + extra) == 0
        lines = capsys.readouterr().out.splitlines()
        assert len(lines) == 3 and all(json.loads(line)["uri"] for line in lines)


def test_ls_missing_collection_is_one_line_error(
    filled_index: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = adaclip_main(["ls", "--collection", "nope", "--qdrant-path", str(filled_index)])
    err = capsys.readouterr().err.strip()
    assert code == 1
    assert err.startswith("adaclip ls:") and "nope" in err and "\n" not in err


def test_write_listing_streams_page_by_page() -> None:
    """Each page is printed before the next one is read: nothing holds the collection."""
    import io

    from pipelines.ls import write_listing

    out, err = io.StringIO(), io.StringIO()
    printed_when_read: list[int] = []

    def rows() -> Any:
        for i in range(25):
            printed_when_read.append(out.getvalue().count("\n"))
            yield {"uri": f"s3://b/{i:03d}.mp4", "etag": "e", "duration_s": 1.0}

    assert write_listing(rows(), "videos", False, out, err, page_size=10) == 25
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("URI") and lines[-1] == "25 videos in videos"
    assert len(lines) == 1 + 25 + 1  # one header for all pages
    assert printed_when_read[10] == 11 and printed_when_read[20] == 21  # header + a page
