"""`direct_ingress`: the ingress replica answers HTTP itself, without Serve's proxy hop.

Ray reads RAY_SERVE_ENABLE_DIRECT_INGRESS when the cluster starts, so this runs a fresh
local cluster in a subprocess (`tests.fresh_ray`): this session's shared cluster was
started without it.
"""

from __future__ import annotations

import shutil
import socket
from pathlib import Path

import pytest
from serve_fixtures import IndexedVideos

from tests.fresh_ray import run_with_own_cluster

# a Ray cluster of its own for an experimental Ray switch (~60 s): make test-slow
pytestmark = [pytest.mark.integration, pytest.mark.slow]

SCRIPT = """
def main(args):
    os.environ["RAY_SERVE_ENABLE_DIRECT_INGRESS"] = "1"
    import urllib.request
    import ray
    from ray import serve
    from serve.cli import start_server, wait_ready
    from serve.settings import ServeSettings

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

        return {"url": url, "proxy": proxy,
                "direct": [search(url, q) for q in args["queries"]],
                "via_proxy": [search(proxy, q) for q in args["queries"]]}
    finally:
        serve.shutdown()
        ray.shutdown()
"""


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
    args = {"settings": settings, "queries": queries}
    result = run_with_own_cluster(SCRIPT, args, tmp_path, timeout_s=220)
    # the app's own HTTP server, on the replica's port, not the proxy's
    assert result["url"].startswith("http://127.0.0.1:") and result["url"] != result["proxy"]
    # the same app behind both: identical hits for every query
    assert result["direct"] == result["via_proxy"]
    assert all(len(hits) == 5 for hits in result["direct"])
