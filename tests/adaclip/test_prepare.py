"""Annotation preparation: the paper's split files rebuilt from original-format inputs.

The inputs (MSRVTT_data.json + CSVs, LocalizingMoments moments, ActivityNet Captions
``val_1.json``) are synthesised from the shared split files, with the same ids and
sentences, plus distractors (other videos, other captions, missing files) the builders
must drop. Outputs must equal the shared files byte for byte.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import pytest

from adaclip.cli import SUBCOMMANDS
from adaclip.prepare import (
    DropReason,
    VideoCatalog,
    build_activitynet_split,
    build_didemo_split,
    build_msrvtt_test,
    build_msrvtt_train,
    didemo_moment_seconds,
    dump_split,
    prepare_main,
)

ANNOTS = Path(__file__).resolve().parents[3] / "shared" / "data" / "annots"
needs_annots = pytest.mark.skipif(not ANNOTS.is_dir(), reason="shared/data/annots not present")


def shared(name: str) -> tuple[str, dict[str, Any]]:
    raw = (ANNOTS / name).read_text(encoding="utf-8")
    return raw, json.loads(raw)


def assert_same_file(annots: dict[str, Any], raw: str, tmp_path: Path) -> None:
    assert annots == json.loads(raw)
    assert list(annots) == list(json.loads(raw))  # video order
    out = dump_split(annots, tmp_path / "out.json")
    assert out.read_text(encoding="utf-8") == raw  # key order, float spelling, escapes


# ------------------------------------------------------------------------- MSR-VTT
def msrvtt_originals(val: dict[str, Any]) -> tuple[dict[str, Any], list[dict[str, str]]]:
    """MSRVTT_data.json and JSFusion CSV rows holding the shared 1k-A test set.

    Every test video gets 3 more captions in MSRVTT_data.json (the CSV sentence is the
    one the split file keeps); 5 training videos are interleaved in ``videos``.
    """
    videos: list[dict[str, Any]] = []
    sentences: list[dict[str, Any]] = []
    rows: list[dict[str, str]] = []
    sen_id = 0
    for i, (vid, entry) in enumerate(val.items()):
        if i % 200 == 0:
            train_vid = f"video{i // 200}"
            videos.append({"video_id": train_vid, "start time": 1.0, "end time": 2.5})
            sentences.append({"caption": "a train caption", "video_id": train_vid, "sen_id": 0})
        ((start, end),) = entry["timestamps"]
        videos.append(
            {
                "category": 3,
                "url": "u",
                "video_id": vid,
                "start time": start,
                "end time": end,
                "split": "test",
                "id": 7000 + i,
            }
        )
        for j in range(3):
            sentences.append(
                {"caption": f"other caption {j} of {vid}", "video_id": vid, "sen_id": sen_id}
            )
            sen_id += 1
        (sentence,) = entry["sentences"]
        rows.append(
            {"key": f"ret{i}", "vid_key": f"msr{vid[5:]}", "video_id": vid, "sentence": sentence}
        )
    return {"info": {}, "videos": videos, "sentences": sentences}, rows


@needs_annots
def test_msrvtt_jsfusion_val_round_trip(tmp_path: Path) -> None:
    raw, val = shared("msrvtt-jsfusion/val.json")
    data, rows = msrvtt_originals(val)
    catalog = VideoCatalog([f"{vid}.mp4" for vid in val] + ["video0.mp4", "notes.txt"])
    result = build_msrvtt_test(data, rows, catalog)
    assert_same_file(result.annots, raw, tmp_path)
    assert result.report.videos_kept == 1000 and result.report.sentences_kept == 1000
    assert result.report.dropped == {}

    # Through the CSV file and the CLI, with a listing of s3 keys missing one video.
    annots = tmp_path / "msrvtt"
    annots.mkdir()
    (annots / "MSRVTT_data.json").write_text(json.dumps(data), encoding="utf-8")
    with (annots / "MSRVTT_JSFUSION_test.csv").open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=["key", "vid_key", "video_id", "sentence"])
        writer.writeheader()
        writer.writerows(rows)
    (annots / "MSRVTT_train.9k.csv").write_text(
        "video_id\n" + "".join(f"video{i}\n" for i in range(5)), encoding="utf-8"
    )
    gone = "video7021"
    listing = tmp_path / "videos.txt"
    listing.write_text(
        "".join(f"s3://bucket/msrvtt/{v}.mp4\n" for v in [*val, "video0", "video1"] if v != gone),
        encoding="utf-8",
    )
    out = tmp_path / "out"
    assert (
        prepare_main(
            ["msrvtt", "--annots", str(annots), "--out", str(out), "--videos-list", str(listing)]
        )
        == 0
    )
    expected = {k: v for k, v in val.items() if k != gone}
    assert json.loads((out / "val.json").read_text(encoding="utf-8")) == expected
    train = json.loads((out / "train.json").read_text(encoding="utf-8"))
    assert train == {
        f"video{i}": {
            "extension": "mp4",
            "timestamps": [[1.0, 2.5]],
            "sentences": ["a train caption"],
        }
        for i in range(2)
    }
    report = json.loads((out / "prepare_report.json").read_text(encoding="utf-8"))
    assert report["splits"]["val"]["dropped"] == {DropReason.MISSING_VIDEO: [gone]}
    assert report["splits"]["train"]["dropped"] == {
        DropReason.MISSING_VIDEO: ["video2", "video3", "video4"]
    }
    assert report["videos_unreferenced"] == 0


def test_msrvtt_train_keeps_every_caption_in_file_order() -> None:
    data = {
        "videos": [{"video_id": v, "start time": 0.0, "end time": 9.5} for v in ("v2", "v1", "v3")],
        "sentences": [
            {"video_id": "v1", "caption": "b"},
            {"video_id": "v2", "caption": "x"},
            {"video_id": "v1", "caption": "a"},
        ],
    }
    result = build_msrvtt_train(data, ["v1", "v2", "v3"], None)
    assert list(result.annots) == ["v2", "v1"]  # MSRVTT_data.json order
    assert result.annots["v1"] == {
        "extension": "mp4",
        "timestamps": [[0.0, 9.5]],
        "sentences": ["b", "a"],
    }
    assert result.report.dropped == {DropReason.NO_CAPTIONS: ["v3"]}


# -------------------------------------------------------------------------- DiDeMo
def didemo_moments(split: dict[str, Any]) -> list[dict[str, Any]]:
    """LocalizingMoments moments for the split: pairs of videos interleaved, every other
    description without its final full stop (the builder appends it), 4 annotators."""
    moments: list[dict[str, Any]] = []
    items = list(split.items())
    ann = 0
    for a in range(0, len(items), 2):
        queues = [[(vid, s) for s in entry["sentences"]] for vid, entry in items[a : a + 2]]
        while any(queues):
            for q in queues:
                if not q:
                    continue
                vid, sentence = q.pop(0)
                if ann % 2 and sentence.endswith(".") and not sentence.endswith(".."):
                    sentence = sentence[:-1]
                moments.append(
                    {
                        "annotation_id": ann,
                        "video": vid,
                        "description": sentence,
                        "times": [[0, 0], [0, 1], [1, 1], [0, 0]],
                        "dl_score": 1.0,
                        "train_times": [[0, 0]],
                        "num_segments": 6,
                    }
                )
                ann += 1
    return moments


@needs_annots
@pytest.mark.parametrize("split", ["train", "val", "test"])
def test_didemo_round_trip(split: str, tmp_path: Path) -> None:
    raw, annots = shared(f"didemo/{split}.json")
    moments = didemo_moments(annots)
    # Videos on disk are transcoded copies named <id>.mp4; one extra video is on disk only.
    catalog = VideoCatalog([f"{vid}.mp4" for vid in annots] + ["unused.avi.mp4"])
    result = build_didemo_split(moments, catalog, split=split)
    assert_same_file(result.annots, raw, tmp_path)
    assert result.report.videos_kept == len(annots)
    assert result.report.dropped == {}
    assert catalog.unreferenced(result.annots) == ["unused.avi.mp4"]


def test_didemo_drops_and_timestamps() -> None:
    moments = [
        {"video": "a.avi", "description": "one", "times": [[0, 0], [0, 1]]},
        {"video": "b.mov", "description": "two.", "times": [[2, 3]]},
        {"video": "a.avi", "description": "   ", "times": [[1, 1]]},
        {"video": "c.mp4", "description": "three", "times": [[5, 5]]},
        {"video": "d.mpg", "description": "four", "times": [[1, 2]]},
        {"video": "a.avi", "description": "five..", "times": [[4, 5]]},
    ]
    # a.avi transcoded, b.mov only as the original file, c.mp4 missing, d not in the list.
    catalog = VideoCatalog(["a.avi.mp4", "b.mov", "d.mpg.mp4"])
    result = build_didemo_split(
        moments,
        catalog,
        split="val",
        split_list=["a.avi", "b.mov", "c.mp4", "e.avi"],
        timestamps=True,
    )
    assert result.annots == {
        "a.avi": {
            "extension": "mp4",
            "sentences": ["one.", "five.."],
            "timestamps": [[0.0, 7.5], [20.0, 30.0]],
        },
        "b.mov": {"extension": "", "sentences": ["two."], "timestamps": [[10.0, 20.0]]},
    }
    assert result.report.dropped == {
        DropReason.EMPTY_CAPTION: ["a.avi"],
        DropReason.MISSING_VIDEO: ["c.mp4"],
        DropReason.NOT_IN_SPLIT_LIST: ["d.mpg"],
        DropReason.NO_CAPTIONS: ["e.avi"],
    }
    assert didemo_moment_seconds([[5, 5]]) == [25.0, 30.0]


# --------------------------------------------------------------------- ActivityNet
@needs_annots
def test_activitynet_val_round_trip(tmp_path: Path) -> None:
    raw, val = shared("activitynet/val.json")
    original: dict[str, Any] = {}
    for i, (vid, entry) in enumerate(val.items()):
        if i == 7:
            original["v_missing0001"] = {
                "duration": 10.0,
                "timestamps": [[0, 1]],
                "sentences": ["gone"],
            }
            original["v_nocaption01"] = {"duration": 12.0, "timestamps": [], "sentences": []}
        original[vid] = {
            "duration": entry["duration"],
            "timestamps": entry["timestamps"],
            "sentences": entry["sentences"],
        }
    # mkv videos exist only as .mkv; a few mp4 videos also have a stray .webm copy.
    names = [f"{vid}.{e['extension']}" for vid, e in val.items()]
    names += [f"{vid}.webm" for vid in list(val)[:5]] + ["v_nocaption01.mp4"]
    result = build_activitynet_split(original, VideoCatalog(names), split="val")
    assert_same_file(result.annots, raw, tmp_path)
    assert result.report.sentences_kept == 17505
    assert result.report.dropped == {
        DropReason.MISSING_VIDEO: ["v_missing0001"],
        DropReason.NO_CAPTIONS: ["v_nocaption01"],
    }

    # Through the CLI, a local folder of (empty) video files standing for the videos.
    annots, videos, out = tmp_path / "anet", tmp_path / "videos", tmp_path / "out"
    annots.mkdir()
    videos.mkdir()
    (annots / "val_1.json").write_text(json.dumps(original), encoding="utf-8")
    for name in names:
        (videos / name).touch()
    assert (
        prepare_main(
            [
                "activitynet",
                "--annots",
                str(annots),
                "--out",
                str(out),
                "--videos-root",
                str(videos),
            ]
        )
        == 0
    )
    assert (out / "val.json").read_text(encoding="utf-8") == raw


def test_activitynet_malformed_entry() -> None:
    original = {"v_a": {"duration": 3.0, "timestamps": [[0, 1]], "sentences": ["x", "y"]}}
    result = build_activitynet_split(original, None, split="train")
    assert result.annots == {}
    assert result.report.dropped == {DropReason.MALFORMED: ["v_a"]}


# ---------------------------------------------------------------------------- misc
def test_catalog_extension_rules() -> None:
    catalog = VideoCatalog(
        ["x.webm", "x.mp4", "y.mkv", "y.avi", "dir/z.MOV", "s3://b/p/w.avi.mp4", "plain"],
        preferred="mp4",
    )
    assert catalog.extension("x") == "mp4"  # preferred
    assert catalog.extension("y") == "avi"  # alphabetical otherwise
    assert catalog.extension("z") == "MOV"
    assert catalog.extension("w.avi") == "mp4"
    assert catalog.extension("plain") == ""
    assert catalog.extension("w") is None
    assert len(catalog) == 7


def test_cli_registers_prepare(tmp_path: Path) -> None:
    module, func, _ = SUBCOMMANDS["prepare"]
    assert (module, func) == ("adaclip.prepare", "prepare_main")
    assert prepare_main(["didemo", "--annots", str(tmp_path), "--out", str(tmp_path / "o")]) == 2


def test_new_modules_import_no_forbidden_packages() -> None:
    import subprocess
    import sys

    code = (
        "import sys, adaclip.prepare, adaclip.frames_dir, adaclip.flops;"
        "bad = [m for m in ('ray', 'qdrant_client', 'boto3', 'botocore', 'fastapi', 'starlette')"
        " if m in sys.modules]; print(bad); sys.exit(1 if bad else 0)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
