"""Learning-rate schedules: exact values at phase boundaries, SODA's WSD run, and refused settings."""

import math

import pytest
import torch

from megatron_soda.training.schedules import LRSchedule, apply_lr

SODA_STEPS = 238_419  # ceil(500e9 / (512 * 4096))


def soda(lr=3e-3):
    return LRSchedule(SODA_STEPS, lr, min_lr=0.0, style="wsd", warmup_fraction=0.1, decay_fraction=0.2)


def test_soda_wsd_phases_are_levanters_floored_lengths():
    schedule = soda()
    assert (schedule.warmup_steps, schedule.decay_steps) == (23_841, 47_683)  # int(0.1 N), int(0.2 N)


def test_soda_wsd_values_at_the_boundaries():
    schedule, lr = soda(), 3e-3
    assert schedule.lr_at(0) == pytest.approx(lr / 23_841, rel=1e-12)  # warmup starts above zero
    assert schedule.lr_at(23_839) == pytest.approx(lr * 23_840 / 23_841, rel=1e-12)
    assert schedule.lr_at(23_840) == lr  # 23,841st update: warmup done, exactly the peak
    assert schedule.lr_at(23_841) == lr
    assert schedule.lr_at(120_000) == lr  # middle of the stable phase
    decay_start = SODA_STEPS - 47_683  # 190,736 updates done when decay begins
    assert schedule.lr_at(decay_start - 1) == lr  # last stable update
    assert schedule.lr_at(decay_start) == pytest.approx(lr * (1 - 1 / 47_683), rel=1e-12)
    assert schedule.lr_at(decay_start + 47_683 // 2) == pytest.approx(lr * (1 - 23_842 / 47_683), rel=1e-12)
    assert schedule.lr_at(SODA_STEPS - 2) == pytest.approx(lr / 47_683, rel=1e-9)
    assert schedule.lr_at(SODA_STEPS - 1) == 0.0  # the last update runs at min_lr
    assert schedule.lr_at(SODA_STEPS + 10) == 0.0


def test_soda_wsd_is_monotone_within_each_phase():
    schedule = soda()
    lrs = [schedule.lr_at(s) for s in range(SODA_STEPS)]
    warmup, stable, decay = lrs[:23_841], lrs[23_841:190_736], lrs[190_736:]
    assert all(a < b for a, b in zip(warmup, warmup[1:]))
    assert set(stable) == {3e-3}
    assert all(a > b for a, b in zip(decay, decay[1:]))


@pytest.mark.parametrize("style", ["cosine", "linear"])
def test_decaying_styles_warm_up_then_reach_min_lr_on_the_last_update(style):
    schedule = LRSchedule(110, 1.0, min_lr=0.1, style=style, warmup_iters=10)
    assert schedule.lr_at(0) == pytest.approx(0.1)
    assert schedule.lr_at(9) == 1.0
    assert schedule.lr_at(109) == 0.1
    halfway = 0.1 + 0.9 * (0.5 * (1 + math.cos(math.pi * 0.5)) if style == "cosine" else 0.5)
    assert schedule.lr_at(59) == pytest.approx(halfway)  # 50 of the 100 decay updates done
    lrs = [schedule.lr_at(s) for s in range(9, 110)]
    assert all(a > b for a, b in zip(lrs, lrs[1:]))


def test_cosine_is_flat_at_both_ends_of_its_decay():
    schedule = LRSchedule(1000, 1.0, style="cosine")
    first_drop, middle_drop = 1.0 - schedule.lr_at(0), schedule.lr_at(499) - schedule.lr_at(500)
    assert first_drop < middle_drop / 100


def test_constant_style_warms_up_then_holds():
    schedule = LRSchedule(100, 2.0, min_lr=0.5, style="constant", warmup_fraction=0.04)
    assert [schedule.lr_at(s) for s in (0, 1, 3, 4, 99, 500)] == [0.5, 1.0, 2.0, 2.0, 2.0, 2.0]


def test_no_warmup_starts_at_the_peak():
    assert LRSchedule(10, 1.0, style="wsd", decay_iters=5).lr_at(0) == 1.0


def test_fractions_are_floored_without_float_error():
    assert LRSchedule(100, 1.0, style="linear", warmup_fraction=0.29).warmup_steps == 29  # 0.29 * 100 < 29 in floats


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(style="wsd", warmup_fraction=0.6, decay_fraction=0.5), "exceed"),
        (dict(style="wsd", warmup_fraction=0.1), "decay phase"),
        (dict(style="wsd", warmup_fraction=1.5, decay_fraction=0.1), "warmup_fraction"),
        (dict(style="wsd", decay_fraction=-0.1), "decay_fraction"),
        (dict(style="wsd", warmup_fraction=0.1, warmup_iters=5, decay_fraction=0.2), "not both"),
        (dict(style="cosine", decay_fraction=0.2), "'wsd' only"),
        (dict(style="linear", warmup_fraction=1.0), "after warmup"),
        (dict(style="step"), "style"),
        (dict(style="wsd", decay_fraction=0.2, min_lr=2.0), "min_lr"),
    ],
)
def test_bad_settings_are_refused_with_the_reason(kwargs, match):
    with pytest.raises(ValueError, match=match):
        LRSchedule(100, 1.0, **kwargs)


def test_negative_step_is_refused():
    with pytest.raises(ValueError, match="step"):
        soda().lr_at(-1)


def test_apply_lr_sets_every_group_and_keeps_the_adamc_peak():
    from megatron_soda.training.optimizer import CautiousAdamW

    groups = [{"params": [torch.zeros(2, requires_grad=True)]}, {"params": [torch.zeros(3, requires_grad=True)]}]
    opt = CautiousAdamW(groups, lr=1e-3, adamc=True)
    apply_lr(opt, 4e-4)
    assert [(g["lr"], g["max_lr"]) for g in opt.param_groups] == [(4e-4, 1e-3), (4e-4, 1e-3)]


def test_decay_end_holds_min_lr_after_it_as_megatron_lr_decay_iters_does():
    cosine = LRSchedule(total_steps=10, lr=1.0, min_lr=0.1, style="cosine", warmup_iters=2, decay_end=6)
    assert cosine.lr_at(1) == 1.0 and cosine.lr_at(5) == pytest.approx(0.1) and cosine.lr_at(9) == pytest.approx(0.1)
    assert 0.1 < cosine.lr_at(3) < 1.0
    wsd = LRSchedule(total_steps=10, lr=1.0, min_lr=0.0, style="wsd", decay_iters=2, decay_end=8)
    assert [round(wsd.lr_at(s), 6) for s in range(10)] == [1.0] * 6 + [0.5, 0.0, 0.0, 0.0]
    with pytest.raises(ValueError, match="decay_end must be in"):
        LRSchedule(total_steps=10, lr=1.0, style="linear", decay_end=11)
