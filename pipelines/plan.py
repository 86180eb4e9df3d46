"""The index job's plan stage: per batch of listed videos, what to index, skip or leave.

For each batch of listing rows the stage asks the store's owner what it holds for those
URIs (one batched retrieve by point id, UUID5 of the URI, reading only the ``etag``,
``size_bytes`` and ``status`` payload) and keeps the new and changed videos. With
``--prune`` the same call marks the listed URIs with this run's id (the mark of the
sweep). Nothing per video stays anywhere: counts go to the report actor, rows downstream.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from pipelines.listing import LISTING_COLUMNS, empty_listing_batch
from pipelines.store import IndexedState

Batch = dict[str, np.ndarray]


@dataclass(frozen=True)
class PlanSpec:
    """How the plan stage decides; plain, picklable settings.

    Attributes:
        run_id: this run's id; listed URIs are marked with it when ``prune``.
        prune: mark listed URIs for the sweep.
        retry_failed: index videos that failed for good before, even at the same etag.
        dry_run: count only: pass no row downstream, mark nothing.
        limited: ``--limit`` was given (the report actor admits new work).
    """

    run_id: str
    prune: bool = False
    retry_failed: bool = False
    dry_run: bool = False
    limited: bool = False


def plan_rows(
    uris: Sequence[str],
    etags: Sequence[str],
    sizes: Sequence[int],
    known: dict[str, IndexedState],
    retry_failed: bool,
) -> tuple[list[int], dict[str, int]]:
    """Indices of the rows to index (new or changed), and the counts of the batch.

    A row is skipped when the store holds its URI at the same etag, as a video or (unless
    ``retry_failed``) as a failure record; any other etag means the object changed.
    Duplicate URIs in a batch are planned once.
    """
    counts = dict.fromkeys(
        ("listed", "listed_bytes", "skipped", "skipped_bytes", "skipped_failed"), 0
    )
    counts |= dict.fromkeys(("skipped_failed_bytes", "known", "known_bytes"), 0)
    todo: list[int] = []
    seen: set[str] = set()
    for i, (uri, etag, size) in enumerate(zip(uris, etags, sizes, strict=True)):
        if uri in seen:
            continue
        seen.add(uri)
        counts["listed"] += 1
        counts["listed_bytes"] += int(size)
        state = known.get(uri)
        if state is not None:
            counts["known"] += 1
            counts["known_bytes"] += state.size_bytes
        if state is None or state.etag != etag or (state.failed and retry_failed):
            todo.append(i)
        elif state.failed:
            counts["skipped_failed"] += 1
            counts["skipped_failed_bytes"] += int(size)
        else:
            counts["skipped"] += 1
            counts["skipped_bytes"] += int(size)
    return todo, counts


def take_rows(batch: Batch, rows: Sequence[int]) -> Batch:
    """The listing columns of ``rows`` (a new batch; the input is not modified)."""
    if not rows:
        return empty_listing_batch()
    idx = np.asarray(rows, dtype=np.int64)
    return {key: np.asarray(batch[key])[idx] for key in LISTING_COLUMNS}


def plan_batch(batch: Batch, *, owner: Any, report: Any, spec: PlanSpec) -> Batch:
    """Ray Data stage (a function run in tasks): listing rows -> rows to index."""
    import ray

    uris = [str(u) for u in batch["uri"]]
    etags = [str(e) for e in batch["etag"]]
    sizes = [int(s) for s in batch["size_bytes"]]
    mark = spec.run_id if spec.prune and not spec.dry_run else None
    known = ray.get(owner.lookup.remote(uris, mark)) if uris else {}
    todo, counts = plan_rows(uris, etags, sizes, known, spec.retry_failed)
    admitted = len(todo)
    if spec.limited and todo:
        admitted = int(ray.get(report.admit.remote(len(todo))))
    kept, deferred = todo[:admitted], todo[admitted:]
    counts["to_index"] = len(kept)
    counts["to_index_bytes"] = sum(sizes[i] for i in kept)
    counts["deferred"] = len(deferred)
    counts["deferred_bytes"] = sum(sizes[i] for i in deferred)
    ray.get(report.add.remote(counts))
    return take_rows(batch, [] if spec.dry_run else kept)
