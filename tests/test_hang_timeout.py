"""The suite's pytest-timeout settings end a test hung in native code with a stack trace.

A test blocked in ``ray.get`` (or any native wait) never returns to Python, so SIGALRM's
handler (pytest-timeout's ``signal`` method) never runs and the run stalls; the ``thread``
method of pyproject.toml must fire anyway. A deadlocked pthread mutex stands in for the
hang (a Ray-free second of it, with the timeout lowered to one second).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"
HUNG_TEST = """
import ctypes


def test_deadlocked():
    libc = ctypes.CDLL(None)
    mutex = ctypes.create_string_buffer(64)  # zeroed: PTHREAD_MUTEX_INITIALIZER (glibc)
    libc.pthread_mutex_lock(mutex)
    libc.pthread_mutex_lock(mutex)  # relocked by its owner: never returns
"""


def test_a_test_hung_in_native_code_fails_with_its_stack(tmp_path: Path) -> None:
    (tmp_path / "test_hung.py").write_text(HUNG_TEST)
    cmd = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-c", str(PYPROJECT)]
    cmd += ["--rootdir", str(tmp_path), "-o", "timeout=1", str(tmp_path / "test_hung.py")]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert done.returncode != 0
    assert "Timeout" in done.stdout and "Stack of MainThread" in done.stdout, done.stdout
    assert 'test_hung.py", line 9, in test_deadlocked' in done.stdout, done.stdout
