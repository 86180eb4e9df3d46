"""The index follows its source: changed etags re-index, deleted objects are pruned only
with ``--prune``, ``--dry-run`` writes nothing, manifests of every kind stream in."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import pytest

from adaclip.synth import generate_dataset
from pipelines.index import format_dry_run, main, run_index
from pipelines.sources import SourceError
from pipelines.store import open_store
from tests.pipelines.conftest import index_settings

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("clips")
    generate_dataset(root, num_videos=4, seed=5, frames_per_video=16)
    return root


def stored(qdrant: Path) -> dict[str, str]:
    store = open_store(qdrant_path=str(qdrant))
    store.open_collection("videos")
    try:
        return store.indexed_etags()
    finally:
        store.close()


def test_changed_reindexed_unchanged_skipped_deleted_pruned_only_with_prune(
    ray_cluster: Any, clips: Path, checkpoint: Path, tmp_path: Path
) -> None:
    folder = tmp_path / "bucket"
    shutil.copytree(clips, folder)
    first = run_index(index_settings(folder, tmp_path, checkpoint))
    assert (first.listed, first.indexed, first.failed) == (4, 4, 0)
    before = stored(tmp_path / "qdrant")

    changed, deleted = folder / "video00001.mp4", folder / "video00002.mp4"
    changed.write_bytes((clips / "video00003.mp4").read_bytes())  # new content, new etag
    os.utime(changed, ns=(1, 10**18))
    deleted.unlink()

    # a dry run says what would happen, with bytes, and writes nothing
    summary_file = tmp_path / "job" / "summary.json"
    summary_before = summary_file.read_text()
    dry = run_index(index_settings(folder, tmp_path, checkpoint, dry_run=True, prune=True))
    assert (dry.listed, dry.to_index, dry.skipped, dry.pruned) == (3, 1, 2, 1)
    assert dry.to_index_bytes == changed.stat().st_size
    assert dry.pruned_bytes == (clips / "video00002.mp4").stat().st_size
    assert dry.indexed == 0 and dry.dry_run
    assert summary_file.read_text() == summary_before
    assert stored(tmp_path / "qdrant") == before
    assert "would prune" in format_dry_run(dry)

    # without --prune: the changed one is indexed again, the deleted one stays
    second = run_index(index_settings(folder, tmp_path, checkpoint))
    assert (second.listed, second.skipped, second.indexed, second.pruned) == (3, 2, 1, 0)
    after = stored(tmp_path / "qdrant")
    assert str(deleted) in after and after[str(changed)] != before[str(changed)]

    # with --prune: the deleted one goes, nothing else is touched
    third = run_index(index_settings(folder, tmp_path, checkpoint, prune=True))
    assert (third.listed, third.skipped, third.indexed, third.pruned) == (3, 3, 0, 1)
    assert stored(tmp_path / "qdrant") == {k: v for k, v in after.items() if k != str(deleted)}
    assert json.loads(summary_file.read_text())["pruned"] == 1


def test_manifests_csv_jsonl_text_stream_in(
    ray_cluster: Any, clips: Path, checkpoint: Path, tmp_path: Path
) -> None:
    videos = sorted(clips.glob("*.mp4"))
    sizes = [p.stat().st_size for p in videos]
    csv = tmp_path / "inventory.csv"
    rows = [f"{p},etag-{i},{sizes[i]}" for i, p in enumerate(videos[:2])]
    rows.append(f"{videos[2].name},,")  # relative, no etag: stat'ed in the pipeline
    rows.append(str(tmp_path / "missing.mp4") + ",,")  # one failure row, the rest goes on
    csv.write_text("uri,etag,size\n" + "\n".join(rows) + "\n")
    jsonl = tmp_path / "inventory.jsonl"
    jsonl.write_text("".join(json.dumps({"uri": str(p)}) + "\n" for p in videos))
    text = clips / "list.txt"  # relative entries resolve against the manifest's folder
    text.write_text("# one URI per line\n\n" + "\n".join(p.name for p in videos[:3]) + "\n")
    shutil.copy(csv, clips / "inventory.csv")  # relative entries resolve against it

    from_csv = run_index(index_settings(clips / "inventory.csv", tmp_path, checkpoint))
    assert (from_csv.listed, from_csv.indexed, from_csv.failed) == (3, 3, 1)
    assert from_csv.failed_by_stage == {"list": 1}
    assert from_csv.listed_bytes == sum(sizes[:3])
    etags = stored(tmp_path / "qdrant")
    assert etags[str(videos[0])] == "etag-0"  # the manifest's etag, no request made

    for manifest, listed in ((jsonl, 4), (text, 3)):
        dry = run_index(index_settings(manifest, tmp_path, checkpoint, dry_run=True))
        assert (dry.listed, dry.failed) == (listed, 0), manifest
    with pytest.raises(SourceError, match="--prune needs a bucket prefix or a folder"):
        run_index(index_settings(text, tmp_path, checkpoint, prune=True))
    assert main([str(text), "--checkpoint", str(checkpoint), "--prune"]) == 2
