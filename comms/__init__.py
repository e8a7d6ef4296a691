"""Gradient communication: the `GradSync` objects the per-rank trainer talks to.

`comms=ddp` is torch DistributedDataParallel (comms/ddp.py); `comms=fused` and
`comms=hierarchical` are our fused, segmented, overlapped allreduce (comms/sync.py). Build
one with `comms.registry.build_grad_sync`; every sync implements `comms.protocol.GradSync`.
Every collective comms issues goes through `comms.collectives.Collectives` (device checks,
recording for tests).
"""
