"""The cost model's side of benchmarks/comms_bench.py, inside each rank: calibrate links
on the ranks' own groups, then predict the communication-only cases from the fit.

Alpha comes from small and beta from large ring allreduces (1 KB .. 100 MB, one allreduce
over the group); per_tensor and fused are predicted launched together (gloo's threads
overlapping their latencies), hierarchical as its chunks through the stage pipeline of
its variant (reduce_bcast or 2d, the cost model's names for them).
"""

from __future__ import annotations

import torch
import torch.distributed as dist

# ProcessGroupGloo's worker threads (torch's default; every group here uses it): how many
# launched collectives progress at once.
GLOO_THREADS = 2


def calibrate(args, *, group_name: str, groups) -> dict:
    """Fit the ring formula to ring allreduce times on the world, intra or leader group."""
    from comms.allreduce import RingAllreduce, time_allreduce
    from comms.cost_model import calibrate_ring

    # 1 KB .. 64 MB of fp32, and 100 MB: the fused figures move a whole ResNet-50
    # gradient (97.5 MB), so the bandwidth fit must reach that size.
    numels = [256 * 4**k for k in range(9)] + [25 * 2**20]
    group = {"world": None, "intra": groups.intra if groups else None,
             "leaders": groups.leaders if groups else None}[group_name]
    size = dist.get_world_size(group) if group is not None else dist.get_world_size()
    member = group_name == "world" or group is not None
    # Everyone takes part in the barriers; only members time the group's all_reduce.
    times = time_allreduce(RingAllreduce(group=group) if member else _Idle(), numels=numels,
                           repeats=3)
    link = calibrate_ring(sizes_bytes=[4 * n for n in numels], times_s=times,
                          num_ranks=size) if member and size > 1 else None
    return {"sizes_bytes": [4 * n for n in numels], "times_ms": [t * 1e3 for t in times],
            "num_ranks": size, "alpha_us": link.alpha_s * 1e6 if link else None,
            "beta_gbit_per_s": 8e-9 / link.beta_s_per_byte if link and link.beta_s_per_byte
            else None, "link": link}


class _Idle:
    def launch(self, tensors):
        from comms.allreduce import Handle
        return Handle()


def predictions(*, shapes, plan, topology, variant, world_link, chunk_mb, intra_link=None,
                inter_link=None) -> dict:
    """Predicted ms of each communication-only case. `variant` (reduce_bcast or 2d) is
    both the hierarchical sync's comms.variant and the cost model's algorithm."""
    from comms.cost_model import ClusterShape, launched_together_s, pipeline_s, ring_s
    world = topology.world_size
    tensor_bytes = [4 * torch.Size(s).numel() for s in shapes]
    intra, inter = intra_link or world_link, inter_link or world_link
    cluster = ClusterShape(num_nodes=topology.num_nodes,
                           ranks_per_node=len(topology.nodes[0]), intra=intra, inter=inter)
    ring_link = inter if topology.num_nodes > 1 else intra
    bucket_bytes = [b.nbytes for b in plan.buckets]
    # The hierarchical sync streams every bucket's chunks through one stage pipeline.
    chunk = chunk_mb * 2**20
    chunks = [part for b in bucket_bytes
              for part in [chunk] * int(b // chunk) + ([b % chunk] if b % chunk else [])]
    return {
        # Both cases launch all their all_reduces at once; gloo runs GLOO_THREADS at a time.
        "per_tensor_ms": launched_together_s(sizes_bytes=tensor_bytes, num_ranks=world,
                                             link=ring_link, concurrency=GLOO_THREADS) * 1e3,
        "fused_ms": launched_together_s(sizes_bytes=bucket_bytes, num_ranks=world,
                                        link=ring_link, concurrency=GLOO_THREADS) * 1e3,
        "hierarchical_ms": pipeline_s(variant, chunks=chunks, cluster=cluster) * 1e3,
        "flat_floor_ms": ring_s(nbytes=sum(tensor_bytes), num_ranks=world, link=ring_link) * 1e3,
    }


def calibrate_and_predict(args, *, topology, shapes, plan, variant) -> dict:
    """The result's calibration and predicted sections (every rank calls it)."""
    from comms.allreduce import build_groups

    groups = build_groups(topology) if topology.num_nodes > 1 else None
    cal = {"world": calibrate(args, group_name="world", groups=groups)}
    intra_link = inter_link = None
    if args.emulate_hosts and groups is not None:
        cal["intra"] = calibrate(args, group_name="intra", groups=groups)
        cal["leaders"] = calibrate(args, group_name="leaders", groups=groups)
        intra_link, inter_link = _gathered_links(cal)
    predicted = predictions(shapes=shapes, plan=plan, variant=variant, topology=topology,
                            world_link=cal["world"]["link"], chunk_mb=args.chunk_mb,
                            intra_link=intra_link, inter_link=inter_link)
    return {"calibration": {k: {kk: vv for kk, vv in v.items() if kk != "link"}
                            for k, v in cal.items()},
            "predicted": predicted}


def _gathered_links(cal: dict):
    """Every rank needs the intra (node 0's) and inter (leaders') links: rank 0 is in both
    groups, so broadcast its fit."""
    from comms.cost_model import Link

    values = torch.zeros(4, dtype=torch.float64)
    if dist.get_rank() == 0:
        values[:] = torch.tensor([cal["intra"]["link"].alpha_s, cal["intra"]["link"].beta_s_per_byte,
                                  cal["leaders"]["link"].alpha_s,
                                  cal["leaders"]["link"].beta_s_per_byte], dtype=torch.float64)
    dist.broadcast(values, src=0)
    return (Link(alpha_s=values[0].item(), beta_s_per_byte=values[1].item()),
            Link(alpha_s=values[2].item(), beta_s_per_byte=values[3].item()))


def add_ratios(result: dict) -> None:
    m = result["measured"]
    result["predicted_over_measured"] = {
        k: result["predicted"][k] / m[k] for k in result["predicted"]}
    ratios = {"fused_over_floor": m["fused_ms"] / m["flat_floor_ms"],
              "per_tensor_over_fused": m["per_tensor_ms"] / m["fused_ms"],
              "hierarchical_over_fused": m["hierarchical_ms"] / m["fused_ms"]}
    if "step_ours_ms" in m:
        ratios["step_ours_over_ddp"] = m["step_ours_ms"] / m["step_ddp_ms"]
        ratios["step_hierarchical_over_ddp"] = m["step_hierarchical_ms"] / m["step_ddp_ms"]
    result["ratios"] = ratios
