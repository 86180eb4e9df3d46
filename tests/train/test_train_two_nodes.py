"""A 2-worker training run on a two-node Ray cluster started on this machine spans both nodes.

The test session already holds a shared ``ray.init`` cluster (the ``ray_cluster``
fixture), so the two-node cluster (``ray.cluster_utils.Cluster``: a head with no CPU and
two nodes of 1 CPU each) runs in a subprocess (``tests.fresh_ray``). A worker asks for
0.6 CPU, so exactly one fits on each node. Every worker's Ray node id is all-gathered
once by the training loop and reported per epoch (``node_ids``, ``num_nodes``).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from adaclip.synth import generate_dataset
from tests.fresh_ray import run_with_own_cluster

pytestmark = pytest.mark.integration

TWO_NODE_SCRIPT = """
def main(args):
    import ray

    from tests.fresh_ray import start_cluster
    from train.run import run_training
    from train.settings import TrainSettings, parse_with_config

    cluster, nodes = start_cluster([{"num_cpus": 1}, {"num_cpus": 1}])
    try:
        settings = parse_with_config(TrainSettings, args["flags"], "adaclip train")
        result = run_training(settings)
        return {
            "head": cluster.head_node.node_id,
            "nodes": [n.node_id for n in nodes],
            "history": result.history,
            "num_nodes": result.num_nodes,
            "best_checkpoint": result.best_checkpoint,
        }
    finally:
        ray.shutdown()
        cluster.shutdown()
"""


@pytest.mark.timeout(150)
def test_two_worker_run_spans_both_nodes(tmp_path: Path) -> None:
    root = tmp_path / "synth"
    generate_dataset(root, 12, seed=2, frames_per_video=8, size=32, splits=(0.67, 0.33, 0.0))
    flags = [
        "--videos-root", str(root), "--dataset", "synthetic", "--arch", "tiny",
        "--num-candidates", "4", "--top-k", "2", "--frame-size", "32",
        "--policy-resolution", "32", "--num-epochs", "1", "--batch-size", "4",
        "--num-workers", "2", "--cpus-per-worker", "0.6", "--decode-cpus", "0.2",
        "--storage-path", str(tmp_path / "storage"), "--name", "two-nodes",
        "--output", str(tmp_path / "out"),
    ]  # fmt: skip
    result = run_with_own_cluster(TWO_NODE_SCRIPT, {"flags": flags}, tmp_path, timeout_s=140)

    # training finished: one epoch, validated, exported
    assert [r["epoch"] for r in result["history"]] == [0]
    record = result["history"][0]
    assert record["world_size"] == 2 and "t2v_R1" in record["val"]
    assert Path(result["best_checkpoint"], "model.safetensors").is_file()
    # the two workers ran on the two CPU nodes, one each (the head has no CPU)
    assert len(record["node_ids"]) == 2
    assert set(record["node_ids"]) == set(result["nodes"]), (record, result["nodes"])
    assert record["num_nodes"] == result["num_nodes"] == 2
