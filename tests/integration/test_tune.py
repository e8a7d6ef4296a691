"""A tiny coarse-to-fine sweep on the real local cluster: both stages, stage 2 centred on
stage 1's best, a diverging (nan) trial recorded without stopping the sweep, resources
released, and a rerun restoring the finished stages; a cross refinement; and a trial
whose node is preempted (checkpoint at the notice, exact resume on the node left)."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tune.config import compose_sweep
from tune.sweep import run_tune_sweep

SWEEP = [
    "trainer.epochs=2", "optim.warmup_epochs=0",
    # Coarse: one LR per two decades over 10..1e5, snapped onto the 2^(1/2) lattice from 10;
    # LARS at lr=81920 diverges to nan.
    "tune.lr_min=10", "tune.lr_max=100000", "tune.coarse_points_per_decade=0.5",
    "tune.warmup_epochs=[0]", "tune.fine_points=3", "tune.fine_shape=grid",
]


def test_two_stage_sweep_survives_a_nan_trial_and_restores(ray_cluster, tmp_path, capsys):
    summary = run_tune_sweep(compose_sweep(SWEEP + [f"run.output_dir={tmp_path}"]))
    coarse, fine = summary["stages"]
    assert (coarse["name"], fine["name"]) == ("coarse", "fine")
    assert [t["lr"] for t in coarse["trials"]] == [10.0, 905.097, 81920.0]
    diverged = next(t for t in coarse["trials"] if t["lr"] == 81920.0)
    assert diverged["error"] is not None and "nan" in diverged["error"].lower()
    assert diverged["val_top1"] is None
    # Stage 2 is the fine grid centred on stage 1's best LR.
    fine_lrs = sorted(t["lr"] for t in fine["trials"])
    assert len(fine_lrs) == 3 and fine["num_failed"] == 0
    assert math.sqrt(fine_lrs[0] * fine_lrs[-1]) == pytest.approx(coarse["best"]["lr"], rel=1e-5)
    assert fine_lrs[1] == coarse["best"]["lr"]
    # The centre was trained in stage 1: reused if it ran both epochs, else continued from
    # its checkpoint; the fine stage counts only the epochs it trained itself.
    centre = next(t for t in fine["trials"] if t["lr"] == coarse["best"]["lr"])
    centre_before = next(t for t in coarse["trials"] if t["lr"] == coarse["best"]["lr"])
    if centre_before["epochs_run"] == 2:
        assert centre.get("reused") and fine["num_reused"] == 1 and fine["num_trials"] == 2
    else:
        assert centre["start_epoch"] == centre_before["epochs_run"] == 1
        assert centre["resumed_from"] == centre_before["checkpoint"]
        assert centre["epochs_run"] == 2 and fine["num_continued"] == 1
    ran = [t for t in fine["trials"] if not t.get("reused")]
    assert fine["trial_epochs"] == sum(t["epochs_run"] - t["start_epoch"] for t in ran)
    assert summary["total_trial_epochs"] == coarse["trial_epochs"] + fine["trial_epochs"]
    assert summary["best"]["val_top1"] == max(coarse["best"]["val_top1"], fine["best"]["val_top1"])
    assert summary["leaked_cpus"] == 0
    on_disk = json.loads((tmp_path / "tune_summary.json").read_text())
    assert {"best", "stages", "total_trial_epochs"} <= on_disk.keys()
    assert {"lr", "warmup_epochs", "val_top1"} <= on_disk["best"].keys()
    assert (tmp_path / "tune.png").stat().st_size > 10_000
    # One line per finished trial (the plan's lines at the start name no LR).
    lines = [line for line in capsys.readouterr().out.splitlines()
             if "[raylars tune]" in line and "lr=" in line]
    assert len(lines) == 6 and sum("FAILED" in line for line in lines) == 1

    # A rerun into the same directory restores both finished stages instead of training.
    again = run_tune_sweep(compose_sweep(SWEEP + [f"run.output_dir={tmp_path}"]))
    assert again["best"] == summary["best"]
    assert again["total_trial_epochs"] == summary["total_trial_epochs"]
    assert Path(again["summary_path"]).exists()



def test_cross_refinement_adds_a_warmup_stage_at_the_best_fine_lr(ray_cluster, tmp_path):
    # One coarse LR (the range is a single point) x 2 warmups keeps it to 4-5 trials.
    # A step checkpoint halfway through the only epoch (16 steps) has no val_top1 yet: it
    # stays with Train, where Tune would fail the trial for its missing metric.
    sweep = ["trainer.epochs=1", "optim.warmup_epochs=0", "tune.lr_min=10", "tune.lr_max=10",
             "tune.warmup_epochs=[0,0.5]", "trainer.checkpoint_every_steps=8",
             "tune.fine_points=3", "tune.fine_shape=cross", f"run.output_dir={tmp_path}"]
    summary = run_tune_sweep(compose_sweep(sweep))
    coarse, fine, warmup = summary["stages"]
    assert [s["name"] for s in summary["stages"]] == ["coarse", "fine", "fine_warmup"]
    best = coarse["best"]
    # The fine LRs at the coarse best's warmup only; then both warmups at fine's best LR.
    assert {t["warmup_epochs"] for t in fine["trials"]} == {best["warmup_epochs"]}
    assert len(fine["trials"]) == 3 and fine["num_reused"] >= 1
    assert sorted(t["warmup_epochs"] for t in warmup["trials"]) == [0.0, 0.5]
    assert {t["lr"] for t in warmup["trials"]} == {fine["best"]["lr"]}
    # Every (lr, warmup) point was trained once over the whole sweep: one epoch each
    # (a diverging one fails within it and counts none).
    points = {(t["lr"], t["warmup_epochs"]): t for s in summary["stages"] for t in s["trials"]}
    assert summary["total_trial_epochs"] == sum(t["error"] is None for t in points.values())
    assert summary["leaked_cpus"] == 0


def preempt(address: str, node, *, deadline_s: int) -> None:
    """Drain `node` as a spot reclaim does: a preemption reason and a deadline."""
    subprocess.run([sys.executable, "-m", "ray.scripts.scripts", "drain-node",
                    f"--address={address}", f"--node-id={node.node_id}",
                    "--reason=DRAIN_NODE_REASON_PREEMPTION", "--reason-message=spot reclaim",
                    f"--deadline-remaining-seconds={deadline_s}"],
                   check=True, env=os.environ, timeout=60)


def last_step(run_dir: Path) -> int:
    """The last global step rank 0 finished (trainers/worker.py's progress file)."""
    try:
        return json.loads((run_dir / "train" / "progress.json").read_text())["global_step"]
    except (OSError, ValueError):
        return 0


def test_a_preempted_trial_checkpoints_at_the_notice_and_resumes_on_the_node_left(
        ray_cluster, labelled_nodes, tmp_path):
    """A real drain (preemption reason, deadline) of the node a trial's workers run on.
    The workers see the notice (polled every 2 steps) and write a step checkpoint at once,
    mid-epoch; Ray Train restarts them from it on the node that is left, with
    max_failures=0 (only the preemption budget may restart them). Through Ray Data tasks,
    every sample of every epoch is trained once across the restart. The trial finishes
    and records the preemption; its driver and Train controller ran on the head node,
    which the drain could not take."""
    import ray
    from ray.util.state import list_actors
    from test_elastic import Background, wait_for
    from test_resume import STEPS, assert_each_sample_once

    from job.restarts import read_restarts
    from tune.runner import HEAD_NODE_RESOURCE

    add_node, _ = labelled_nodes
    spot = add_node("127.0.0.8", resource="raylars_spot")
    # One trial, long enough that the deadline comes before its end on a quiet machine (a
    # run that ends first just finishes: nothing to restart); the deadline leaves a loaded
    # machine time for the notice (Ray Train polls drains every 5 s) and the checkpoint.
    epochs = 30
    sweep = compose_sweep([
        "tune.name=exhaustive", "tune.lr_min=10", "tune.lr_max=10", "tune.warmup_epochs=[0]",
        "optim.warmup_epochs=0", f"trainer.epochs={epochs}", "trainer.preemption_check_steps=2",
        "trainer.max_failures=0", f"trainer.num_checkpoints_to_keep={epochs + 2}",
        "data.record_sample_ids=true", "data.preprocess_on=tasks",
        "+trainer.worker_resources.raylars_spot=1", f"run.output_dir={tmp_path}"])
    sweeping = Background(lambda: run_tune_sweep(sweep))
    wait_for(lambda: sweeping.done or any(last_step(trial) >= 4
                                          for trial in tmp_path.glob("exhaustive/*")),
             timeout_s=300,
             what="the trial's first training steps")
    # Pinned to the head, not put there by chance (unpinned, Ray put it there here too):
    # the running trial's placement group asks for the head's own resource.
    job = ray.get_runtime_context().get_job_id()
    alive = list_actors(filters=[("state", "=", "ALIVE"), ("job_id", "=", job)], detail=True,
                        limit=10_000)
    # Tune's actor for a function trainable (class name `wrap_function.<locals>.ImplicitFunc`).
    (driver,) = [actor for actor in alive if actor.class_name.endswith("ImplicitFunc")]
    bundle = ray.util.placement_group_table()[driver.placement_group_id]["bundles"][0]
    assert bundle.get(HEAD_NODE_RESOURCE, 0) > 0, bundle
    add_node("127.0.0.9", resource="raylars_spot")  # where the restarted group can go
    preempt(ray_cluster, spot, deadline_s=25)
    summary = sweeping.join()
    (trial,) = summary["stages"][0]["trials"]
    assert trial["error"] is None and trial["epochs_run"] == epochs, trial
    assert trial["restarts"] == ["preemption"], trial
    # The notice's checkpoint: a step checkpoint (none is configured otherwise), at a step
    # the preemption check ran on. The restart took the latest registered one.
    (trial_dir,) = [path for path in tmp_path.glob("exhaustive/*") if path.is_dir()]
    notice = sorted((trial_dir / "train").glob("checkpoint_step_*"))
    assert len(notice) == 1 and int(notice[0].name.split("_")[-1]) % 2 == 0, notice
    restart = read_restarts(trial_dir / "train")["restart_events"][1]
    assert restart["reason"] == "preemption" and restart["resume_step"] >= int(
        notice[0].name.split("_")[-1]), restart
    assert last_step(trial_dir) == epochs * STEPS
    assert_each_sample_once([trial_dir], epochs=epochs)
    # The trial's Train controller sits where its driver (the trial function) ran.
    head = next(node["NodeID"] for node in ray.nodes()
                if HEAD_NODE_RESOURCE in node["Resources"])
    controllers = list_actors(
        filters=[("class_name", "=", "TrainController"), ("job_id", "=", job)],
        limit=10_000, raise_on_missing_output=False)
    assert controllers and {actor.node_id for actor in controllers} == {head}, controllers
