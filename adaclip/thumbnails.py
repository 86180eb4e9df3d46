"""One frame of a video at a given time, decoded by seeking: the thumbnails of the frames a
model kept (their ``frame_ts``), cropped as the model saw them.
"""

from __future__ import annotations

import math
import os

import numpy as np

from adaclip.decode import (
    EmptyVideoError,
    _Cursor,
    _frame_to_rgb,
    _open,
    _start_pts,
    _time_base,
    _video_stream,
)


def decode_frame_at(path: str | os.PathLike[str], t: float, size: int = 96) -> np.ndarray:
    """The first frame at or after ``t`` seconds (else the last before it), centre-cropped to
    a ``size`` square: (size, size, 3) uint8 RGB, display orientation.

    Seeks to the keyframe before ``t`` and decodes forward (the decoder's cursor, as
    ``decode_candidates`` picks its candidates).

    Raises:
        DecodeError subclasses: not a video, or no frame to decode.
        OSError: the file cannot be opened.
    """
    name = str(path)
    container = _open(name, name)
    try:
        stream = _video_stream(container, name)
        cursor = _Cursor(container, stream, _time_base(stream), _start_pts(stream))
        try:
            picked = cursor.pick(max(float(t), 0.0), math.inf)
            if picked is None:
                raise EmptyVideoError(f"{name}: no decodable frame at {t:.2f} s")
            frame, _ = picked
            return _frame_to_rgb(
                frame, (size, size), "shortest_center_crop", cursor.matrix,
                stream.sample_aspect_ratio,
            )  # fmt: skip
        finally:
            cursor.close()
    finally:
        container.close()
