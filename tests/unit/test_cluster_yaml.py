"""launch/cluster.yaml is a valid Ray cluster launcher config (Ray's own schema check), and
its GPU nodes get the inter-node network NCCL needs on p4d (EFA + aws-ofi-nccl)."""

from pathlib import Path

import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

CLUSTER_YAML = Path(__file__).resolve().parents[2] / "launch" / "cluster.yaml"
P4D_NETWORK_CARDS = 4


def load():
    return prepare_config(yaml.safe_load(CLUSTER_YAML.read_text()))


def test_cluster_yaml_passes_rays_schema_and_autoscales_gpu_nodes():
    config = load()
    validate_config(config)  # raises on any schema error
    gpu = config["available_node_types"]["gpu_worker"]
    assert gpu["resources"]["GPU"] >= 1 and gpu["min_workers"] < gpu["max_workers"]
    assert config["available_node_types"][config["head_node_type"]]["resources"]["CPU"] == 0


def test_gpu_nodes_have_one_efa_interface_per_network_card_in_a_placement_group():
    node = load()["available_node_types"]["gpu_worker"]["node_config"]
    assert node["InstanceType"] == "p4d.24xlarge" and node["Placement"]["GroupName"]
    interfaces = node["NetworkInterfaces"]
    assert sorted(i["NetworkCardIndex"] for i in interfaces) == list(range(P4D_NETWORK_CARDS))
    assert {i["InterfaceType"] for i in interfaces} == {"efa"}
    # EC2: the primary interface (DeviceIndex 0) on card 0, DeviceIndex 1 on the others.
    assert [i["DeviceIndex"] for i in sorted(interfaces, key=lambda i: i["NetworkCardIndex"])] \
        == [0] + [1] * (P4D_NETWORK_CARDS - 1)
    assert node["ImageId"].startswith("ami-")  # an AMI with EFA + aws-ofi-nccl, not Ray's default


def test_interfaces_follow_rays_aws_rules_and_the_head_shares_their_network():
    # Ray's AWS bootstrap (_configure_subnets_and_groups_from_network_interfaces; it
    # imports boto3, not installed here) refuses subnets or security groups at both the
    # node and the interface level, and wants both on every interface. The head must sit
    # in the same subnet and security group to reach the GPU nodes.
    types = load()["available_node_types"]
    gpu, head = types["gpu_worker"]["node_config"], types["head"]["node_config"]
    assert not {"SubnetId", "SubnetIds", "SecurityGroupIds"} & set(gpu)
    interfaces = gpu["NetworkInterfaces"]
    assert all(i.get("SubnetId") and i.get("Groups") for i in interfaces)
    assert {i["SubnetId"] for i in interfaces} == set(head["SubnetIds"])
    assert {g for i in interfaces for g in i["Groups"]} == set(head["SecurityGroupIds"])


def test_gpu_workers_start_ray_with_the_efa_environment_for_nccl():
    commands = " ".join(load()["worker_start_ray_commands"])
    for setting in ("FI_PROVIDER=efa", "FI_EFA_USE_DEVICE_RDMA=1", "NCCL_SOCKET_IFNAME=",
                    "ofi-nccl/lib", "RAY_AUTH_MODE=token"):
        assert setting in commands, setting
    # The environment is exported before, and so inherited by, `ray start`.
    assert commands.index("FI_PROVIDER=efa") < commands.index("ray start")
