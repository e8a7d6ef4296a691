"""Warmup + polynomial decay, checked against the formula written out plainly."""

import pytest

from trainers.schedule import WarmupPolySchedule, lr_at


def reference(step, base, end, warmup, total, power):
    if step < warmup:
        return base * (step + 1) / warmup
    frac = (step - warmup) / (total - warmup)
    return end + (base - end) * (1.0 - frac) ** power


@pytest.mark.parametrize("warmup,total,end", [(10, 100, 0.0), (0, 50, 0.01), (5, 6, 0.1)])
def test_lr_matches_reference_every_step(warmup, total, end):
    for step in range(total):
        got = lr_at(step=step, base_lr=2.0, end_lr=end, warmup_steps=warmup, total_steps=total)
        assert got == pytest.approx(reference(step, 2.0, end, warmup, total, 2.0), rel=1e-12)


def test_warmup_is_linear_and_reaches_base():
    lrs = [lr_at(step=s, base_lr=1.0, end_lr=0.0, warmup_steps=4, total_steps=10) for s in range(4)]
    assert lrs == pytest.approx([0.25, 0.5, 0.75, 1.0])


def test_decay_is_power_two_and_ends_at_end_lr():
    kwargs = dict(base_lr=1.0, end_lr=0.1, warmup_steps=0, total_steps=10)
    # Halfway through the decay: end + (base - end) * 0.5 ** 2.
    assert lr_at(step=5, **kwargs) == pytest.approx(0.1 + 0.9 * 0.25)
    assert lr_at(step=10, **kwargs) == pytest.approx(0.1)
    assert lr_at(step=50, **kwargs) == pytest.approx(0.1)  # past the end: clamped


def test_from_epochs_counts_steps():
    schedule = WarmupPolySchedule.from_epochs(base_lr=1.0, end_lr=0.0, warmup_epochs=1.5,
                                              epochs=4, steps_per_epoch=10, power=2.0)
    assert (schedule.warmup_steps, schedule.total_steps) == (15, 40)
    assert schedule(14) == pytest.approx(1.0)


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="warmup_steps"):
        lr_at(step=0, base_lr=1.0, end_lr=0.0, warmup_steps=11, total_steps=10)
    with pytest.raises(ValueError, match="step"):
        lr_at(step=-1, base_lr=1.0, end_lr=0.0, warmup_steps=0, total_steps=10)
