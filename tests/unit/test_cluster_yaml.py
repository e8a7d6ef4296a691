"""launch/cluster.yaml is a valid Ray cluster launcher config (Ray's own schema check)."""

from pathlib import Path

import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

CLUSTER_YAML = Path(__file__).resolve().parents[2] / "launch" / "cluster.yaml"


def test_cluster_yaml_passes_rays_schema_and_autoscales_gpu_nodes():
    config = prepare_config(yaml.safe_load(CLUSTER_YAML.read_text()))
    validate_config(config)  # raises on any schema error
    gpu = config["available_node_types"]["gpu_worker"]
    assert gpu["resources"]["GPU"] >= 1 and gpu["min_workers"] < gpu["max_workers"]
    assert config["available_node_types"][config["head_node_type"]]["resources"]["CPU"] == 0
