"""`adaclip demo` end to end at reduced size: every stage leaves its output."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from demo.run import DemoSettings, run_demo

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_demo_runs_every_stage_and_reruns(
    ray_cluster: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = DemoSettings(
        workdir=str(tmp_path / "demo"), videos=24, num_epochs=1, queries=2, port=8017
    )
    from ray import serve

    try:
        report = run_demo(settings)
        again = run_demo(settings)
    finally:
        serve.shutdown()  # later tests start Serve with their own HTTP options
    work = tmp_path / "demo"
    out = capsys.readouterr().out
    for number in range(1, 6):
        assert f"[{number}/5]" in out  # progress visible at every stage

    # 1. the synthetic bucket and its splits
    test_split = json.loads((work / "bucket" / "test.json").read_text())
    assert len(list((work / "bucket").glob("*.mp4"))) == 24 and test_split
    # 2. training exported a loadable best-by-validation checkpoint
    from adaclip.checkpoint import load_checkpoint

    assert load_checkpoint(report["checkpoint"]).model_id
    # 3. test-split metrics of both models
    for name in ("untrained", "trained"):
        assert 0.0 <= report["metrics"][name]["R1"] <= report["metrics"][name]["R5"] <= 100.0
    # 4. every test video indexed
    assert report["index"]["indexed"] == len(test_split) and report["index"]["failed"] == 0
    # 5. the queries went through the HTTP API and got ranked results
    assert len(report["queries"]) == 2
    for answer in report["queries"]:
        ids = [hit["video_id"] for hit in answer["results"]]
        assert ids and set(ids) <= set(test_split)
        assert all(hit["best_moment_s"] is not None for hit in answer["results"])
    assert json.loads((work / "demo.json").read_text())["checkpoint"] == report["checkpoint"]

    # a rerun reuses the data, the trained model and the index
    assert again["checkpoint"] == report["checkpoint"]
    assert again["index"]["skipped"] == len(test_split) and again["index"]["indexed"] == 0
    assert "reusing" in out  # the second run's training stage
