"""`direct_ingress`: the ingress replica answers HTTP itself, without Serve's proxy hop.

Ray reads RAY_SERVE_ENABLE_DIRECT_INGRESS when the cluster starts, so this runs a fresh
local cluster in a subprocess (this session's shared cluster was started without it) and
puts back the `/tmp/ray/ray_current_cluster` marker the new cluster overwrites.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from serve_fixtures import IndexedVideos

REPO = Path(__file__).resolve().parents[2]

SCRIPT = textwrap.dedent(
    """
    import json, os, sys, urllib.request
    marker = "/tmp/ray/ray_current_cluster"
    saved = open(marker).read() if os.path.exists(marker) else None
    os.environ["RAY_SERVE_ENABLE_DIRECT_INGRESS"] = "1"
    import ray
    from ray import serve
    from serve.cli import start_server, wait_ready
    from serve.settings import ServeSettings

    args = json.loads(sys.argv[1])
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        url = start_server(ServeSettings(**args["settings"], direct_ingress=True))
        proxy = f"http://127.0.0.1:{args['settings']['port']}"
        wait_ready(url, timeout_s=90)
        wait_ready(proxy, timeout_s=90)

        def search(base, query):
            req = urllib.request.Request(
                base + "/search", data=json.dumps({"query": query, "top_k": 5}).encode(),
                headers={"content-type": "application/json"})
            with urllib.request.urlopen(req, timeout=30) as resp:
                return json.loads(resp.read())["results"]

        out = {"url": url, "proxy": proxy,
               "direct": [search(url, q) for q in args["queries"]],
               "via_proxy": [search(proxy, q) for q in args["queries"]]}
        print("RESULT " + json.dumps(out), flush=True)
    finally:
        serve.shutdown()
        ray.shutdown()
        if saved is None:
            if os.path.exists(marker):
                os.remove(marker)
        else:
            with open(marker, "w") as fh:
                fh.write(saved)
    """
)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.integration
@pytest.mark.timeout(240)
def test_direct_ingress_answers_like_the_proxy(
    indexed_videos: IndexedVideos, tmp_path: Path
) -> None:
    qdrant = tmp_path / "qdrant"
    shutil.copytree(indexed_videos.qdrant_path, qdrant)  # an embedded store has one owner
    port = _free_port()
    settings = {
        "checkpoint": str(indexed_videos.checkpoint),
        "collection": indexed_videos.collection,
        "qdrant_path": str(qdrant),
        "port": port,
        "app_name": "direct",
        "min_replicas": 1,
        "max_replicas": 1,
    }
    queries = [caps[0] for caps in list(indexed_videos.captions.values())[:3]]
    script = tmp_path / "direct.py"
    script.write_text(SCRIPT)
    proc = subprocess.run(
        [sys.executable, str(script), json.dumps({"settings": settings, "queries": queries})],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=220,
    )
    lines = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, proc.stdout[-3000:] + proc.stderr[-5000:]
    result = json.loads(lines[-1][len("RESULT ") :])
    # the app's own HTTP server, on the replica's port, not the proxy's
    assert result["url"].startswith("http://127.0.0.1:") and result["url"] != result["proxy"]
    # the same app behind both: identical hits for every query
    assert result["direct"] == result["via_proxy"]
    assert all(len(hits) == 5 for hits in result["direct"])
