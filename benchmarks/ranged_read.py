"""Ranged reads vs a whole download: decoding N=16 candidates of a 10-minute 720p video on S3.

Makes (once, cached) a 10-minute 1280x720 H.264 MP4 at ~1.2 Mbit/s with a keyframe every
2 s: a 30 s segment encoded by ffmpeg, concatenated 20 times without re-encoding (moov at
the end, ffmpeg's default), and a ``+faststart`` remux of it (moov first). Both are put in
a moto S3 server on 127.0.0.1 whose responses are counted on the server side (a WSGI
middleware summing the bodies of GETs). Then, interleaved ``--repeats`` times, each file is
fetched and decoded (N=16, 224 px) by the index job's own code, ``decode_object``:

- whole: ``ObjectFetcher`` as before this change (one GET of the whole object, spooled to
  local disk above 64 MB), then PyAV on the local file;
- ranged: ``ObjectFetcher`` with ranged reads (``RangedObject``: ranged GETs with
  read-ahead and the ETag pinned), PyAV reading through it.

Reports bytes fetched / object size and the median time of ranged / whole for each file.
Last line: ``ranged_read_bytes_ratio_10min: B ranged_read_time_ratio_10min: T`` (faststart).

    python -m benchmarks.ranged_read [--repeats 3] [--cache-dir DIR]
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import statistics
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from benchmarks.common import machine, print_table

logging.getLogger("werkzeug").setLevel(logging.ERROR)  # no line per request

N, FRAME = 16, 224
FAKE_AWS = {
    "AWS_ACCESS_KEY_ID": "bench",
    "AWS_SECRET_ACCESS_KEY": "bench",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_CONFIG_FILE": "/nonexistent/aws-config",
    "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent/aws-credentials",
    "AWS_EC2_METADATA_DISABLED": "true",
}


def _ffmpeg(*args: str) -> None:
    cmd = ["ffmpeg", "-hide_banner", "-nostdin", "-v", "error", "-y", *args]
    subprocess.run(cmd, check=True)


def make_videos(cache: Path) -> dict[str, Path]:
    """The moov-at-end and faststart 10-minute clips (made once)."""
    cache.mkdir(parents=True, exist_ok=True)
    end, fast = cache / "ranged_720p_10min_moov_end.mp4", cache / "ranged_720p_10min_faststart.mp4"
    if not end.exists():
        seg = cache / "ranged_720p_30s.mp4"
        if not seg.exists():
            _ffmpeg(
                "-f", "lavfi", "-i", "testsrc2=size=1280x720:rate=25", "-t", "30",
                "-c:v", "libx264", "-preset", "ultrafast", "-g", "50", "-keyint_min", "50",
                "-sc_threshold", "0", "-b:v", "1200k", "-maxrate", "1500k", "-bufsize", "3000k",
                "-pix_fmt", "yuv420p", str(seg),
            )  # fmt: skip
        listing = cache / "concat.txt"
        listing.write_text("".join(f"file '{seg.name}'\n" for _ in range(20)))
        tmp = end.with_suffix(".partial.mp4")
        _ffmpeg("-f", "concat", "-safe", "0", "-i", str(listing), "-c", "copy", str(tmp))
        tmp.rename(end)
    if not fast.exists():
        tmp = fast.with_suffix(".partial.mp4")
        _ffmpeg("-i", str(end), "-c", "copy", "-movflags", "+faststart", str(tmp))
        tmp.rename(fast)
    return {"faststart": fast, "moov_at_end": end}


class CountingS3:
    """A moto S3 server on 127.0.0.1 counting the body bytes of every GET it answers."""

    def __init__(self) -> None:
        from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app
        from werkzeug.serving import make_server

        self.bytes = 0
        self.requests = 0
        self._lock = threading.Lock()
        app = DomainDispatcherApplication(create_backend_app)

        def middleware(environ: dict[str, Any], start_response: Any) -> Any:
            body = app(environ, start_response)
            if environ["REQUEST_METHOD"] != "GET":
                return body
            chunks = list(body)
            with self._lock:
                self.requests += 1
                self.bytes += sum(len(c) for c in chunks)
            return chunks

        self._server = make_server("127.0.0.1", 0, middleware, threaded=True)
        self.url = f"http://127.0.0.1:{self._server.server_port}"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def take(self) -> tuple[int, int]:
        with self._lock:
            counts = (self.bytes, self.requests)
            self.bytes = self.requests = 0
        return counts

    def stop(self) -> None:
        self._server.shutdown()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--cache-dir", type=Path, default=Path(tempfile.gettempdir()) / "adaclip-bench"
    )
    args = parser.parse_args(argv)
    if shutil.which("ffmpeg") is None:
        raise SystemExit("this benchmark needs the ffmpeg binary to make its 10-minute video")
    os.environ.update(FAKE_AWS)
    from pipelines.embed import DecodeSpec, decode_object
    from pipelines.object_fetch import ObjectFetcher, s3_client

    videos = make_videos(args.cache_dir)
    s3 = CountingS3()
    client = s3_client(s3.url)
    client.create_bucket(Bucket="bench")
    sizes = {}
    for name, path in videos.items():
        client.upload_file(str(path), "bench", f"{name}.mp4")
        sizes[name] = path.stat().st_size
    spec = DecodeSpec(N, FRAME, threads=1)
    fetchers = {
        "whole": ObjectFetcher(s3.url, ranged_min_bytes=None),
        "ranged": ObjectFetcher(s3.url),  # the job's default: ranges from 32 MB on
    }
    times: dict[tuple[str, str], list[float]] = {}
    fetched: dict[tuple[str, str], tuple[int, int]] = {}
    for _ in range(args.repeats):
        for name in videos:
            for how, fetcher in fetchers.items():
                s3.take()
                start = time.perf_counter()
                decode_object(fetcher, f"s3://bench/{name}.mp4", spec, size_hint=sizes[name])
                times.setdefault((name, how), []).append(time.perf_counter() - start)
                fetched[(name, how)] = s3.take()
    s3.stop()
    rows, ratios = [], {}
    for name in videos:
        whole_t = statistics.median(times[(name, "whole")])
        ranged_t = statistics.median(times[(name, "ranged")])
        ranged_b, ranged_req = fetched[(name, "ranged")]
        whole_b, _ = fetched[(name, "whole")]
        ratios[name] = (ranged_b / sizes[name], ranged_t / whole_t)
        rows.append(
            {
                "file": name,
                "object MB": f"{sizes[name] / 1e6:.1f}",
                "whole: MB fetched, s": f"{whole_b / 1e6:.1f}, {whole_t:.2f}",
                "ranged: MB fetched, GETs, s": f"{ranged_b / 1e6:.2f}, {ranged_req}, {ranged_t:.2f}",
                "bytes ratio": f"{ratios[name][0]:.3f}",
                "time ratio": f"{ratios[name][1]:.2f}",
            }
        )
    print(f"{machine()}; N={N}, {FRAME} px, median of {args.repeats}, moto S3 on 127.0.0.1")
    print_table(rows)
    b, t = ratios["faststart"]
    print(f"ranged_read_bytes_ratio_10min: {b:.3f} ranged_read_time_ratio_10min: {t:.2f}")


if __name__ == "__main__":
    main()
