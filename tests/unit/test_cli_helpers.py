"""Pure parts of the entry points' behaviour: the sweep's plan and time-left estimate,
the one-line error for an unknown group option, and the filter of Ray's forwarded lines."""

import pytest

from job.cli import check_group_options
from job.session import _drop_noise
from tune.progress import StageEstimate, SweepClock, asha_epochs


def test_asha_epochs_counts_the_trials_reaching_each_rung():
    # 9 trials, rungs at 1 and 3 epochs, then 5: 9 x 1 + 3 x 2 + 1 x 2.
    assert asha_epochs(num_trials=9, max_epochs=5, grace_epochs=1, reduction_factor=3) == 17
    # No rung below max_epochs: every trial runs to the end.
    assert asha_epochs(num_trials=4, max_epochs=2, grace_epochs=2, reduction_factor=3) == 8


def test_clock_says_trials_done_and_time_left(monkeypatch):
    now = [100.0]
    monkeypatch.setattr("tune.progress.time.monotonic", lambda: now[0])
    clock = SweepClock([StageEstimate("coarse", 4, 8.0, bound=False),
                        StageEstimate("fine", 3, 15.0, bound=True)], epochs_per_trial=5,
                       started=100.0)
    assert clock.status() == "0/7 trials"
    now[0] += 40.0
    clock.trial_done(stage="coarse", epochs=4)  # 10 s per trial-epoch
    assert clock.status() == "1/7 trials, ~3 min left"  # (8 - 4 + 15) x 10 s = 190 s
    clock.settle("fine", num_trials=1, trial_epochs=5.0)
    assert clock.status() == "1/5 trials, ~2 min left"  # (4 + 5) x 10 s = 90 s
    assert clock.plan_lines()[0].startswith("[raylars tune] plan: up to 5 trials of at most 5")


def test_unknown_group_option_is_one_line_naming_the_known(capsys, tmp_path):
    (tmp_path / "model").mkdir()
    for name in ("resnet50", "small_resnet"):
        (tmp_path / "model" / f"{name}.yaml").write_text("")
    check_group_options(["model=resnet50", "model.name=x", "experiment=null", "+a=b"],
                        conf_dir=tmp_path)
    with pytest.raises(SystemExit) as stop:
        check_group_options(["model=vgg"], conf_dir=tmp_path)
    assert stop.value.code == 2
    assert capsys.readouterr().err == ("config error: model=vgg: unknown option; known: "
                                       "resnet50, small_resnet\n")


def test_ray_records_and_their_tracebacks_are_dropped_ours_kept():
    lines = [
        "[mutex.cc : 452] RAW: Lock blocking 0x55883f0915a0   @ 0x7fa77cc2b1a2 0x7fa77bcfb23c",
        "[2026-12-02 15:45:29,457 E 4677 4708] core_worker.cc:2465: Actor with class name: "
        "'PreemptionWatcher' and ID: '7600' has constructor arguments in the object store "
        "and max_restarts > 0. If the arguments ...",
        "[2026-12-02 15:45:29,457 W 4677 4708] gcs_client.cc:210: slow",
        "Failed to send resource request for train-9b4e. If this only happens transiently",
        "Traceback (most recent call last):",
        '  File "x.py", line 58, in send_resource_request',
        "ray.exceptions.GetTimeoutError: Get timed out: some object(s) not ready.",
        "Progress bars disabled. To enable, set `ray.data.DataContext.get_current()"
        ".enable_progress_bars = True`.",
        "[raylars] epoch 1/5",
        "[2026-12-02 15:45:29,457 E 4677 4708] raylet_client.cc:1: a real error",
        "Traceback (most recent call last):",
        "ValueError: ours",
    ]
    assert _drop_noise(lines) == lines[8:]
