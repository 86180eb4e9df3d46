"""Deterministic synthetic videos: a captioned toy dataset and frame-index test videos.

``generate_dataset`` writes small H.264 MP4 clips of one coloured shape moving across a
grey background, trailing fading copies of itself so that each frame shows the direction,
captioned from its (colour, shape, motion) triple, with stretches of black or noise frames
that carry no information, so that choosing frames matters.
Annotation files follow the paper's schema (METHOD.md section 10).

``paint_index_video`` writes a video whose frame ``i`` is filled with a colour that
encodes ``i``; ``read_painted_index`` reads it back from a decoded frame, after any
compression, scaling, cropping or rotation.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
from av.video.stream import VideoStream

__all__ = [
    "COLORS",
    "MOTIONS",
    "PAINT_MAX_FRAMES",
    "SHAPES",
    "VideoSpec",
    "generate_dataset",
    "paint_frame",
    "paint_index_video",
    "read_painted_index",
]

COLORS: dict[str, tuple[int, int, int]] = {
    "red": (230, 30, 30),
    "green": (30, 200, 40),
    "blue": (40, 60, 235),
    "yellow": (240, 230, 40),
    "purple": (150, 40, 200),
    "orange": (250, 140, 20),
    "cyan": (40, 220, 230),
    "white": (250, 250, 250),
}
SHAPES = ("circle", "square", "triangle", "cross")
MOTIONS: dict[str, tuple[float, float]] = {  # direction (dy, dx) in image coordinates
    "left": (0.0, -1.0),
    "right": (0.0, 1.0),
    "up": (-1.0, 0.0),
    "down": (1.0, 0.0),
}
_MOTION_PHRASES = {
    "left": ("left", "to the left", "leftwards"),
    "right": ("right", "to the right", "rightwards"),
    "up": ("up", "upwards", "towards the top"),
    "down": ("down", "downwards", "towards the bottom"),
}
_TEMPLATES = (
    "{a} {color} {shape} moving {motion}",
    "{a} {color} {shape} moves {phrase}",
    "the {color} {shape} slides {phrase} across the screen",
    "{color} {shape} going {motion}",
    "a video of {a} {color} {shape} travelling {phrase}",
)
_SPLITS = ("train", "val", "test")
_RADIUS = (0.2, 0.28)  # shape radius as a share of the frame: 2-3.5 CLIP patches of 16 px
# (lag in radii behind the shape, opacity): the shape and its fading trail. Aggregating
# frames is order-free (METHOD section 5), so one frame must show which way it moves.
_TRAIL = ((1.2, 0.25), (0.6, 0.5), (0.0, 1.0))

_PAINT_LEVELS = 6  # per RGB channel: values 0, 51, ..., 255
_PAINT_STEP = 255 // (_PAINT_LEVELS - 1)
PAINT_MAX_FRAMES = _PAINT_LEVELS**3  # distinct indices one painted video can encode


@dataclass(frozen=True)
class VideoSpec:
    """What one synthetic video shows; ``informative[t]`` is False for blank/noise frames."""

    video_id: str
    color: str
    shape: str
    motion: str
    sentences: list[str]
    informative: list[bool]


def generate_dataset(
    out_dir: str | os.PathLike[str],
    num_videos: int,
    seed: int,
    *,
    frames_per_video: int = 48,
    fps: int = 8,
    size: int = 64,
    splits: tuple[float, float, float] = (0.8, 0.1, 0.1),
    uninformative: tuple[float, float] = (0.3, 0.5),
    noise: float = 0.5,
    anywhere: bool = False,
    concepts: int | None = None,
) -> dict[str, Path]:
    """Write ``num_videos`` captioned clips and their train/val/test annotation files.

    Args:
        out_dir: folder for ``video{i:05d}.mp4``, ``train.json``, ``val.json``,
            ``test.json`` and ``synth_meta.json`` (attributes and informative frames).
        num_videos: number of clips.
        seed: the same seed gives byte-identical files.
        frames_per_video: frames per clip; duration is ``frames_per_video / fps``.
        fps: frame rate.
        size: frame height and width in pixels (even).
        splits: fractions of videos in train, val and test.
        uninformative: ``(low, high)``: each clip's share of blank/noise frames is drawn
            uniformly from this range (at least one frame, at least one informative).
        noise: chance that a stretch of uninformative frames is grey noise rather than
            black (0: all black, so no uninformative frame tells two clips apart).
        anywhere: shift each clip's informative frames by a random (cyclic) offset, so
            they are no likelier at the ends of the clip than elsewhere (by default a
            clip often starts or ends with informative frames).
        concepts: number of distinct (colour, shape, motion) triples the clips show
            (None: every clip a new triple, up to all 128). With a number, clip ``i`` shows
            triple ``i % concepts`` (each clip drawn afresh: background, size, path,
            uninformative stretches, caption wording) and the split puts clips of distinct
            triples in val and test, each triple also seen in train: held-out clips and
            captions of known concepts, as in a retrieval benchmark's test split. Without
            it, held-out clips show triples never seen in training (compositional).

    Returns:
        ``{"train": path, "val": path, "test": path}`` of the annotation files.
    """
    if num_videos < 1 or frames_per_video < 2 or fps < 1 or size < 16 or size % 2:
        raise ValueError("need num_videos >= 1, frames_per_video >= 2, fps >= 1, even size >= 16")
    if not 0.0 <= uninformative[0] <= uninformative[1] < 1.0:
        raise ValueError(f"uninformative must be 0 <= low <= high < 1, got {uninformative}")
    if not 0.0 <= noise <= 1.0:
        raise ValueError(f"noise must be in [0, 1], got {noise}")
    num_combos = len(COLORS) * len(SHAPES) * len(MOTIONS)
    if concepts is not None and not 1 <= concepts <= num_combos:
        raise ValueError(f"concepts must be in 1..{num_combos}, got {concepts}")
    root = Path(out_dir)
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    combos = [(c, s, m) for c in COLORS for s in SHAPES for m in MOTIONS]
    order = rng.permutation(len(combos))
    specs: list[VideoSpec] = []
    for i in range(num_videos):
        color, shape, motion = combos[order[i % (concepts or len(combos))]]
        video_rng = np.random.default_rng([seed, i])
        spec = _make_spec(
            f"video{i:05d}", color, shape, motion, frames_per_video, video_rng, uninformative
        )
        if anywhere:
            shift = int(video_rng.integers(frames_per_video))
            spec = replace(spec, informative=np.roll(spec.informative, shift).tolist())
        frames = _render(spec, size, video_rng, noise)
        _write_h264(root / f"{spec.video_id}.mp4", frames, fps)
        specs.append(spec)

    duration = frames_per_video / fps
    paths: dict[str, Path] = {}
    if concepts is None:
        members_by_split = _split(num_videos, splits, rng)
    else:
        members_by_split = _split_known_concepts(num_videos, splits, rng, concepts)
    for split, members in zip(_SPLITS, members_by_split, strict=True):
        annots = {
            specs[i].video_id: {
                "extension": "mp4",
                "sentences": specs[i].sentences,
                "duration": duration,
            }
            for i in sorted(members)
        }
        paths[split] = root / f"{split}.json"
        _write_json(paths[split], annots)
    meta = {
        "seed": seed,
        "fps": fps,
        "frames_per_video": frames_per_video,
        "size": size,
        "videos": {s.video_id: asdict(s) for s in specs},
    }
    _write_json(root / "synth_meta.json", meta)
    return paths


def _make_spec(
    video_id: str,
    color: str,
    shape: str,
    motion: str,
    num_frames: int,
    rng: np.random.Generator,
    uninformative: tuple[float, float] = (0.3, 0.5),
) -> VideoSpec:
    templates = rng.choice(len(_TEMPLATES), size=int(rng.integers(2, 4)), replace=False)
    sentences = [
        _TEMPLATES[t].format(
            a="an" if color[0] in "aeiou" else "a",
            color=color,
            shape=shape,
            motion=motion,
            phrase=_MOTION_PHRASES[motion][int(rng.integers(3))],
        )
        for t in templates
    ]
    mask = _informative_mask(num_frames, rng, uninformative)
    return VideoSpec(video_id, color, shape, motion, sentences, mask)


def _informative_mask(
    num_frames: int, rng: np.random.Generator, share: tuple[float, float] = (0.3, 0.5)
) -> list[bool]:
    """A share of the frames drawn from ``share`` (default 30-50%), in one to three
    contiguous stretches, is uninformative; at least one frame stays informative."""
    mask = np.ones(num_frames, dtype=bool)
    target = max(1, math.ceil(num_frames * rng.uniform(*share)))
    target = min(target, num_frames - 1)
    pieces = int(rng.integers(1, 4))
    lengths = np.full(pieces, target // pieces)
    lengths[: target % pieces] += 1
    free = num_frames - target  # informative frames, spread into pieces + 1 gaps
    gaps = np.diff(np.sort(rng.integers(0, free + 1, size=pieces)), prepend=0)
    start = 0
    for gap, length in zip(gaps, lengths, strict=True):
        start += int(gap)
        mask[start : start + int(length)] = False
        start += int(length)
    return mask.tolist()


def _render(spec: VideoSpec, size: int, rng: np.random.Generator, noise: float = 0.5) -> np.ndarray:
    """(T, H, W, 3) uint8 frames of the spec."""
    num = len(spec.informative)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    level = rng.uniform(70, 110)
    background = np.clip(level + 25 * (yy / size - 0.5) + 10 * (xx / size), 0, 255)
    radius = size * rng.uniform(*_RADIUS)
    dy, dx = MOTIONS[spec.motion]
    cross_axis = rng.uniform(0.3, 0.7) * size
    frames = np.empty((num, size, size, 3), dtype=np.uint8)
    noise_cells = -(-size // 8)
    blank = True
    color = np.array(COLORS[spec.color], np.float32)
    for t in range(num):
        if not spec.informative[t]:
            if t == 0 or spec.informative[t - 1]:  # a new stretch: black or grey noise
                blank = bool(rng.random() < 1.0 - noise)
            if blank:
                frames[t] = 0
            else:
                cells = rng.integers(0, 256, (noise_cells, noise_cells), dtype=np.uint8)
                frames[t] = np.kron(cells, np.ones((8, 8), np.uint8))[:size, :size, None]
            continue
        along = (0.2 + 0.6 * t / (num - 1)) * size  # 20% -> 80% of the frame
        frame = np.repeat(background[..., None], 3, axis=2)
        for lag, alpha in _TRAIL:
            at = along - lag * radius  # distance travelled by this copy
            cy = cross_axis if dy == 0 else (at if dy > 0 else size - at)
            cx = cross_axis if dx == 0 else (at if dx > 0 else size - at)
            mask = _shape_mask(spec.shape, yy - cy, xx - cx, radius)
            frame[mask] = (1 - alpha) * frame[mask] + alpha * color
        frames[t] = frame.astype(np.uint8)
    return frames


def _shape_mask(shape: str, dy: np.ndarray, dx: np.ndarray, r: float) -> np.ndarray:
    if shape == "circle":
        return np.asarray(dy**2 + dx**2 <= r**2)
    if shape == "square":
        return np.asarray((np.abs(dy) <= r * 0.85) & (np.abs(dx) <= r * 0.85))
    if shape == "triangle":  # apex up
        return np.asarray((dy <= r * 0.8) & (np.abs(dx) <= (dy + r) * 0.6))
    if shape == "cross":
        bar = r * 0.35
        return np.asarray(
            ((np.abs(dy) <= bar) & (np.abs(dx) <= r)) | ((np.abs(dx) <= bar) & (np.abs(dy) <= r))
        )
    raise ValueError(f"unknown shape {shape!r}")


def _write_h264(path: Path, frames: np.ndarray, fps: int) -> None:
    """H.264 (libx264, yuv420p) MP4.

    One thread and no SIMD: x264's assembly paths differ across CPUs and were seen to
    give run-to-run differences on tiny frames; plain C gives the same bytes every time.
    """
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream(
            "libx264",
            rate=fps,
            options={"crf": "28", "preset": "medium", "threads": "1", "x264-params": "asm=0"},
        )
        stream.height, stream.width = frames.shape[1:3]
        stream.pix_fmt = "yuv420p"
        for array in frames:
            frame = av.VideoFrame.from_ndarray(array, format="rgb24")
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))


def _split_counts(num: int, fractions: tuple[float, float, float]) -> tuple[int, int]:
    """Validated ``(n_val, n_test)`` for ``num`` clips; non-zero fractions get >= 1 when
    possible, and train keeps the rest."""
    if len(fractions) != 3 or min(fractions) < 0 or abs(sum(fractions) - 1.0) > 1e-6:
        raise ValueError(f"splits must be three non-negative fractions summing to 1: {fractions}")
    counts = [round(num * f) for f in fractions[1:]]
    for j, f in enumerate(fractions[1:]):
        if f > 0 and counts[j] == 0 and num - sum(counts) > 1:
            counts[j] = 1
    while sum(counts) > num:
        counts[counts.index(max(counts))] -= 1
    return counts[0], counts[1]


def _split(
    num: int, fractions: tuple[float, float, float], rng: np.random.Generator
) -> list[list[int]]:
    """Disjoint index lists for train/val/test."""
    n_val, n_test = _split_counts(num, fractions)
    order = rng.permutation(num).tolist()
    n_train = num - n_val - n_test
    return [order[:n_train], order[n_train : n_train + n_val], order[n_train + n_val :]]


def _split_known_concepts(
    num: int, fractions: tuple[float, float, float], rng: np.random.Generator, concepts: int
) -> list[list[int]]:
    """Like ``_split``, for clip ``i`` showing concept ``i % concepts``: val and test hold
    one clip each of distinct concepts, every one of which keeps a clip in train."""
    n_val, n_test = _split_counts(num, fractions)
    repeated = [c for c in range(concepts) if c + concepts < num]  # >= 2 clips
    if n_val + n_test > len(repeated):
        raise ValueError(
            f"val + test need {n_val + n_test} concepts with two or more clips; "
            f"{num} clips of {concepts} concepts have {len(repeated)}"
        )
    chosen = rng.permutation(repeated)[: n_val + n_test]
    held_out = [int(c + concepts * rng.integers(len(range(c, num, concepts)))) for c in chosen]
    train = sorted(set(range(num)) - set(held_out))
    return [train, held_out[:n_val], held_out[n_val:]]


def _write_json(path: Path, data: object) -> None:
    path.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n", encoding="utf-8")


def paint_index_video(
    path: str | os.PathLike[str],
    num_frames: int,
    fps: int = 8,
    size: int | tuple[int, int] = (48, 64),
    codec: str = "libx264",
    *,
    times: Sequence[float] | None = None,
    rotation: float = 0.0,
    hflip: bool = False,
    pix_fmt: str = "yuv420p",
    options: dict[str, str] | None = None,
    container_format: str | None = None,
    container_options: dict[str, str] | None = None,
) -> None:
    """Write a video whose frame ``i`` is filled with a colour encoding ``i``.

    Each frame is one flat colour (one of 6 levels per RGB channel, so up to
    ``PAINT_MAX_FRAMES`` frames) with its inverse in the top-left corner block (a
    quarter of each side) to show orientation. The container comes from the file
    extension unless ``container_format`` is given.

    Args:
        path: output file.
        num_frames: frames to write.
        fps: nominal frame rate.
        size: ``(height, width)``, or an int for a square.
        codec: encoder name, e.g. ``libx264``, ``libvpx-vp9``, ``mpeg4``.
        times: presentation time in seconds of each frame (variable frame rate);
            frame ``i`` is at ``i / fps`` when None.
        rotation: counter-clockwise display rotation written as stream side data.
        hflip: mirror in the display matrix as well.
        pix_fmt: encoder pixel format (``yuv444p`` allows odd sizes with libx264).
        options: encoder options.
        container_format: muxer name, overriding the extension.
        container_options: muxer options, e.g. ``{"movflags": "faststart"}``.
    """
    if not 1 <= num_frames <= PAINT_MAX_FRAMES:
        raise ValueError(f"num_frames must be in 1..{PAINT_MAX_FRAMES}, got {num_frames}")
    if times is not None and len(times) != num_frames:
        raise ValueError("times must give one time per frame")
    height, width = (size, size) if isinstance(size, int) else size
    time_base = Fraction(1, 1000) if times is not None else Fraction(1, fps)
    with av.open(
        os.fspath(path), mode="w", format=container_format, options=container_options or {}
    ) as container:
        stream = container.add_stream(codec, rate=fps, options=options or {})
        if not isinstance(stream, VideoStream):
            raise ValueError(f"{codec!r} is not a video encoder")
        stream.width, stream.height, stream.pix_fmt = width, height, pix_fmt
        stream.codec_context.time_base = time_base
        if rotation or hflip:
            stream.set_display_rotation(rotation, hflip=hflip)
        for i in range(num_frames):
            frame = av.VideoFrame.from_ndarray(paint_frame(i, height, width), format="rgb24")
            frame.time_base = time_base
            frame.pts = i if times is None else round(times[i] * 1000)
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))


def paint_frame(index: int, height: int, width: int) -> np.ndarray:
    """The ``(height, width, 3)`` RGB image ``paint_index_video`` writes for frame ``index``."""
    if not 0 <= index < PAINT_MAX_FRAMES:
        raise ValueError(f"index must be in 0..{PAINT_MAX_FRAMES - 1}, got {index}")
    digits = (index // _PAINT_LEVELS**2, index // _PAINT_LEVELS % _PAINT_LEVELS)
    color = np.array([*digits, index % _PAINT_LEVELS], dtype=np.uint8) * _PAINT_STEP
    image = np.empty((height, width, 3), dtype=np.uint8)
    image[:] = color
    image[: max(1, height // 4), : max(1, width // 4)] = 255 - color
    return image


def read_painted_index(frame: np.ndarray) -> int:
    """The index painted by ``paint_index_video`` into a decoded ``(H, W, 3)`` RGB frame."""
    median = np.median(frame.reshape(-1, frame.shape[-1])[:, :3], axis=0)
    r, g, b = (int(v) for v in np.clip(np.rint(median / _PAINT_STEP), 0, _PAINT_LEVELS - 1))
    return (r * _PAINT_LEVELS + g) * _PAINT_LEVELS + b
