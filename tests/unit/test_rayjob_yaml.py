"""launch/kuberay/rayjob.yaml: a KubeRay RayJob with what a raylars run needs: the
training entrypoint (its overrides valid keys), a head and an autoscaled GPU worker group,
shared storage under run.output_dir and data.path on every Ray pod, and the Ray auth
token from a Secret everywhere a Ray process or client runs."""

import shlex
from pathlib import Path

import pytest
import yaml

from job.config import compose_unchecked

RAYJOB_YAML = Path(__file__).resolve().parents[2] / "launch" / "kuberay" / "rayjob.yaml"


@pytest.fixture(scope="module")
def job():
    return yaml.safe_load(RAYJOB_YAML.read_text())


def pods(job):
    """(name, pod spec) of the head, every worker group and the submitter."""
    cluster = job["spec"]["rayClusterSpec"]
    yield "head", cluster["headGroupSpec"]["template"]["spec"]
    for group in cluster["workerGroupSpecs"]:
        yield group["groupName"], group["template"]["spec"]
    yield "submitter", job["spec"]["submitterPodTemplate"]["spec"]


def overrides(job) -> dict[str, str]:
    words = shlex.split(job["spec"]["entrypoint"])
    assert words[:2] == ["python", "launch/run.py"]
    return dict(word.split("=", 1) for word in words[2:])


def test_it_is_a_rayjob_that_tears_its_cluster_down(job):
    assert (job["apiVersion"], job["kind"]) == ("ray.io/v1", "RayJob")
    assert job["spec"]["shutdownAfterJobFinishes"] is True
    assert job["spec"]["rayClusterSpec"]["rayVersion"] == "2.60.0"


def test_the_entrypoint_trains_on_the_cluster_gpus_with_valid_keys(job):
    keys = overrides(job)
    assert keys["ray.address"] == "auto" and keys["trainer.use_gpu"] == "true"
    config = compose_unchecked([f"{k}={v}" for k, v in keys.items()])  # unknown keys raise
    assert config.trainer.use_gpu is True and config.trainer.max_failures == -1


def test_a_gpu_worker_group_with_gpu_limits_and_an_autoscaling_range(job):
    cluster = job["spec"]["rayClusterSpec"]
    assert cluster["enableInTreeAutoscaling"] is True
    assert cluster["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"
    (group,) = cluster["workerGroupSpecs"]
    assert group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
    container = group["template"]["spec"]["containers"][0]
    gpus = int(container["resources"]["limits"]["nvidia.com/gpu"])
    assert gpus >= 1
    # The elastic range fits the group: max workers = max pods x GPUs each.
    assert int(overrides(job)["trainer.max_workers"]) <= group["maxReplicas"] * gpus
    mounts = {m["mountPath"] for m in container["volumeMounts"]}
    assert "/dev/shm" in mounts  # NCCL's shared memory, not the container's 64 MiB


def test_run_output_and_data_live_on_one_shared_claim_on_every_ray_pod(job):
    keys = overrides(job)
    for name, spec in pods(job):
        if name == "submitter":
            continue
        claims = {v["name"]: v["persistentVolumeClaim"]["claimName"]
                  for v in spec["volumes"] if "persistentVolumeClaim" in v}
        mounts = {m["mountPath"]: m["name"] for m in spec["containers"][0]["volumeMounts"]}
        for key in ("run.output_dir", "data.path"):
            path = keys[key]
            mount = next((m for m in mounts if path.startswith(m.rstrip("/") + "/")), None)
            assert mount is not None and mounts[mount] in claims, (name, key, path)
            assert claims[mounts[mount]] == "raylars-shared"
        assert spec["containers"][0]["workingDir"] == "/app/raylars"  # where launch/ is


def test_every_ray_process_and_the_submitter_get_the_token_from_a_secret(job):
    for name, spec in pods(job):
        env = {e["name"]: e for e in spec["containers"][0]["env"]}
        assert env["RAY_AUTH_MODE"]["value"] == "token", name
        secret = env["RAY_AUTH_TOKEN"]["valueFrom"]["secretKeyRef"]
        assert (secret["name"], secret["key"]) == ("raylars-ray-auth", "token"), name
        assert "value" not in env["RAY_AUTH_TOKEN"], name  # never inline
