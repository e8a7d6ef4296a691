"""The restart log (job/restarts.py) fed the controller's own state objects, in the
order Ray Train's controller goes through them; no processes."""

import json
from types import SimpleNamespace

from ray.train.v2._internal.execution.controller.state import (
    InitializingState,
    ResizingState,
    RestartingState,
    RunningState,
    SchedulingState,
)
from ray.train.v2._internal.execution.scaling_policy import ResizeDecision
from ray.train.v2.api.exceptions import WorkerGroupError

from job.restarts import RESTARTS_FILE, RestartLog, read_restarts


def start_group(log, previous, *, workers):
    scheduling = SchedulingState(ResizeDecision(num_workers=workers, resources_per_worker={}))
    log.after_controller_state_update(previous, scheduling)
    running = RunningState()
    log.after_controller_state_update(scheduling, running)
    return running


def report_checkpoint(log, *, step, name, **metrics):
    report = SimpleNamespace(checkpoint=SimpleNamespace(path=f"/runs/train/{name}"))
    log.after_report(report, [{"global_step": step, **metrics}])


def test_start_failure_and_resize_are_logged_with_the_resume_step(tmp_path, capsys):
    log = RestartLog(run_dir=str(tmp_path))
    log.after_controller_start(None)
    running = start_group(log, InitializingState(), workers=2)
    report_checkpoint(log, step=22, name="checkpoint_epoch_0001", epoch=1)
    error = WorkerGroupError("worker died", {1: RuntimeError("node lost\ndetails")})
    restarting = RestartingState(error)
    log.after_controller_state_update(running, restarting)
    running = start_group(log, restarting, workers=2)
    report_checkpoint(log, step=44, name="checkpoint_epoch_0002", epoch=2)
    resizing = ResizingState(ResizeDecision(num_workers=4, resources_per_worker={}))
    log.after_controller_state_update(running, resizing)
    start_group(log, resizing, workers=4)

    summary = read_restarts(tmp_path)
    assert summary["restarts"] == 2 and summary["world_size_history"] == [2, 2, 4]
    events = summary["restart_events"]
    assert [e["reason"] for e in events] == ["start", "failure", "resize"]
    assert events[1]["detail"] == "rank 1: RuntimeError: node lost"
    assert (events[1]["resume_step"], events[2]["resume_step"]) == (22, 44)
    lines = [line for line in capsys.readouterr().out.splitlines() if "restart (" in line]
    assert lines == [
        "[raylars] restart (failure: rank 1: RuntimeError: node lost): 2 workers, resuming "
        "from global step 22 (checkpoint_epoch_0001: epoch 2, sample 0)",
        "[raylars] restart (resize: the cluster's free resources changed): 4 workers, "
        "resuming from global step 44 (checkpoint_epoch_0002: epoch 3, sample 0)"]
    assert (events[2]["resume_epoch"], events[2]["resume_sample_position"]) == (3, 0)


def test_a_preemption_restart_from_a_mid_epoch_checkpoint_is_logged_as_such(tmp_path):
    from ray.train.v2.api.exceptions import PreemptionError
    from ray.train.v2.api.preemption import PreemptionInfo

    log = RestartLog(run_dir=str(tmp_path))
    log.after_controller_start(None)
    running = start_group(log, InitializingState(), workers=2)
    # A mid-epoch checkpoint (trainers/worker.py): epoch index 1 (the second), step 6.
    report_checkpoint(log, step=28, name="checkpoint_step_00000028", epoch=1,
                      resume_epoch=1, epoch_step=6, sample_position=384)
    info = PreemptionInfo(deadline_ms=None, preempted_node_to_ranks={"n1": [0, 1]})
    restarting = RestartingState(PreemptionError(info, drain_timed_out=True))
    log.after_controller_state_update(running, restarting)
    start_group(log, restarting, workers=2)
    event = read_restarts(tmp_path)["restart_events"][1]
    assert event["reason"] == "preemption"
    assert (event["resume_step"], event["resume_epoch"], event["resume_sample_position"]) == (
        28, 2, 384)


def test_a_new_fit_starts_a_fresh_log_and_no_log_reads_as_no_restarts(tmp_path):
    assert read_restarts(tmp_path) == {"restarts": 0, "world_size_history": [],
                                       "restart_events": []}
    (tmp_path / RESTARTS_FILE).write_text(json.dumps({"reason": "failure", "num_workers": 2}))
    RestartLog(run_dir=str(tmp_path)).after_controller_start(None)
    assert read_restarts(tmp_path)["restarts"] == 0
