"""Unit tests for trainers.lars against a plain float64 reference of the LARS rule."""

from __future__ import annotations

import copy
import io

import pytest
import torch
from torch import nn

from trainers.lars import LARS, lars_param_groups

# The optimizer computes in fp32, the reference in float64. A handful of steps of
# elementwise fp32 ops accumulate a few ulps (~1e-7 relative each), so rtol=1e-5 leaves
# ample room while a wrong trust ratio or weight-decay term (relative changes >> 1e-3
# with the hyper-parameters below) still fails. atol covers entries that pass near 0.
RTOL, ATOL = 1e-5, 1e-7


def _reference_step(params, grads, bufs, groups, variant="exact"):
    """One LARS step in float64, one tensor at a time; mutates params and bufs.

    params/grads/bufs: lists (per group) of lists of float64 tensors (grad None = skip).
    `variant` injects a known bug, to show the comparison can fail.
    """
    for group, ws, gs, vs in zip(groups, params, grads, bufs, strict=True):
        lr, mom, wd = group["lr"], group["momentum"], group["weight_decay"]
        tc, eps = group["trust_coefficient"], group["eps"]
        for i, (w, g) in enumerate(zip(ws, gs, strict=True)):
            if g is None:
                continue
            if group["lars_exclude"]:
                update = lr * g
            else:
                wn, gn = w.norm().item(), g.norm().item()
                den_wd = 0.0 if variant == "no_wd_in_denominator" else wd
                trust = 1.0 if wn == 0 or gn == 0 else tc * wn / (gn + den_wd * wn + eps)
                if variant == "no_trust":
                    trust = 1.0
                upd_wd = 0.0 if variant == "no_wd_in_update" else wd
                update = lr * trust * (g + upd_wd * w)
            vs[i] = mom * vs[i] + update
            ws[i] = w - vs[i]


class _SmallNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.bn = nn.BatchNorm2d(4)
        self.fc = nn.Linear(16, 5)
        self.head = nn.Linear(5, 2, bias=False)


def _resolved_groups(opt):
    return [{k: v for k, v in g.items() if k != "params"} for g in opt.param_groups]


def _run_and_compare(model, opt, steps, seed=0, grad_scale=1.0, variant="exact"):
    """Drive `opt` with random grads for `steps` steps; check against the reference."""
    gen = torch.Generator().manual_seed(seed)
    groups = _resolved_groups(opt)
    ref_w = [[p.detach().double().clone() for p in g["params"]] for g in opt.param_groups]
    ref_v = [[torch.zeros_like(w) for w in ws] for ws in ref_w]
    for _ in range(steps):
        ref_g = []
        for g in opt.param_groups:
            for p in g["params"]:
                p.grad = grad_scale * torch.randn(p.shape, generator=gen).to(p.dtype)
            ref_g.append([p.grad.double() for p in g["params"]])
        opt.step()
        _reference_step(ref_w, ref_g, ref_v, groups, variant)
    for g, ws in zip(opt.param_groups, ref_w, strict=True):
        for p, w in zip(g["params"], ws, strict=True):
            torch.testing.assert_close(p.detach().double(), w, rtol=RTOL, atol=ATOL)
            buf = opt.state[p]["momentum_buffer"]
            assert buf.dtype == torch.float32


@pytest.mark.parametrize("weight_decay,eps", [(0.0, 0.0), (1e-2, 0.0), (5e-2, 1e-3)])
def test_matches_reference_with_param_groups(weight_decay, eps):
    torch.manual_seed(1)
    model = _SmallNet()
    groups = lars_param_groups(model, weight_decay=weight_decay)
    assert [g["lars_exclude"] for g in groups] == [False, True]
    # A large trust coefficient makes the trust ratio far from 1, so a wrong ratio fails.
    opt = LARS(groups, lr=0.5, momentum=0.9, trust_coefficient=0.2, eps=eps)
    _run_and_compare(model, opt, steps=5)


def test_matches_reference_all_lars_group():
    torch.manual_seed(2)
    model = _SmallNet()
    opt = LARS(model.parameters(), lr=0.3, momentum=0.8, weight_decay=0.1, eps=1e-4,
               trust_coefficient=0.05)
    _run_and_compare(model, opt, steps=5, seed=3)


@pytest.mark.parametrize("variant", ["no_trust", "no_wd_in_denominator", "no_wd_in_update"])
def test_comparison_detects_wrong_rules(variant):
    # The reference comparison must reject a reference with a known bug, i.e. the
    # tolerances are tight enough to catch a wrong trust ratio or weight-decay term.
    torch.manual_seed(1)
    model = _SmallNet()
    opt = LARS(lars_param_groups(model, weight_decay=5e-2), lr=0.5, trust_coefficient=0.2)
    with pytest.raises(AssertionError):
        _run_and_compare(model, opt, steps=5, variant=variant)


def test_zero_norm_weight_and_zero_grad_use_unit_trust():
    w_zero = nn.Parameter(torch.zeros(3, 4))
    w_nograd = nn.Parameter(torch.randn(3, 4))
    w_normal = nn.Parameter(torch.randn(3, 4))
    # tc / wd = 5: the ratio formula would give 5 (not 1) for a zero gradient.
    opt = LARS([w_zero, w_nograd, w_normal], lr=0.1, momentum=0.9, weight_decay=0.01,
               trust_coefficient=0.05)
    g = torch.randn(3, 4)
    w_zero.grad, w_nograd.grad, w_normal.grad = g.clone(), torch.zeros(3, 4), g.clone()
    before = w_nograd.detach().clone()
    opt.step()
    # trust = 1 and w = 0: plain lr * g step, with no decay contribution.
    torch.testing.assert_close(w_zero.detach(), -0.1 * g, rtol=RTOL, atol=ATOL)
    # trust = 1 and g = 0: only the decay term, lr * wd * w.
    torch.testing.assert_close(w_nograd.detach(), before * (1 - 0.1 * 0.01), rtol=RTOL,
                               atol=ATOL)
    assert torch.isfinite(w_normal).all()


def test_param_with_none_grad_is_untouched():
    a, b = nn.Parameter(torch.randn(4, 3)), nn.Parameter(torch.randn(4, 3))
    opt = LARS([a, b], lr=0.1, weight_decay=0.1)
    before = b.detach().clone()
    a.grad = torch.randn(4, 3)
    opt.step()
    assert torch.equal(b.detach(), before)
    assert b not in opt.state or not opt.state[b]


def test_closure_is_called_and_returned():
    w = nn.Parameter(torch.randn(3))
    opt = LARS([w], lr=0.1)

    def closure():
        opt.zero_grad()
        loss = (w * w).sum()
        loss.backward()
        return loss

    loss = opt.step(closure)
    assert loss is not None and w.grad is not None


def test_state_dict_round_trip():
    torch.manual_seed(5)
    model = _SmallNet()
    opt = LARS(lars_param_groups(model, weight_decay=1e-2), lr=0.2, trust_coefficient=0.1)
    gen = torch.Generator().manual_seed(6)

    def random_step(m, o, grads):
        for p, g in zip(m.parameters(), grads, strict=True):
            p.grad = g.clone()
        o.step()

    def draw():
        return [torch.randn(p.shape, generator=gen) for p in model.parameters()]

    for _ in range(3):
        random_step(model, opt, draw())
    blob = io.BytesIO()
    torch.save(opt.state_dict(), blob)
    blob.seek(0)
    loaded = torch.load(blob)
    assert [g["lars_exclude"] for g in loaded["param_groups"]] == [False, True]

    twin = copy.deepcopy(model)
    # Fresh optimizer with different hyper-parameters: loading must restore them.
    twin_opt = LARS(lars_param_groups(twin, weight_decay=0.0), lr=1.0)
    twin_opt.load_state_dict(loaded)
    assert [g["lars_exclude"] for g in twin_opt.param_groups] == [False, True]
    for _ in range(2):
        grads = draw()
        random_step(model, opt, grads)
        random_step(twin, twin_opt, grads)
    for p, q in zip(model.parameters(), twin.parameters(), strict=True):
        assert torch.equal(p, q)


def test_lars_param_groups_assignment():
    model = _SmallNet()
    model.fc.bias.requires_grad_(False)
    groups = lars_param_groups(model, weight_decay=5e-5)
    by_name = {g["name"]: g for g in groups}
    assert by_name["decay"]["lars_exclude"] is False
    assert by_name["decay"]["weight_decay"] == 5e-5
    assert by_name["no_decay"]["lars_exclude"] is True
    assert by_name["no_decay"]["weight_decay"] == 0.0
    assert all(p.ndim > 1 for p in by_name["decay"]["params"])
    assert all(p.ndim <= 1 for p in by_name["no_decay"]["params"])
    ids = {id(p) for g in groups for p in g["params"]}
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    assert ids == trainable  # frozen fc.bias left out, nothing duplicated
    assert sum(len(g["params"]) for g in groups) == len(trainable)

    ablation = lars_param_groups(model, weight_decay=5e-5, exclude_bn_bias=False)
    assert len(ablation) == 1 and ablation[0]["lars_exclude"] is False
    assert ablation[0]["weight_decay"] == 5e-5
    assert {id(p) for p in ablation[0]["params"]} == trainable


def test_lars_param_groups_omits_empty_group():
    groups = lars_param_groups(nn.Linear(3, 2, bias=False), weight_decay=0.1)
    assert [g["name"] for g in groups] == ["decay"]


@pytest.mark.parametrize(
    "kwargs,name",
    [
        (dict(lr=0.0), "lr"),
        (dict(lr=-1.0), "lr"),
        (dict(lr=0.1, momentum=1.0), "momentum"),
        (dict(lr=0.1, momentum=-0.1), "momentum"),
        (dict(lr=0.1, weight_decay=-1e-4), "weight_decay"),
        (dict(lr=0.1, trust_coefficient=0.0), "trust_coefficient"),
        (dict(lr=0.1, eps=-1e-8), "eps"),
    ],
)
def test_constructor_rejects_bad_arguments(kwargs, name):
    with pytest.raises(ValueError, match=rf"\b{name}\b"):
        LARS([nn.Parameter(torch.randn(2))], **kwargs)


def test_group_lr_zero_allowed_and_freezes_plain_step():
    w = nn.Parameter(torch.randn(3, 3))
    opt = LARS([{"params": [w], "lr": 0.0}], lr=0.1)
    before = w.detach().clone()
    w.grad = torch.randn(3, 3)
    opt.step()
    assert torch.equal(w.detach(), before)


def test_fp16_param_uses_fp32_math():
    torch.manual_seed(7)
    w16 = nn.Parameter(torch.randn(8, 8).half())
    b16 = nn.Parameter(torch.randn(8).half())
    opt = LARS([{"params": [w16]}, {"params": [b16], "lars_exclude": True}], lr=0.5,
               weight_decay=0.05, trust_coefficient=0.1)
    groups = _resolved_groups(opt)
    ref_w = [[w16.detach().double()], [b16.detach().double()]]
    ref_v = [[torch.zeros(8, 8, dtype=torch.float64)], [torch.zeros(8, dtype=torch.float64)]]
    for step in range(3):
        gen = torch.Generator().manual_seed(step)
        w16.grad = torch.randn(8, 8, generator=gen).half()
        b16.grad = torch.randn(8, generator=gen).half()
        opt.step()
        # Reference: float64 math from the stored fp16 weights, then cast to fp16.
        _reference_step(ref_w, [[w16.grad.double()], [b16.grad.double()]], ref_v, groups)
        assert w16.dtype == torch.float16
        assert opt.state[w16]["momentum_buffer"].dtype == torch.float32
        # Within one fp16 ulp (2**-10 relative) of the cast float64 result.
        torch.testing.assert_close(w16.detach(), ref_w[0][0].half(), rtol=1e-3, atol=1e-4)
        torch.testing.assert_close(b16.detach(), ref_w[1][0].half(), rtol=1e-3, atol=1e-4)
        # The fp32 buffers carry no fp16 rounding, so they match at fp32 tolerance.
        torch.testing.assert_close(opt.state[w16]["momentum_buffer"].double(), ref_v[0][0],
                                   rtol=RTOL, atol=ATOL)
        # Restart the reference from the actual fp16 weights so a rare one-ulp rounding
        # difference does not carry over into later steps.
        ref_w = [[w16.detach().double()], [b16.detach().double()]]


def test_fp16_buffers_survive_state_dict_round_trip_in_fp32():
    w = nn.Parameter(torch.randn(4, 4).half())
    opt = LARS([w], lr=0.1, trust_coefficient=0.1)
    w.grad = torch.randn(4, 4).half()
    opt.step()
    twin = nn.Parameter(w.detach().clone())
    twin_opt = LARS([twin], lr=0.1)
    twin_opt.load_state_dict(opt.state_dict())
    buf, twin_buf = opt.state[w]["momentum_buffer"], twin_opt.state[twin]["momentum_buffer"]
    assert twin_buf.dtype == torch.float32
    assert torch.equal(buf, twin_buf) and buf.data_ptr() != twin_buf.data_ptr()
