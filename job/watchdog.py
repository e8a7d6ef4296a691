"""The input-pipeline watchdog: a worker that waits for a batch longer than
`data.stall_timeout_s` fails the run with the cause, instead of waiting forever.

Why: a Ray Data feed whose tasks cannot get a CPU (the training workers' placement groups
hold them all) yields nothing and raises nothing; Ray Train's worker then waits in
`next()` with no message. `watched` runs the feed's iterator in a thread and waits for
each batch with a timeout. On a stall it raises `PipelineStalled`, whose message names
what holds the cluster (total and free resources, the placement groups and what they
reserve) and what waits for it (the pending resource demands, as `ray status` shows them).

Only the time the trainer waits counts: a slow step does not, since the thread fetches the
next batch meanwhile (one batch ahead, on top of the feed's own prefetch).
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterable, Iterator

_END = object()  # the feed is exhausted
# How often the feeding thread rechecks whether the trainer stopped reading (seconds).
_POLL_S = 0.5


class PipelineStalled(RuntimeError):
    """The input pipeline yielded no batch within data.stall_timeout_s."""


def watched(batches: Iterable, *, timeout_s: float, what: str) -> Iterator:
    """Yield `batches`' items; raise PipelineStalled when the next one takes longer than
    `timeout_s` to arrive. `what` names the feed in the message (e.g. "train epoch 3")."""
    items: queue.Queue = queue.Queue(maxsize=1)
    stop = threading.Event()
    thread = threading.Thread(target=_feed, args=(batches, items, stop), daemon=True,
                              name=f"raylars-feed-{what}")
    thread.start()
    try:
        while True:
            try:
                kind, item = items.get(timeout=timeout_s)
            except queue.Empty:
                raise PipelineStalled(stall_message(timeout_s=timeout_s, what=what)) from None
            if kind == "error":
                raise item
            if item is _END:
                return
            yield item
    finally:
        # The trainer stopped early (a step cap, an error) or the feed ended: let the
        # thread close the underlying iterator and exit.
        stop.set()


def _feed(batches: Iterable, items: queue.Queue, stop: threading.Event) -> None:
    iterator = iter(batches)
    try:
        for batch in iterator:
            if not _put(items, ("batch", batch), stop):
                return
        _put(items, ("batch", _END), stop)
    except BaseException as error:  # noqa: BLE001 - re-raised in the trainer's thread
        _put(items, ("error", error), stop)
    finally:
        close = getattr(iterator, "close", None)
        if close is not None and stop.is_set():
            close()


def _put(items: queue.Queue, entry: tuple, stop: threading.Event) -> bool:
    while not stop.is_set():
        try:
            items.put(entry, timeout=_POLL_S)
            return True
        except queue.Full:
            continue
    return False


def stall_message(*, timeout_s: float, what: str) -> str:
    """The error text, short enough (under ~500 characters) that Ray Train's error, which
    keeps only the start and the end of each worker's traceback, shows all of it. The
    details (each placement group, every pending demand) go to the worker's log."""
    facts = cluster_facts()
    print("[raylars] input pipeline stalled; cluster state:\n" + "\n".join(facts["lines"]),
          flush=True)
    return (f"no batch from the input pipeline for {timeout_s:g} s ({what}; "
            f"data.stall_timeout_s). {facts['summary']} Its Ray Data tasks likely wait for "
            "CPUs the training workers hold: use fewer workers (trainer.max_workers, "
            "trainer.cpus_per_worker), more nodes, data.preprocess_cpus, or "
            "data.preprocess_on=workers for in-memory data.")


def cluster_facts() -> dict:
    """What holds the cluster's resources and what waits for them: `summary` (one
    sentence) and `lines` (the details). Best effort: a part Ray cannot tell is reported
    as such, never raised."""
    import ray

    if not ray.is_initialized():
        return {"summary": "(Not connected to Ray: no cluster state.)", "lines": []}
    total = ray.cluster_resources()
    # available_resources() leaves out what is used up: show those as 0.
    free = {name: 0.0 for name in total} | ray.available_resources()
    summary = [f"Cluster {_resources(total)}; free {_resources(free)}"]
    lines = [f"  cluster resources: {_resources(total, every=True)}",
             f"  available now:     {_resources(free, every=True)}"]
    for part in (_placement_groups, _pending_demands):
        try:
            brief, detail = part()
        except Exception as error:  # noqa: BLE001 - a diagnosis must not hide the stall
            text = f"{part.__name__.strip('_').replace('_', ' ')} unavailable ({error})"
            brief, detail = text, [f"  {text}"]
        summary.append(brief)
        lines += detail
    return {"summary": "; ".join(summary) + ".", "lines": lines}


def _resources(resources: dict, *, every: bool = False) -> str:
    """CPU and GPU (every: all but Ray's per-node, memory and bundle entries)."""
    shown = {name: amount for name, amount in sorted(resources.items())
             if name in ("CPU", "GPU") or every and not (
                 name.startswith("node:") or "memory" in name or "_group_" in name)}
    return ", ".join(f"{name} {amount:g}" for name, amount in shown.items()) or "none"


def _placement_groups() -> tuple[str, list[str]]:
    from ray.util import placement_group_table

    lines, held = [], 0.0
    groups = [(group_id, group) for group_id, group in placement_group_table().items()
              if group.get("state") != "REMOVED"]
    for group_id, group in groups:
        bundles = list(group.get("bundles", {}).values())
        cpus = sum(bundle.get("CPU", 0) for bundle in bundles)
        held += cpus if group.get("state") == "CREATED" else 0
        lines.append(f"  placement group {group_id[:12]} ({group.get('name') or 'unnamed'}, "
                     f"{group.get('state')}): {len(bundles)} bundles, {cpus:g} CPU")
    return (f"{len(groups)} placement group(s) reserve CPU {held:g}",
            lines or ["  placement groups: none"])


def _pending_demands() -> tuple[str, list[str]]:
    """The resource demands nobody could schedule (tasks, actors, placement groups), from
    the GCS's autoscaler state, as `ray status` reports them."""
    import ray
    from ray.autoscaler.v2.sdk import get_cluster_status

    status = get_cluster_status(ray.get_runtime_context().gcs_address, timeout=10)
    demands = status.resource_demands
    entries = [f"{bundle.count} x {bundle.bundle}"
               for kind in (demands.ray_task_actor_demand, demands.placement_group_demand)
               for demand in kind for bundle in demand.bundles_by_count]
    brief = "pending demands: " + (", ".join(entries[:3]) if entries else "none")
    if len(entries) > 3:
        brief += f" (+{len(entries) - 3} more)"
    return brief, [f"  pending: {entry}" for entry in entries] or ["  pending demands: none"]
