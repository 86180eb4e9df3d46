"""The two Ray Data stages of the ingestion job, as thin callable classes.

``DecodeVideos`` (CPU actors) fetches each object and decodes its N candidate frames;
``EmbedVideos`` (GPU actors when the cluster has GPUs) runs the policy, keeps K frames,
encodes only those with CLIP and aggregates them, and reports the model's GFLOPs per video
once. Videos that fail are reported (:class:`pipelines.report.FailureReporter`: a row of
``failures.jsonl`` at once, and a failure record in the store when decoding failed) and
dropped from the stream, so one bad file never stops the job. In the model stage that
holds for one bad row too: a batch that raises (out of memory on one long video) is retried
one video at a time, and a video whose vector came out NaN, inf or zero is dropped with
reason ``bad_vector``; both are reported with stage ``embed`` and fetched again next run.
The pure work underneath (``decode_object``, ``embed_batch``) is tested without Ray.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np

from pipelines.sources import FetchError, ObjectFetcher

log = logging.getLogger("adaclip.index")

Batch = dict[str, np.ndarray]
ROW_FIELDS = ("uri", "video_id", "etag", "size_bytes")


@dataclass(frozen=True)
class DecodeSpec:
    """What the decode stage produces: N candidates of size x size pixels."""

    num_candidates: int
    frame_size: int
    frames_dir: bool = False  # each URI is a folder of pre-extracted frames
    frames_fps: float | None = None
    threads: int = 1  # FFmpeg decoding threads per actor


def failure_row(
    uri: str, stage: str, error: BaseException, etag: str = "", size_bytes: int = 0
) -> dict[str, Any]:
    """One line of ``failures.jsonl``."""
    reason = getattr(error, "reason", None) or type(error).__name__
    return {
        "uri": uri,
        "stage": stage,
        "reason": str(reason),
        "error_type": type(error).__name__,
        "message": str(error)[:500],
        "etag": etag,
        "size_bytes": int(size_bytes),
    }


def decode_object(
    fetcher: ObjectFetcher, uri: str, spec: DecodeSpec, size_hint: int | None = None
) -> tuple[np.ndarray, np.ndarray, float]:
    """Fetch one object and decode its candidates: frames (N,S,S,3), timestamps (N,), duration.

    ``size_hint`` (the listed size; 0 or None: unknown) lets a large object be read through
    ranged GETs instead of downloaded whole.
    """
    from adaclip.decode import decode_candidates

    if spec.frames_dir:
        from adaclip.frames_dir import decode_candidates_from_frames

        video = decode_candidates_from_frames(
            uri, spec.num_candidates, spec.frame_size, fps=spec.frames_fps
        )
        return video.frames, video.timestamps.astype(np.float64), float(video.duration)
    with fetcher.fetch(uri, size_hint=size_hint) as fh:
        video = decode_candidates(fh, spec.num_candidates, spec.frame_size, threads=spec.threads)
    return video.frames, video.timestamps.astype(np.float64), float(video.duration)


class DecodeVideos:
    """Ray Data UDF: listing rows -> rows with decoded candidate frames.

    Args:
        fetcher: fetches each object (retries, spooling).
        spec: what to decode.
        failures: a ``FailureReporter`` (anything with ``record(rows)``).
    """

    def __init__(self, fetcher: ObjectFetcher, spec: DecodeSpec, failures: Any) -> None:
        from pipelines.hls import HlsFolders

        self.fetcher = fetcher
        self.spec = spec
        self.failures = failures
        self.hls = HlsFolders(None if spec.frames_dir else _LazyClient(fetcher))

    def __call__(self, batch: Batch) -> Batch:
        from adaclip.decode import DecodeError

        out: dict[str, list[Any]] = {
            k: [] for k in (*ROW_FIELDS, "duration_s", "frames", "timestamps")
        }
        failures = []
        from pipelines.hls import HlsSegmentError

        for i, uri in enumerate(batch["uri"]):
            known = (str(batch["etag"][i]), int(batch["size_bytes"][i]))
            try:
                if not self.spec.frames_dir and self.hls.is_segment(str(uri)):
                    raise HlsSegmentError(f"{uri}: a segment of the HLS playlist in its folder")
                frames, timestamps, duration = decode_object(
                    self.fetcher, str(uri), self.spec, size_hint=known[1] or None
                )
            except FetchError as err:
                failures.append(failure_row(str(uri), "fetch", err, *known))
                continue
            except (DecodeError, OSError, ValueError) as err:  # HlsSegmentError included
                failures.append(failure_row(str(uri), "decode", err, *known))
                continue
            for key in ROW_FIELDS:
                out[key].append(batch[key][i])
            out["duration_s"].append(duration)
            out["frames"].append(frames)
            out["timestamps"].append(timestamps)
        if failures:
            self.failures.record(failures)
        return _to_batch(out, self.spec)


class _LazyClient:
    """The fetcher's S3 client, made on first use (a folder of local files needs none)."""

    def __init__(self, fetcher: ObjectFetcher) -> None:
        self.fetcher = fetcher

    def get_paginator(self, name: str) -> Any:
        return self.fetcher.client.get_paginator(name)


def _empty_listing_columns() -> Batch:
    """The listing columns of a batch with no rows (every video of it failed)."""
    return {
        "uri": np.array([], dtype=object),
        "video_id": np.array([], dtype=object),
        "etag": np.array([], dtype=object),
        "size_bytes": np.array([], dtype=np.int64),
        "duration_s": np.array([], dtype=np.float64),
    }


def _to_batch(columns: dict[str, list[Any]], spec: DecodeSpec) -> Batch:
    n, s = spec.num_candidates, spec.frame_size
    if not columns["uri"]:  # every video of the batch failed: an empty, typed batch
        return {
            **_empty_listing_columns(),
            "frames": np.zeros((0, n, s, s, 3), dtype=np.uint8),
            "timestamps": np.zeros((0, n), dtype=np.float64),
        }
    return {
        "uri": np.array(columns["uri"], dtype=object),
        "video_id": np.array(columns["video_id"], dtype=object),
        "etag": np.array(columns["etag"], dtype=object),
        "size_bytes": np.asarray(columns["size_bytes"], dtype=np.int64),
        "duration_s": np.asarray(columns["duration_s"], dtype=np.float64),
        "frames": np.stack(columns["frames"]),  # (B, N, S, S, 3)
        "timestamps": np.stack(columns["timestamps"]),  # (B, N)
    }


def load_model(checkpoint: str, s3_endpoint_url: str | None, device: str) -> Any:
    """Load a checkpoint folder (local, or s3:// through the node's checkpoint cache)."""
    from adaclip.checkpoint import load_checkpoint
    from pipelines.checkpoints import fetch_checkpoint

    return load_checkpoint(fetch_checkpoint(checkpoint, s3_endpoint_url), device=device)


def embed_batch(model: Any, batch: Batch) -> Batch:
    """Encode a decoded batch: CLIP on the K kept frames only, then aggregation.

    Returns the columns of the index rows: video_vector (B,D), frame_vectors (B,K,D),
    frame_ts (B,K) in time order, frame_weights (B,K), plus the listing fields.

    On CUDA the batch goes to the GPU once (pinned memory) and the model runs under bf16
    autocast (``benchmarks/gpu_check.py`` reports the difference to fp32); vectors come
    back as float32.
    """
    import torch

    frames = torch.from_numpy(np.ascontiguousarray(batch["frames"]))  # (B, N, S, S, 3)
    device = next(model.parameters()).device if hasattr(model, "parameters") else None
    if device is not None and device.type == "cuda":
        # one copy to the GPU (pinned, async); the model's own .to(device) are then no-ops
        frames = frames.pin_memory().to(device, non_blocking=True)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            enc = model.encode_video(frames)
    else:
        enc = model.encode_video(frames)
    idx = enc.indices.cpu().numpy()  # (B, K) ascending
    frame_ts = np.take_along_axis(batch["timestamps"], idx, axis=1)
    out: Batch = {key: batch[key] for key in (*ROW_FIELDS, "duration_s")}
    out["video_vector"] = enc.video.float().cpu().numpy()
    out["frame_vectors"] = enc.frames.float().cpu().numpy()
    out["frame_ts"] = frame_ts.astype(np.float64)
    out["frame_weights"] = enc.weights.float().cpu().numpy()
    return out


class BadVectorError(ValueError):
    """The model gave a video a vector that cosine search cannot use (NaN, inf or zero)."""

    reason = "bad_vector"


def bad_vector_rows(out: Batch) -> dict[int, str]:
    """Rows of an embedding batch whose video or frame vectors are non-finite or zero:
    {row: what is wrong}."""
    bad: dict[int, str] = {}
    video, frames = out["video_vector"], out["frame_vectors"]  # (B, D), (B, K, D)
    for i in range(len(video)):
        if not (np.isfinite(video[i]).all() and np.isfinite(frames[i]).all()):
            bad[i] = "non-finite value (NaN or inf) in the video or frame vectors"
        elif not np.linalg.norm(video[i]) > 0 or not np.linalg.norm(frames[i], axis=-1).min() > 0:
            bad[i] = "zero video or frame vector (cosine is undefined)"
    return bad


def take_rows(batch: Batch, rows: list[int]) -> Batch:
    """The batch restricted to ``rows`` (a copy; the input is not changed)."""
    return {key: value[rows] for key, value in batch.items()}


def concat_batches(parts: list[Batch]) -> Batch:
    return {key: np.concatenate([p[key] for p in parts]) for key in parts[0]}


def embed_or_split(
    embed: Any, batch: Batch, on_error: Any = None
) -> tuple[Batch | None, list[dict[str, Any]]]:
    """Embed a batch; when it raises, embed each video alone, so one bad video (an out of
    memory on one long video, a decoder-made frame the model chokes on) costs only itself.

    Args:
        embed: ``batch -> embedding batch`` (:func:`embed_batch` with a model bound).
        batch: decoded rows.
        on_error: called with the exception before the per-video retry (frees GPU memory).

    Returns:
        The embedding rows that are fit to store (None: none), and one failure row per
        video dropped: stage ``embed``, reason the exception's type or ``bad_vector``.
    """
    n = len(batch["uri"])
    try:
        parts = [embed(batch)]
    except Exception as err:
        if n == 1:
            return None, [_embed_failure(batch, 0, err)]
        if on_error is not None:
            on_error(err)
        results = [embed_or_split(embed, take_rows(batch, [i]), on_error) for i in range(n)]
        kept = [part for part, _ in results if part is not None]
        failed = [row for _, rows in results for row in rows]
        return (concat_batches(kept) if kept else None), failed
    out = parts[0]
    bad = bad_vector_rows(out)
    if not bad:
        return out, []
    failed = [_embed_failure(batch, i, BadVectorError(msg)) for i, msg in bad.items()]
    good = [i for i in range(n) if i not in bad]
    return (take_rows(out, good) if good else None), failed


def _embed_failure(batch: Batch, i: int, err: BaseException) -> dict[str, Any]:
    return failure_row(
        str(batch["uri"][i]), "embed", err, str(batch["etag"][i]), int(batch["size_bytes"][i])
    )


def _free_accelerator_memory(err: BaseException) -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()


class EmbedVideos:
    """Ray Data UDF: decoded rows -> embedding rows. Loads the model once per actor.

    Args:
        checkpoint: checkpoint folder, local or ``s3://``.
        s3_endpoint_url: S3-compatible endpoint, ``None`` for AWS.
        use_gpu: run on CUDA (:class:`pipelines.gpu.NoCudaError` when the actor sees none).
        frame_size: decoded frame size; with ``report``, the GFLOPs one video costs at this
            size are counted once on the loaded model and sent to ``report.set_gflops``.
        report: the job's ``JobReport`` actor, or None.
        failures: a ``FailureReporter`` for the videos this stage drops (None: dropped
            videos are only logged). A batch that raises is retried one video at a time;
            a video whose vectors are NaN, inf or zero is dropped (:func:`embed_or_split`).
    """

    def __init__(
        self,
        checkpoint: str,
        s3_endpoint_url: str | None,
        use_gpu: bool,
        frame_size: int = 224,
        report: Any = None,
        failures: Any = None,
    ) -> None:
        from pipelines.gpu import model_device

        self.model = load_model(checkpoint, s3_endpoint_url, model_device(use_gpu))
        self.failures = failures
        if report is not None:
            from adaclip.flops import video_gflops

            counted = video_gflops(self.model, frame_size)
            figures = {k: float(counted[k]) for k in ("total", "no_policy_clip_n")}
            report.set_gflops.remote(figures)

    def __call__(self, batch: Batch) -> Batch:
        if len(batch["uri"]) == 0:
            return embed_batch_empty(self.model)
        out, failed = embed_or_split(
            partial(embed_batch, self.model), batch, on_error=_free_accelerator_memory
        )
        if failed:
            for row in failed:
                log.warning("dropped %s: %s: %s", row["uri"], row["reason"], row["message"])
            if self.failures is not None:
                self.failures.record(failed)
        return out if out is not None else embed_batch_empty(self.model)


def embed_batch_empty(model: Any) -> Batch:
    k, d = model.config.top_k, model.embed_dim
    return {
        **_empty_listing_columns(),
        "video_vector": np.zeros((0, d), dtype=np.float32),
        "frame_vectors": np.zeros((0, k, d), dtype=np.float32),
        "frame_ts": np.zeros((0, k), dtype=np.float64),
        "frame_weights": np.zeros((0, k), dtype=np.float32),
    }
