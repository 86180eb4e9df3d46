"""The index job's reports, kept as it runs: counters, ``failures.jsonl``, ``summary.json``.

:class:`JobReport` is a small Ray actor (no CPU, on the driver's node) that every stage
reports to: the plan stage adds its per-batch counts, the decode stage its failures, the
model actors their GFLOPs figure. Failure rows are appended to ``failures.jsonl`` as they
arrive; ``flush`` rewrites ``summary.json`` (the driver calls it every few seconds and at the
end). With an ``s3://`` output both files are uploaded by ``flush`` (S3 has no append:
failures are appended to a local spool file first and the whole file is uploaded when it
grew). Nothing in it grows with the number of videos but that spool file.

:class:`FailureReporter` is what a stage holds: the report actor, and the store's owner to
record permanent failures (a video that cannot be decoded at this etag is not downloaded
again on the next run unless ``--retry-failed``).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipelines.object_fetch import is_s3_uri, s3_client, split_s3_uri

PERMANENT_STAGES = frozenset({"decode"})  # same bytes, same failure: not fetched again

# Counters the plan stage adds (each *_bytes sums the listed object sizes).
PLAN_COUNTS = (
    "listed",
    "listed_bytes",
    "skipped",  # already indexed, same etag
    "skipped_bytes",
    "skipped_failed",  # failed for good before, same etag (not fetched again)
    "skipped_failed_bytes",
    "to_index",  # new or changed, admitted by --limit
    "to_index_bytes",
    "deferred",  # new or changed beyond --limit: left for a later run
    "deferred_bytes",
    "known",  # listed URIs the collection already holds (any etag): for the dry run's prune
    "known_bytes",  # their stored sizes
)


@dataclass(frozen=True)
class FailureReporter:
    """Reports a stage's failure rows; picklable (actor handles and plain settings).

    Args:
        report: the :class:`JobReport` actor.
        owner: the store owner (``StoreWriter``) that records permanent failures, or None
            (a dry run records nothing).
        model_id: the model whose collection it is.
        run_id: this run's id (the mark of ``--prune``'s sweep).
    """

    report: Any
    owner: Any = None
    model_id: str = ""
    run_id: str = ""

    def record(self, rows: list[dict[str, Any]]) -> None:
        """Report rows (``uri, stage, reason, ...`` plus ``etag`` and ``size_bytes`` when
        known); waits until they are written."""
        import ray

        from pipelines.store import FailedVideo

        refs = [self.report.record.remote(rows)]
        permanent = [
            FailedVideo(
                uri=r["uri"],
                etag=str(r["etag"]),
                size_bytes=int(r.get("size_bytes") or 0),
                stage=r["stage"],
                reason=r["reason"],
                message=r["message"],
                model_id=self.model_id,
                seen_run=self.run_id,
            )
            for r in rows
            if r["stage"] in PERMANENT_STAGES and r.get("etag")
        ]
        if permanent and self.owner is not None:
            refs.append(self.owner.record_failures.remote(permanent))
        ray.get(refs)


class ReportFiles:
    """Where ``summary.json`` and ``failures.jsonl`` go: a local folder or an ``s3://`` one."""

    def __init__(self, output: str, s3_endpoint_url: str | None = None) -> None:
        self.output = output
        self.remote = is_s3_uri(output)
        self.s3_endpoint_url = s3_endpoint_url
        if self.remote:
            self.local = Path(tempfile.mkdtemp(prefix="adaclip-index-report-"))
        else:
            self.local = Path(output)
            self.local.mkdir(parents=True, exist_ok=True)
        self.failures_path = self.local / "failures.jsonl"
        self._client: Any = None

    def upload(self, name: str) -> None:
        if not self.remote:
            return
        if self._client is None:
            self._client = s3_client(self.s3_endpoint_url)
        bucket, prefix = split_s3_uri(self.output)
        key = f"{prefix.rstrip('/')}/{name}" if prefix.strip("/") else name
        self._client.upload_file(str(self.local / name), bucket, key)

    def write_summary(self, summary: dict[str, Any]) -> None:
        tmp = self.local / ".summary.json.tmp"
        tmp.write_text(json.dumps(summary, indent=2))
        os.replace(tmp, self.local / "summary.json")
        self.upload("summary.json")


class JobReport:
    """The job's counters and report files (a Ray actor; calls run one at a time).

    Args:
        output: folder (local or ``s3://``) for ``summary.json`` and ``failures.jsonl``.
        header: fixed fields of the summary (source, collection, model_id, run_id ...).
        limit: at most this many videos admitted for indexing (``--limit``), or None.
        write_files: False for a dry run: nothing is written.
        s3_endpoint_url: endpoint of an ``s3://`` output.
    """

    def __init__(
        self,
        output: str,
        header: dict[str, Any],
        limit: int | None = None,
        write_files: bool = True,
        s3_endpoint_url: str | None = None,
    ) -> None:
        self.header = dict(header)
        self.limit = limit
        self.counts: Counter[str] = Counter({k: 0 for k in PLAN_COUNTS})
        self.failed_by_reason: Counter[str] = Counter()
        self.failed_by_stage: Counter[str] = Counter()
        self.gflops: dict[str, float] = {}
        self.admitted = 0
        self.files = ReportFiles(output, s3_endpoint_url) if write_files else None
        self._uploaded_failures = 0
        if self.files is not None:
            self.files.failures_path.write_text("")  # this run's failures only

    def add(self, counts: dict[str, int]) -> None:
        self.counts.update(counts)

    def admit(self, wanted: int) -> int:
        """How many of ``wanted`` new videos may be indexed under ``--limit``."""
        left = wanted if self.limit is None else max(0, min(wanted, self.limit - self.admitted))
        self.admitted += left
        return left

    def record(self, rows: list[dict[str, Any]]) -> None:
        """Count failure rows and append them to ``failures.jsonl`` (flushed at once)."""
        for row in rows:
            self.failed_by_reason[str(row["reason"])] += 1
            self.failed_by_stage[str(row["stage"])] += 1
        if self.files is not None and rows:
            with open(self.files.failures_path, "a") as fh:
                for row in rows:
                    fh.write(json.dumps(row) + "\n")

    def set_gflops(self, figures: dict[str, float]) -> None:
        self.gflops = dict(figures)

    def failed(self) -> int:
        return sum(self.failed_by_reason.values())

    def snapshot(self) -> dict[str, Any]:
        """The summary so far (without the fields the driver adds at the end)."""
        return {
            **self.header,
            **dict(self.counts),
            "failed": self.failed(),
            "failed_by_reason": dict(self.failed_by_reason),
            "failed_by_stage": dict(self.failed_by_stage),
            "gflops_per_video": round(float(self.gflops.get("total", 0.0)), 3),
            "gflops_per_video_no_policy": round(float(self.gflops.get("no_policy_clip_n", 0.0)), 3),
        }

    def flush(self, extra: dict[str, Any]) -> dict[str, Any]:
        """Write ``summary.json`` (snapshot + ``extra``) and upload a grown ``failures.jsonl``
        to an ``s3://`` output; returns the summary."""
        summary = {**self.snapshot(), **extra}
        if self.files is not None:
            self.files.write_summary(summary)
            if self.files.remote and self.failed() != self._uploaded_failures:
                self.files.upload("failures.jsonl")
                self._uploaded_failures = self.failed()
            elif self.files.remote and self._uploaded_failures == 0 and extra.get("finished"):
                self.files.upload("failures.jsonl")  # an empty file: no failures this run
        return summary

    def close(self) -> None:
        """Remove the local spool folder of an ``s3://`` output (after the last flush)."""
        if self.files is not None and self.files.remote:
            shutil.rmtree(self.files.local, ignore_errors=True)
