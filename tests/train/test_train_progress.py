from __future__ import annotations

import json
from pathlib import Path

from train.progress import EpochProgress


def test_progress_prints_each_epoch_once(tmp_path: Path) -> None:
    progress = EpochProgress(tmp_path, num_epochs=3)
    assert progress.poll() == []
    history = [
        {
            "epoch": 0,
            "loss": 2.5,
            "samples_per_second": 40.0,
            "val": {"t2v_R1": 10.0, "t2v_R5": 50.0},
        }
    ]
    (tmp_path / "checkpoint_0").mkdir()
    (tmp_path / "checkpoint_0" / "history.json").write_text(json.dumps(history))
    assert progress.poll() == ["    epoch 1/3, loss 2.500, val R@1 10.0 R@5 50.0, 40 samples/s"]
    history.append({"epoch": 1, "loss": 2.0, "val": {}})
    (tmp_path / "checkpoint_1").mkdir()
    (tmp_path / "checkpoint_1" / "history.json").write_text(json.dumps(history))
    (tmp_path / "checkpoint_2").mkdir()
    (tmp_path / "checkpoint_2" / "history.json").write_text("{half written")
    assert progress.poll() == ["    epoch 2/3, loss 2.000"]
    assert progress.poll() == []
