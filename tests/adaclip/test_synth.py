"""Synthetic captioned videos: determinism, annotation schema, captions match pixels."""

from __future__ import annotations

import json
from pathlib import Path

import av
import numpy as np
import pytest

from adaclip.decode import decode_candidates
from adaclip.synth import (
    COLORS,
    MOTIONS,
    PAINT_MAX_FRAMES,
    SHAPES,
    generate_dataset,
    paint_index_video,
    read_painted_index,
)

NUM_VIDEOS = 12
MOTION_WORDS = {
    "left": ("left",),
    "right": ("right",),
    "up": ("up", "top"),
    "down": ("down", "bottom"),
}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("synth")
    generate_dataset(root, NUM_VIDEOS, seed=7)
    return root


def _files(root: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(root.iterdir())}


def test_same_seed_same_bytes(dataset: Path, tmp_path: Path) -> None:
    again = tmp_path / "again"
    paths = generate_dataset(again, NUM_VIDEOS, seed=7)
    assert paths == {split: again / f"{split}.json" for split in ("train", "val", "test")}
    assert _files(again) == _files(dataset)
    other = tmp_path / "other"
    generate_dataset(other, NUM_VIDEOS, seed=8)
    assert _files(other) != _files(dataset)


def test_annotation_schema_and_splits(dataset: Path) -> None:
    seen: list[str] = []
    for split in ("train", "val", "test"):
        annots = json.loads((dataset / f"{split}.json").read_text())
        assert annots, f"{split} is empty"
        for video_id, entry in annots.items():
            assert set(entry) == {"extension", "sentences", "duration"}
            assert entry["extension"] == "mp4"
            assert (dataset / f"{video_id}.{entry['extension']}").is_file()
            assert entry["duration"] == pytest.approx(6.0)
            assert 2 <= len(entry["sentences"]) <= 3
            assert all(isinstance(s, str) and s for s in entry["sentences"])
            assert len(set(entry["sentences"])) == len(entry["sentences"])
        seen += annots
    assert sorted(seen) == [f"video{i:05d}" for i in range(NUM_VIDEOS)]


def test_videos_are_tiny(dataset: Path) -> None:
    sizes = [p.stat().st_size for p in dataset.glob("*.mp4")]
    assert len(sizes) == NUM_VIDEOS
    assert max(sizes) < 40_000  # 64 videos stay well under a few MB
    with av.open(str(dataset / "video00000.mp4")) as container:
        stream = container.streams.video[0]
        assert stream.codec_context.name == "h264"
        assert stream.format.name == "yuv420p"
        assert (stream.width, stream.height) == (64, 64)


def _shape_pixels(frame: np.ndarray) -> np.ndarray:
    """Mask of pixels far from the frame's grey background."""
    signed = frame.astype(np.int32)
    background = np.median(signed.reshape(-1, 3), axis=0)
    return np.asarray(np.abs(signed - background).max(axis=-1) > 60)


def test_captions_describe_the_pixels(dataset: Path) -> None:
    meta = json.loads((dataset / "synth_meta.json").read_text())
    sentences = {}
    for split in ("train", "val", "test"):
        for video_id, entry in json.loads((dataset / f"{split}.json").read_text()).items():
            sentences[video_id] = entry["sentences"]
    palette = np.array(list(COLORS.values()), dtype=np.float64)
    for video_id, spec in meta["videos"].items():
        for sentence in sentences[video_id]:
            assert spec["color"] in sentence and spec["shape"] in sentence
            assert any(word in sentence for word in MOTION_WORDS[spec["motion"]])
        informative = np.array(spec["informative"])
        assert 0.3 <= 1 - informative.mean() <= 0.5 + 1 / len(informative)
        video = decode_candidates(dataset / f"{video_id}.mp4", len(informative), size=None)
        centroids = []
        for frame, useful in zip(video.frames, informative, strict=True):
            if not useful:
                # Blank or grey block noise: (almost) no saturated colour.
                spread = frame.astype(np.int32).max(axis=-1) - frame.min(axis=-1)
                assert (spread > 40).mean() < 0.01
                continue
            mask = _shape_pixels(frame)
            assert mask.sum() > 20
            mean_color = frame[mask].mean(axis=0)
            nearest = list(COLORS)[int(np.argmin(((palette - mean_color) ** 2).sum(axis=1)))]
            assert nearest == spec["color"]
            centroids.append(np.argwhere(mask).mean(axis=0))  # (y, x)
        dy, dx = centroids[-1] - centroids[0]
        expected = np.array(MOTIONS[spec["motion"]])
        assert float(np.dot([dy, dx], expected)) > 15  # moved the captioned way
        assert spec["shape"] in SHAPES


def test_each_frame_shows_the_direction_by_its_trail(dataset: Path) -> None:
    """The faded copies lie behind the shape: one frame tells which way it moves."""
    meta = json.loads((dataset / "synth_meta.json").read_text())
    for video_id, spec in meta["videos"].items():
        informative = spec["informative"]
        video = decode_candidates(dataset / f"{video_id}.mp4", len(informative), size=None)
        t = len(informative) // 2 + int(np.argmax(informative[len(informative) // 2 :]))
        if not informative[t]:
            continue
        frame = video.frames[t].astype(np.float64)
        color = np.array(COLORS[spec["color"]], dtype=np.float64)
        background = np.median(frame.reshape(-1, 3), axis=0)
        # Share of the shape's colour in each pixel: 1 solid, ~0.5 and ~0.25 the trail.
        alpha = ((frame - background) @ (color - background)) / np.sum((color - background) ** 2)
        solid = np.argwhere(alpha > 0.85).mean(axis=0)
        trail = np.argwhere((alpha > 0.15) & (alpha < 0.6)).mean(axis=0)
        assert float(np.dot(solid - trail, MOTIONS[spec["motion"]])) > 2, video_id


def test_concepts_hold_out_new_clips_of_concepts_seen_in_training(tmp_path: Path) -> None:
    paths = generate_dataset(
        tmp_path, 40, seed=1, frames_per_video=4, size=16, concepts=8, splits=(0.8, 0.1, 0.1)
    )
    meta = json.loads((tmp_path / "synth_meta.json").read_text())["videos"]

    def concept(video_id: str) -> tuple[str, str, str]:
        return meta[video_id]["color"], meta[video_id]["shape"], meta[video_id]["motion"]

    splits = {s: list(json.loads(paths[s].read_text())) for s in ("train", "val", "test")}
    assert [len(v) for v in splits.values()] == [32, 4, 4]
    held_out = [concept(v) for v in splits["val"] + splits["test"]]
    assert len(set(held_out)) == 8  # one clip each of distinct concepts ...
    assert set(held_out) <= {concept(v) for v in splits["train"]}  # ... all seen in training
    assert len({concept(v) for v in meta}) == 8
    assert all(concept(f"video{i:05d}") == concept(f"video{i % 8:05d}") for i in range(40))
    # Clips of one concept are drawn afresh: different bytes.
    assert (tmp_path / "video00000.mp4").read_bytes() != (tmp_path / "video00008.mp4").read_bytes()
    with pytest.raises(ValueError, match="two or more clips"):
        generate_dataset(tmp_path / "few", 10, seed=1, size=16, concepts=8, splits=(0.2, 0.4, 0.4))
    with pytest.raises(ValueError, match="concepts"):
        generate_dataset(tmp_path / "bad", 4, seed=1, size=16, concepts=0)


def test_split_fractions_validated(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        generate_dataset(tmp_path, 4, seed=0, splits=(0.5, 0.5, 0.5))


def test_paint_roundtrip_every_index(tmp_path: Path) -> None:
    path = tmp_path / "all.mkv"
    paint_index_video(path, PAINT_MAX_FRAMES, fps=25, size=(16, 16), codec="libx264")
    with av.open(str(path)) as container:
        decoded = [
            read_painted_index(f.to_ndarray(format="rgb24")) for f in container.decode(video=0)
        ]
    assert decoded == list(range(PAINT_MAX_FRAMES))
    with pytest.raises(ValueError):
        paint_index_video(tmp_path / "x.mkv", PAINT_MAX_FRAMES + 1)
