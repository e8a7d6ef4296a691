"""How many training workers the cluster holds beside its input pipeline.

Why: each Ray Train worker reserves `trainer.cpus_per_worker` CPUs in a placement group
for the whole run, and Ray Train's elastic policy sizes the group by the resources it can
reserve, up to max_workers. On two 2-CPU nodes, min_workers=2 max_workers=4 gets 4
workers that hold all 4 CPUs, and the Ray Data tasks that feed them never get one: the run
hangs at its first batch. So when the data goes through Ray Data tasks, the group's upper
bound is cut to what leaves the pipeline its CPUs (data.preprocess_cpus, else 1: the
least that lets it make progress), counted from the cluster's CPUs when the run starts.
The lower bound is the user's: a group that cannot leave room even at min_workers is
started as asked, with a warning, and the watchdog (job/watchdog.py) reports it if the
pipeline then yields nothing.

A cluster that grows later (an autoscaler, nodes joining) is not seen by the cut; pin
data.preprocess_cpus and size max_workers for the cluster you expect, or set
data.preprocess_on=workers for an in-memory set.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class GroupSize:
    min_workers: int
    max_workers: int
    # Why the bounds differ from the config's (empty: unchanged); printed at start.
    note: str = ""

    @property
    def scaling(self) -> int | tuple[int, int]:
        """Ray's ScalingConfig.num_workers: a count, or (min, max) when they differ."""
        if self.min_workers == self.max_workers:
            return self.min_workers
        return self.min_workers, self.max_workers


def pipeline_cpus(preprocess_cpus: int | None) -> int:
    """CPUs the Ray Data tasks need free: data.preprocess_cpus, else one."""
    return preprocess_cpus or 1


def group_size(*, min_workers: int, max_workers: int, cpus_per_worker: float,
               cluster_cpus: float, needs_cpus: int) -> GroupSize:
    """The worker bounds that leave `needs_cpus` of the cluster's `cluster_cpus` to the
    input pipeline (needs_cpus 0: workers feed themselves, nothing to leave)."""
    if needs_cpus <= 0:
        return GroupSize(min_workers, max_workers)
    # A small epsilon: fractional cpus_per_worker (0.5 x 6 = 3.0000000000000004).
    fits = math.floor((cluster_cpus - needs_cpus) / cpus_per_worker + 1e-9)
    if fits >= max_workers:
        return GroupSize(min_workers, max_workers)
    held = f"{cpus_per_worker:g} CPU per worker (trainer.cpus_per_worker)"
    if fits >= min_workers:
        return GroupSize(min_workers, fits, note=(
            f"at most {fits} training workers, not {max_workers}: the cluster's "
            f"{cluster_cpus:g} CPUs at {held} leave {needs_cpus} for the input pipeline's "
            "Ray Data tasks"))
    return GroupSize(min_workers, min_workers, note=(
        f"warning: {min_workers} training workers at {held} leave fewer than the "
        f"{needs_cpus} CPU(s) the input pipeline's Ray Data tasks need of the cluster's "
        f"{cluster_cpus:g}; unless the cluster grows, they will wait for a CPU and the run "
        "fails after data.stall_timeout_s. Use fewer workers, more nodes, or "
        "data.preprocess_on=workers (in-memory sets)"))
