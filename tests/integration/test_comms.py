"""comms=hierarchical on the two-node `ray.cluster_utils.Cluster`: the intra-node groups
come from the Ray node ids, with no `comms.ranks_per_node` given."""

import math

import pytest

from job.config import compose
from job.trainer import run_training

pytestmark = pytest.mark.integration


def test_hierarchical_discovers_one_group_per_ray_node(ray_cluster, tmp_path):
    summary = run_training(compose([
        "comms=hierarchical", "trainer.num_workers=4", "trainer.global_batch_size=64",
        "trainer.epochs=1", "optim.warmup_epochs=0", f"run.output_dir={tmp_path}"]))
    assert summary["world_size"] == 4 and math.isfinite(summary["train_loss"])
    comms = summary["comms"]
    assert comms["name"] == "hierarchical" and comms["world_size"] == 4
    nodes = comms["topology"]["nodes"]
    # 4 workers over two 3-CPU nodes land 3 + 1 or 2 + 2: two groups either way.
    assert len(nodes) == 2
    assert sorted(rank for node in nodes for rank in node) == [0, 1, 2, 3]
    assert comms["groups"]["leaders"] == [node[0] for node in nodes]
    assert comms["plan"]["num_buckets"] >= 1
