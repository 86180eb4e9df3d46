"""Epoch-by-epoch progress on the driver's console while Ray Train runs.

Workers log into their own processes; the driver watches the run folder instead and
prints one line per epoch checkpoint as it lands (loss, validation R@1, speed), whatever
the Ray logging settings are.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

from train.loop import HISTORY_FILE


def epoch_line(entry: dict[str, Any], num_epochs: int) -> str:
    """One progress line for an epoch's history entry."""
    val = entry.get("val") or {}
    parts = [f"epoch {int(entry['epoch']) + 1}/{num_epochs}", f"loss {entry['loss']:.3f}"]
    if "t2v_R1" in val:
        parts.append(f"val R@1 {val['t2v_R1']:.1f} R@5 {val['t2v_R5']:.1f}")
    if "samples_per_second" in entry:
        parts.append(f"{entry['samples_per_second']:.0f} samples/s")
    return "    " + ", ".join(parts)


class EpochProgress(threading.Thread):
    """Polls ``run_dir/checkpoint_*/history.json`` and prints each new epoch once."""

    def __init__(self, run_dir: Path, num_epochs: int, interval_s: float = 2.0) -> None:
        super().__init__(daemon=True, name="epoch-progress")
        self.run_dir = run_dir
        self.num_epochs = num_epochs
        self.interval_s = interval_s
        self.printed: set[int] = set()
        self._stop_event = threading.Event()

    def poll(self) -> list[str]:
        """New epoch lines since the last poll (also used by tests)."""
        lines = []
        for path in sorted(self.run_dir.glob(f"checkpoint_*/{HISTORY_FILE}")):
            try:
                history = json.loads(path.read_text())
            except (OSError, json.JSONDecodeError):
                continue  # being written: next poll
            for entry in history:
                epoch = int(entry["epoch"])
                if epoch not in self.printed:
                    self.printed.add(epoch)
                    lines.append(epoch_line(entry, self.num_epochs))
        return lines

    def run(self) -> None:
        while not self._stop_event.wait(self.interval_s):
            for line in self.poll():
                print(line, flush=True)

    def stop(self) -> None:
        self._stop_event.set()
        self.join(timeout=5)
        for line in self.poll():
            print(line, flush=True)
