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
sys.path.insert(0, {repo!r})  # for tests.fresh_ray.start_cluster
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


def start_cluster(
    node_args: list[dict[str, Any]], dashboard: bool = False
) -> tuple[Any, list[Any]]:
    """In the child: a multi-node cluster on this machine, connected to; (cluster, nodes).

    The head has no CPU, so work lands only on the nodes described by ``node_args``
    (``Cluster.add_node`` keyword arguments; 100 MiB object store each unless given).
    The caller shuts down Ray and the cluster.
    """
    import ray
    from ray.cluster_utils import Cluster

    mb = 1 << 20
    head: dict[str, Any] = {"num_cpus": 0, "object_store_memory": 100 * mb}
    head |= (
        {"include_dashboard": True, "dashboard_port": None}
        if dashboard
        else {"include_dashboard": False}
    )
    cluster = Cluster(initialize_head=True, head_node_args=head)
    nodes = [cluster.add_node(**{"object_store_memory": 100 * mb, **a}) for a in node_args]
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, log_to_driver=False)
    return cluster, nodes


def run_with_own_cluster(
    body: str, args: dict[str, Any], workdir: Path, timeout_s: float
) -> dict[str, Any]:
    """Run ``body`` (source defining ``main(args) -> dict``) in a child process.

    ``main`` starts and stops its own Ray cluster; its JSON-able return value comes back.
    The child runs in the repository root, so the project's packages import.
    """
    script = workdir / "own_cluster.py"
    code = textwrap.indent(textwrap.dedent(body), "    ")
    script.write_text(_WRAPPER.format(repo=str(REPO), body=code))
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
