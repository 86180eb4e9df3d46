"""Run test code against a Ray cluster of its own, in a subprocess.

The test session holds one shared ``ray.init`` cluster (the ``ray_cluster`` fixture). A
test that needs another cluster (two nodes from ``ray.cluster_utils.Cluster``, or a local
one started with a different environment) runs it in a child process. Starting it
overwrites ``/tmp/ray/ray_current_cluster``, the marker through which Ray finds the
session's cluster, so the child puts the marker back when it ends.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]

_WRAPPER = """\
import json, os, sys
_marker = "/tmp/ray/ray_current_cluster"
_saved = open(_marker).read() if os.path.exists(_marker) else None
try:
{body}
    _result = main(json.loads(sys.argv[1]))
    print("RESULT " + json.dumps(_result), flush=True)
finally:
    if _saved is None:
        if os.path.exists(_marker):
            os.remove(_marker)
    else:
        with open(_marker, "w") as _fh:
            _fh.write(_saved)
"""


def run_with_own_cluster(
    body: str, args: dict[str, Any], workdir: Path, timeout_s: float
) -> dict[str, Any]:
    """Run ``body`` (source defining ``main(args) -> dict``) in a child process.

    ``main`` starts and stops its own Ray cluster; its JSON-able return value comes back.
    The child runs in the repository root, so the project's packages import.
    """
    script = workdir / "own_cluster.py"
    script.write_text(_WRAPPER.format(body=textwrap.indent(textwrap.dedent(body), "    ")))
    proc = subprocess.run(
        [sys.executable, str(script), json.dumps(args)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout_s,
    )
    lines = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, proc.stdout[-3000:] + proc.stderr[-5000:]
    result: dict[str, Any] = json.loads(lines[-1][len("RESULT ") :])
    return result
