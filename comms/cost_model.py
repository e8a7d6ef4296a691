"""The alpha-beta-gamma cost model of allreduce, its calibration, and plan selection.

Time of one allreduce of M bytes over P ranks (the brief, after Thakur et al.):
  ring:          2(P-1) alpha + (2(P-1) beta + (P-1) gamma) M / P   (one allreduce over the
                 whole group: what comms=fused runs)
  tree:          2 ceil(log2 P) alpha + ceil(log2 P) (2 beta + gamma) M   (binomial reduce + bcast)
  reduce_bcast:  tree reduce inside the node, ring among the N leaders, tree bcast inside
  2d:            ring reduce-scatter inside the node, ring allreduce of M/G among the N
                 ranks with the same local index (the node's NIC shared by G such rings),
                 ring allgather inside the node
  chunked reduce_bcast / 2d (the staged algorithms of comms=hierarchical): the three stages
                 as a pipeline over chunks (a flow shop: a chunk enters a stage when it
                 left the previous one and the stage is free)
alpha: seconds per message (latency), beta: seconds per byte (1/bandwidth), gamma: seconds
per byte reduced. Calibration fits alpha and beta (gamma folded into beta) to measured times
over sizes; selection simulates one step (backward producing gradients, segments launched
when ready, transfers one after another) for each algorithm, fusion threshold and segment
split, and keeps the fastest. Everything here is arithmetic: no processes.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import numpy as np

from comms.fusion import MB, plan_buckets

ALGORITHMS = ("ring", "tree", "reduce_bcast", "2d")
# The algorithms in three stages (inside the node, across nodes, inside again): the
# variants of comms=hierarchical (comms.variant), which pipeline over chunks.
STAGED = ("reduce_bcast", "2d")
# Pipeline chunk sizes (MB) the plan tries for the staged algorithms.
CHUNKS_MB = (1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0)


@dataclass(frozen=True)
class Link:
    alpha_s: float  # per message
    beta_s_per_byte: float  # 1 / bandwidth
    gamma_s_per_byte: float = 0.0  # reduction arithmetic

    @classmethod
    def from_bandwidth(cls, *, latency_us: float, gbit_per_s: float, gamma_gb_per_s: float = 0.0):
        gamma = 1.0 / (gamma_gb_per_s * 1e9) if gamma_gb_per_s else 0.0
        return cls(alpha_s=latency_us * 1e-6, beta_s_per_byte=8.0 / (gbit_per_s * 1e9),
                   gamma_s_per_byte=gamma)


@dataclass(frozen=True)
class ClusterShape:
    num_nodes: int
    ranks_per_node: int
    intra: Link  # inside a node (NVLink, shared memory, loopback)
    inter: Link  # between nodes, per node NIC

    @property
    def world_size(self) -> int:
        return self.num_nodes * self.ranks_per_node


def ring_s(*, nbytes: float, num_ranks: int, link: Link) -> float:
    p = num_ranks
    if p <= 1:
        return 0.0
    return 2 * (p - 1) * link.alpha_s + (2 * (p - 1) * link.beta_s_per_byte
                                         + (p - 1) * link.gamma_s_per_byte) * nbytes / p


def launched_together_s(*, sizes_bytes: Sequence[float], num_ranks: int, link: Link,
                        concurrency: int) -> float:
    """Ring allreduces launched at once on a backend that runs `concurrency` of them at a
    time (gloo: its worker threads, 2 by default). Their bytes share the link, so the
    bandwidth terms add up; their 2(P-1) message latencies overlap `concurrency` ways."""
    if concurrency < 1:
        raise ValueError(f"concurrency must be >= 1, got {concurrency}")
    latency = 2 * (num_ranks - 1) * link.alpha_s if num_ranks > 1 else 0.0
    total = sum(ring_s(nbytes=m, num_ranks=num_ranks, link=link) for m in sizes_bytes)
    return total - latency * len(sizes_bytes) * (1 - 1 / concurrency)


def tree_s(*, nbytes: float, num_ranks: int, link: Link) -> float:
    steps = math.ceil(math.log2(num_ranks)) if num_ranks > 1 else 0
    return 2 * steps * link.alpha_s + steps * (2 * link.beta_s_per_byte
                                               + link.gamma_s_per_byte) * nbytes


def _tree_half_s(*, nbytes: float, num_ranks: int, link: Link, reduce: bool) -> float:
    """One tree reduce (with arithmetic) or broadcast (without) inside a node."""
    steps = math.ceil(math.log2(num_ranks)) if num_ranks > 1 else 0
    per_byte = link.beta_s_per_byte + (link.gamma_s_per_byte if reduce else 0.0)
    return steps * (link.alpha_s + per_byte * nbytes)


def allreduce_s(algorithm: str, *, nbytes: float, cluster: ClusterShape,
                chunk_bytes: float | None = None) -> float:
    """Predicted seconds for one allreduce of `nbytes` with `algorithm` on `cluster`. The
    staged algorithms with `chunk_bytes` pipeline their stages over chunks of at most
    that size, as comms.pipeline_chunk_mb does."""
    g, n = cluster.ranks_per_node, cluster.num_nodes
    if algorithm == "ring":
        # A node-ordered ring: every hop waits for the slowest link, and each NIC carries
        # one flow each way.
        slow = cluster.inter if n > 1 else cluster.intra
        return ring_s(nbytes=nbytes, num_ranks=g * n, link=slow)
    if algorithm == "tree":
        return tree_s(nbytes=nbytes, num_ranks=g * n, link=cluster.inter if n > 1 else cluster.intra)
    if algorithm in STAGED:
        if chunk_bytes is None or nbytes <= chunk_bytes:
            return sum(stage_s(algorithm, nbytes=nbytes, cluster=cluster))
        count = math.ceil(nbytes / chunk_bytes)
        return pipeline_s(algorithm, chunks=[nbytes / count] * count, cluster=cluster)
    raise ValueError(f"unknown allreduce algorithm {algorithm!r}; known: {', '.join(ALGORITHMS)}")


def stage_s(algorithm: str, *, nbytes: float, cluster: ClusterShape) -> list[float]:
    """Seconds of each stage of a staged allreduce (reduce_bcast, 2d) of `nbytes`:
    inside the node, across nodes, inside the node again."""
    g, n = cluster.ranks_per_node, cluster.num_nodes
    if algorithm == "reduce_bcast":
        return [_tree_half_s(nbytes=nbytes, num_ranks=g, link=cluster.intra, reduce=True),
                ring_s(nbytes=nbytes, num_ranks=n, link=cluster.inter),
                _tree_half_s(nbytes=nbytes, num_ranks=g, link=cluster.intra, reduce=False)]
    if algorithm == "2d":
        intra = cluster.intra
        scatter = (g - 1) * intra.alpha_s + (g - 1) / g * nbytes * (
            intra.beta_s_per_byte + intra.gamma_s_per_byte)
        gather = (g - 1) * intra.alpha_s + (g - 1) / g * nbytes * intra.beta_s_per_byte
        shared = Link(alpha_s=cluster.inter.alpha_s,
                      beta_s_per_byte=cluster.inter.beta_s_per_byte * g,
                      gamma_s_per_byte=cluster.inter.gamma_s_per_byte)
        return [scatter, ring_s(nbytes=nbytes / g, num_ranks=n, link=shared), gather]
    raise ValueError(f"{algorithm!r} has no stages; staged: {', '.join(STAGED)}")


def pipeline_s(algorithm: str, *, chunks: Sequence[float], cluster: ClusterShape) -> float:
    """End of a stream of chunks (bytes, in launch order) through the stages: a stage
    takes one chunk at a time, and a chunk enters a stage when it has left the previous
    one and the stage has finished the chunk before it."""
    done = [0.0] * len(stage_s(algorithm, nbytes=0.0, cluster=cluster))
    for nbytes in chunks:
        ready = 0.0
        for index, seconds in enumerate(stage_s(algorithm, nbytes=nbytes, cluster=cluster)):
            ready = done[index] = max(ready, done[index]) + seconds
    return done[-1]


# ---- calibration ----------------------------------------------------------------------
def fit_line(*, sizes_bytes: Sequence[float], times_s: Sequence[float]) -> tuple[float, float]:
    """t = c0 + c1 * M, least squares in relative error (sizes span 1 KB .. 100 MB, so
    plain least squares would fit only the largest); both coefficients kept >= 0."""
    sizes, times = np.asarray(sizes_bytes, float), np.asarray(times_s, float)
    weights = 1.0 / times
    design = np.stack([np.ones_like(sizes), sizes], axis=1) * weights[:, None]
    (c0, c1), *_ = np.linalg.lstsq(design, times * weights, rcond=None)
    if c0 < 0:
        c0, c1 = 0.0, float(np.sum(sizes * times * weights**2) / np.sum((sizes * weights) ** 2))
    if c1 < 0:
        c0, c1 = float(np.sum(times * weights**2) / np.sum(weights**2)), 0.0
    return float(c0), float(c1)


def calibrate_ring(*, sizes_bytes: Sequence[float], times_s: Sequence[float],
                   num_ranks: int) -> Link:
    """The Link whose ring formula fits measured ring-allreduce times (one allreduce over
    the whole group) on `num_ranks`."""
    if num_ranks < 2:
        raise ValueError("calibration needs at least 2 ranks")
    c0, c1 = fit_latency_bandwidth(sizes_bytes=sizes_bytes, times_s=times_s)
    p = num_ranks
    return Link(alpha_s=c0 / (2 * (p - 1)), beta_s_per_byte=c1 * p / (2 * (p - 1)))


SMALL_BYTES, LARGE_BYTES = 64 * 1024, 1 << 20


def fit_latency_bandwidth(*, sizes_bytes: Sequence[float], times_s: Sequence[float],
                          ) -> tuple[float, float]:
    """t = c0 + c1 * M measured the Hockney way: c0 from the small messages, c1 from the
    large ones. A single line fitted over 1 KB .. 64 MB bends to the knee between the two
    regimes (a token bucket's burst, TCP windows), which put the fused predictions 15-40%
    low on the emulated link; the step's buckets (MBs) live in the large regime.
    Without both regimes among the sizes, falls back to fit_line."""
    sizes, times = np.asarray(sizes_bytes, float), np.asarray(times_s, float)
    small, large = sizes <= SMALL_BYTES, sizes >= LARGE_BYTES
    if not small.any() or large.sum() < 2:
        return fit_line(sizes_bytes=sizes_bytes, times_s=times_s)
    # Slope first (free intercept), so the small messages' bandwidth share comes off c0.
    slope = float(np.polyfit(sizes[large], times[large], 1)[0])
    c0 = max(0.0, float(np.median(times[small] - max(slope, 0.0) * sizes[small])))
    # Then the slope of the large messages with the intercept held at c0.
    c1 = float(np.sum((times[large] - c0) * sizes[large]) / np.sum(sizes[large] ** 2))
    return c0, max(c1, 0.0)


# ---- step simulation and plan selection -------------------------------------------------
def bucket_ready_s(*, tensor_backward_s: Sequence[float], buckets) -> list[float]:
    """When each bucket's last gradient exists, counted from the start of backward.
    Backward produces gradients last-registered first, so tensor i is ready after the
    backward time of every tensor registered at or after it."""
    ready_of, elapsed = [0.0] * len(tensor_backward_s), 0.0
    for index in reversed(range(len(tensor_backward_s))):
        elapsed += tensor_backward_s[index]
        ready_of[index] = elapsed
    return [max(ready_of[t] for t in bucket.tensors) for bucket in buckets]


def simulate(*, ready_s: Sequence[float], splits: Sequence[int], bucket_bytes: Sequence[int],
             comm_s: Callable[[float], float]) -> float:
    """End of the last transfer: a segment goes out when its last bucket is ready and the
    previous segment's transfer is done (one transfer at a time); each bucket is one
    allreduce, so a segment costs the sum over its buckets."""
    bounds, end = [0, *splits, len(ready_s)], 0.0
    for a, b in zip(bounds, bounds[1:], strict=False):
        start = max(end, ready_s[b - 1])
        end = start + sum(comm_s(bucket_bytes[i]) for i in range(a, b))
    return end


def choose_split(*, ready_s: Sequence[float], bucket_bytes: Sequence[int],
                 comm_s: Callable[[float], float], num_segments: int) -> tuple[list[int], float]:
    """Split points (at most num_segments - 1) minimising the end of communication, by
    dynamic programming over (segments used, buckets covered)."""
    num_buckets = len(ready_s)
    cost = [comm_s(nbytes) for nbytes in bucket_bytes]
    prefix = np.concatenate([[0.0], np.cumsum(cost)])
    # best[b] = (end, splits) covering buckets[:b] with the segments so far.
    best = {0: (0.0, [])}
    answer = (math.inf, [])
    for _ in range(min(num_segments, num_buckets)):
        nxt: dict[int, tuple[float, list[int]]] = {}
        for a, (end, splits) in best.items():
            for b in range(a + 1, num_buckets + 1):
                finish = max(end, ready_s[b - 1]) + prefix[b] - prefix[a]
                if b not in nxt or finish < nxt[b][0]:
                    nxt[b] = (finish, splits + ([a] if a else []))
        best = nxt
        if num_buckets in best and best[num_buckets][0] < answer[0]:
            answer = best[num_buckets]
    return answer[1], answer[0]


@dataclass(frozen=True)
class PlanChoice:
    algorithm: str
    threshold_mb: float
    splits: tuple[int, ...]
    num_buckets: int
    forward_s: float
    backward_s: float
    comm_end_s: float  # from the start of backward
    step_s: float
    comm_alone_s: float  # all buckets back to back, no overlap
    efficiency: float  # compute-only step / predicted step
    chunk_mb: float | None = None  # staged: pipeline chunk (comms.pipeline_chunk_mb)

    def describe(self) -> dict:
        return asdict(self)


def choose_plan(*, tensor_bytes: Sequence[int], tensor_backward_s: Sequence[float],
                forward_s: float, cluster: ClusterShape, thresholds_mb: Sequence[float],
                max_segments: int, algorithms: Sequence[str] = ALGORITHMS,
                chunks_mb: Sequence[float] = CHUNKS_MB) -> list[PlanChoice]:
    """Every (algorithm, threshold, pipeline chunk) with its best split, fastest step
    first. Chunks apply to the staged algorithms only, and only those below the
    threshold (a bucket within one chunk is not pipelined): small chunks overlap the
    stages, but each costs the leaders' ring its 2(N-1) latencies again."""
    backward_s = float(sum(tensor_backward_s))
    choices = []
    for algorithm in algorithms:
        if algorithm == "2d" and cluster.ranks_per_node == 1:
            continue
        for threshold_mb in thresholds_mb:
            chunks = [None]
            if algorithm in STAGED:
                chunks += [c for c in chunks_mb if c < threshold_mb]
            for chunk_mb in chunks:
                choices.append(_plan_choice(
                    algorithm=algorithm, threshold_mb=threshold_mb, chunk_mb=chunk_mb,
                    tensor_bytes=tensor_bytes, tensor_backward_s=tensor_backward_s,
                    forward_s=forward_s, backward_s=backward_s, cluster=cluster,
                    max_segments=max_segments))
    return sorted(choices, key=lambda c: c.step_s)


def _plan_choice(*, algorithm: str, threshold_mb: float, chunk_mb: float | None,
                 tensor_bytes: Sequence[int], tensor_backward_s: Sequence[float],
                 forward_s: float, backward_s: float, cluster: ClusterShape,
                 max_segments: int) -> PlanChoice:
    chunk_bytes = chunk_mb * MB if chunk_mb is not None else None
    comm = _memo(lambda nbytes: allreduce_s(algorithm, nbytes=nbytes, cluster=cluster,
                                            chunk_bytes=chunk_bytes))
    buckets = plan_buckets(numels=list(tensor_bytes), element_sizes=[1] * len(tensor_bytes),
                           dtypes=["x"] * len(tensor_bytes),
                           threshold_bytes=int(threshold_mb * MB))
    sizes = [b.nbytes for b in buckets]
    ready = bucket_ready_s(tensor_backward_s=tensor_backward_s, buckets=buckets)
    splits, end = choose_split(ready_s=ready, bucket_bytes=sizes, comm_s=comm,
                               num_segments=max_segments)
    step = forward_s + max(backward_s, end)
    return PlanChoice(
        algorithm=algorithm, threshold_mb=threshold_mb, splits=tuple(splits),
        num_buckets=len(buckets), forward_s=forward_s, backward_s=backward_s,
        comm_end_s=end, step_s=step, comm_alone_s=sum(comm(s) for s in sizes),
        efficiency=(forward_s + backward_s) / step, chunk_mb=chunk_mb)


def _memo(fn: Callable[[float], float]) -> Callable[[float], float]:
    cache: dict[float, float] = {}

    def cached(nbytes: float) -> float:
        if nbytes not in cache:
            cache[nbytes] = fn(nbytes)
        return cache[nbytes]
    return cached
