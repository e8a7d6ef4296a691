"""One real Ray cluster for the whole integration session (starting one costs ~10 s).

It is a `ray.cluster_utils.Cluster`: a head node with no CPUs (the driver and Train's
controller need none) and two worker nodes on distinct loopback IPs, so Ray sees two
nodes, as tests of node-aware comms and elastic scaling need. Each worker node has 3
logical CPUs: two for training workers and one for Ray Data tasks beside them.
"""

import os
import socket
from pathlib import Path

# Ray rewrites a 127.0.0.1 cluster address to this machine's outward IP before
# connecting, where the loopback-bound head does not listen; this switch (named for
# macOS/Windows) keeps every address on loopback. Ray reads it when first imported, so it
# is set here, before anything imports ray; subprocess drivers inherit it.
os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"

import pytest  # noqa: E402

HERE = Path(__file__).resolve().parent
WORKER_NODE_IPS = ("127.0.0.2", "127.0.0.3")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def pytest_collection_modifyitems(config, items):
    """Every test under tests/integration/ is `integration` (deselect with -m "not integration").

    (`pytestmark` is read from test modules only, not from a conftest.) This hook sees
    the items of the whole session, not only those of this folder, hence the path test.
    """
    for item in items:
        if item.path.is_relative_to(HERE) and item.get_closest_marker("integration") is None:
            item.add_marker(pytest.mark.integration)


# The project's modules are imported in the fixtures, not up here: a conftest that fails
# to import stops the whole session, the fast tier included.


@pytest.fixture(scope="session")
def local_cluster():
    import ray
    from ray.cluster_utils import Cluster

    from job.config import compose
    from job.session import start_ray

    # The dashboard serves the state API that Train V2's placement-group cleaner polls;
    # without it, groups of stopped Tune trials leak.
    # Its port is picked free: another Ray on this machine may hold the default 8265.
    cluster = Cluster(initialize_head=True,
                      head_node_args={"num_cpus": 0, "node_ip_address": "127.0.0.1",
                                      "include_dashboard": True, "dashboard_port": _free_port()})
    nodes = [cluster.add_node(num_cpus=3, node_ip_address=ip) for ip in WORKER_NODE_IPS]
    cluster.wait_for_nodes()
    start_ray(compose([f"ray.address={cluster.address}"]))
    yield cluster, nodes
    ray.shutdown()
    cluster.shutdown()


@pytest.fixture
def labelled_nodes(local_cluster):
    """Adds nodes to the session cluster, each with 2 CPUs and 2 units of a custom
    resource that only the calling test's workers ask for, so its run goes there and no
    other run does. `add(ip, resource)`, `remove(node)` (graceful: the node's raylet tells
    the cluster it leaves, as a drained or preempted cloud node does); the rest are
    removed at the end."""
    cluster, _ = local_cluster
    added = []

    def add(ip: str, resource: str):
        node = cluster.add_node(num_cpus=2, resources={resource: 2}, node_ip_address=ip)
        cluster.wait_for_nodes()
        added.append(node)
        return node

    def remove(node):
        cluster.remove_node(node, allow_graceful=True)
        added.remove(node)

    yield add, remove
    for node in list(added):
        cluster.remove_node(node)


@pytest.fixture(scope="session")
def ray_cluster(local_cluster):
    """The address other drivers (e.g. `launch/run.py ray.address=...`) join."""
    return local_cluster[0].address


@pytest.fixture(scope="session")
def digits_runs(ray_cluster, tmp_path_factory):
    """Runs shared by several tests: two identical 3-epoch runs (same seed)."""
    from job.config import compose
    from job.trainer import run_training

    base = ["trainer.epochs=3", "optim.warmup_epochs=1"]
    runs = {}
    for name in ("first", "second"):
        out = tmp_path_factory.mktemp(name)
        runs[name] = run_training(compose(base + [f"run.output_dir={out}"]))
    runs["overrides"] = base
    return runs
