"""LARS: layer-wise adaptive rate scaling, as a multi-tensor torch optimizer.

Reference: Y. You, I. Gitman, B. Ginsburg, "Large Batch Training of Convolutional
Networks", 2017, arXiv:1708.03888.

This module owns the LARS update rule (:class:`LARS`) and the rule deciding which
parameters are exempt from it (:func:`lars_param_groups`). Per tensor ``w`` with
gradient ``g`` in a group that is not excluded, computed in fp32::

    trust = tc * ||w|| / (||g|| + wd * ||w|| + eps)   (1 if ||w|| == 0 or ||g|| == 0)
    v     = momentum * v + lr * trust * (g + wd * w)
    w     = w - v

In a group with ``lars_exclude=True`` there is no weight decay and no trust ratio:
``v = momentum * v + lr * g; w = w - v``. The learning rate sits inside the momentum
buffer, as in the paper.

fp16 loss scaling: LARS follows torch.amp.GradScaler's contract for optimizers that skip a
step on the device (``_step_supports_amp_scaling``, as torch's fused SGD and Adam do).
GradScaler then sets ``found_inf`` (and ``grad_scale`` when ``unscale_`` was not called)
on the optimizer instead of reading found_inf with ``.item()``, a host sync every step, and
the update is skipped on the device where found_inf is set.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from itertools import chain
from typing import Any

import torch

__all__ = ["LARS", "lars_param_groups"]

_BUF = "momentum_buffer"


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    # fp16/bf16 are upcast to fp32; fp64 stays fp64 rather than losing precision.
    return torch.promote_types(dtype, torch.float32)


def _check_hparams(where: dict[str, Any], *, lr_strict: bool) -> None:
    lr, momentum = where["lr"], where["momentum"]
    # The constructor needs a real rate; a schedule may later set a group's lr to 0.
    if not (lr > 0 if lr_strict else lr >= 0):
        raise ValueError(f"Invalid lr: {lr!r} (must be {'> 0' if lr_strict else '>= 0'})")
    if not 0.0 <= momentum < 1.0:
        raise ValueError(f"Invalid momentum: {momentum!r} (must be in [0, 1))")
    if not where["weight_decay"] >= 0:
        raise ValueError(f"Invalid weight_decay: {where['weight_decay']!r} (must be >= 0)")
    if not where["trust_coefficient"] > 0:
        raise ValueError(
            f"Invalid trust_coefficient: {where['trust_coefficient']!r} (must be > 0)"
        )
    if not where["eps"] >= 0:
        raise ValueError(f"Invalid eps: {where['eps']!r} (must be >= 0)")


class LARS(torch.optim.Optimizer):
    """LARS with heavy-ball momentum; see the module docstring for the exact rule.

    Param groups may set ``lars_exclude=True`` (plain momentum SGD, no weight decay)
    and override any hyper-parameter. Momentum buffers are kept in fp32 (or fp64).

    ``upcast=False`` does the update (norms, trust ratio, momentum buffer) in each
    parameter's own dtype: LARS applied directly to fp16 parameters, the failure mode
    of the brief that `precision=fp16_pure` reproduces. Not for real training.
    """

    def __init__(
        self,
        params: Iterable[torch.Tensor] | Iterable[dict[str, Any]],
        lr: float,
        momentum: float = 0.9,
        weight_decay: float = 0.0,
        trust_coefficient: float = 0.001,
        eps: float = 0.0,
        upcast: bool = True,
    ) -> None:
        self.upcast = upcast
        defaults = dict(
            lr=lr,
            momentum=momentum,
            weight_decay=weight_decay,
            trust_coefficient=trust_coefficient,
            eps=eps,
            lars_exclude=False,
        )
        _check_hparams(defaults, lr_strict=True)
        super().__init__(params, defaults)
        self._step_supports_amp_scaling = True

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        super().add_param_group(param_group)
        _check_hparams(self.param_groups[-1], lr_strict=False)

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        # Set by GradScaler.step for the duration of this call (see the module docstring).
        found_inf = getattr(self, "found_inf", None)
        grad_scale = getattr(self, "grad_scale", None)
        for group in self.param_groups:
            for device, (params, w32, g32, bufs) in self._gather(group).items():
                if grad_scale is not None:  # still scaled: unscale_ was not called
                    g32 = torch._foreach_div(g32, grad_scale.to(device))
                if found_inf is not None:
                    _skippable_update(group, w32, g32, bufs, found_inf=found_inf.to(device))
                elif group["lars_exclude"]:
                    _plain_update(group, w32, g32, bufs)
                else:
                    _lars_update(group, w32, g32, bufs)
                _write_back(params, w32)
        return loss

    def _gather(self, group: dict[str, Any]) -> dict[torch.device, tuple[list, ...]]:
        """Per device: (params, compute-dtype params, compute-dtype grads, buffers)."""
        by_device: dict[torch.device, tuple[list, ...]] = {}
        for p in group["params"]:
            grad = p.grad
            if grad is None:
                continue
            if grad.is_sparse:
                raise RuntimeError("LARS does not support sparse gradients")
            dtype = self._dtype(p)
            state = self.state[p]
            if _BUF not in state:
                state[_BUF] = torch.zeros_like(
                    p, dtype=dtype, memory_format=torch.preserve_format
                )
            lists = by_device.setdefault(p.device, ([], [], [], []))
            lists[0].append(p)
            lists[1].append(p if p.dtype == dtype else p.to(dtype))
            lists[2].append(grad if grad.dtype == dtype else grad.to(dtype))
            lists[3].append(state[_BUF])
        return by_device

    def _dtype(self, p: torch.Tensor) -> torch.dtype:
        return _compute_dtype(p.dtype) if self.upcast else p.dtype

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        # The base class casts state tensors to the param dtype, which would round the
        # fp32 buffers of fp16 params; re-place the saved ones, cloned so a loaded
        # optimizer never aliases the live buffers of the one that was saved.
        saved = {k: s.get(_BUF) for k, s in state_dict["state"].items()}
        saved_ids = chain.from_iterable(g["params"] for g in state_dict["param_groups"])
        super().load_state_dict(state_dict)
        params = chain.from_iterable(g["params"] for g in self.param_groups)
        for pid, p in zip(saved_ids, params, strict=True):
            buf = saved.get(pid)
            if isinstance(buf, torch.Tensor):
                self.state[p][_BUF] = buf.to(
                    device=p.device, dtype=self._dtype(p), copy=True
                )


def _trust_scale(group: dict[str, Any], w: list, g: list) -> torch.Tensor:
    """lr * trust ratio per tensor, stacked (on the device: no host sync)."""
    wd = group["weight_decay"]
    w_norm = torch.stack(torch._foreach_norm(w))
    g_norm = torch.stack(torch._foreach_norm(g))
    # One stacked where() for all tensors: no .item(), so no host sync on GPU. The
    # discarded branch may hold inf/nan for zero norms; where() never propagates it.
    ratio = group["trust_coefficient"] * w_norm / (g_norm + wd * w_norm + group["eps"])
    trust = torch.where((w_norm > 0) & (g_norm > 0), ratio, 1.0)
    return trust * group["lr"]


def _lars_update(group: dict[str, Any], w: list, g: list, v: list) -> None:
    wd = group["weight_decay"]
    scale = _trust_scale(group, w, g)
    torch._foreach_mul_(v, group["momentum"])
    # Two in-place addcmuls instead of materialising g + wd * w: a fresh
    # parameter-sized temporary each step costs more (allocation, page faults on CPU)
    # than an extra read of w.
    torch._foreach_addcmul_(v, g, scale.unbind(0))
    if wd != 0:
        torch._foreach_addcmul_(v, w, (scale * wd).unbind(0))
    torch._foreach_sub_(w, v)


def _plain_update(group: dict[str, Any], w: list, g: list, v: list) -> None:
    torch._foreach_mul_(v, group["momentum"])
    torch._foreach_add_(v, g, alpha=group["lr"])
    torch._foreach_sub_(w, v)


def _skippable_update(group: dict[str, Any], w: list, g: list, v: list, *,
                      found_inf: torch.Tensor) -> None:
    """The same update, skipped on the device where `found_inf` is set: the final
    `v = m * v + u; w -= v` runs in torch's fused SGD kernel, which returns before
    touching w or v when found_inf is nonzero (no host read of the flag)."""
    # u in w's layout: the fused kernel pairs w, u, v elementwise (CUDA checks strides;
    # CPU does not, and would mix up channels_last w with NCHW grads).
    u = [torch.empty_like(t) for t in w]
    torch._foreach_copy_(u, g)
    if group["lars_exclude"]:
        torch._foreach_mul_(u, group["lr"])
    else:
        scale = _trust_scale(group, w, g)
        torch._foreach_mul_(u, scale.unbind(0))
        if group["weight_decay"] != 0:
            torch._foreach_addcmul_(u, w, (scale * group["weight_decay"]).unbind(0))
    momentum = group["momentum"]
    # momentum 0: the kernel takes no buffers; v is unused then (and must not get inf).
    torch._fused_sgd_(w, u, v if momentum else [], weight_decay=0.0, momentum=momentum,
                      lr=1.0, dampening=0.0, nesterov=False, maximize=False,
                      is_first_step=False, grad_scale=None, found_inf=found_inf)


def _write_back(params: list[torch.Tensor], w32: list[torch.Tensor]) -> None:
    # Only low-precision params were upcast into separate tensors; copy those back.
    pairs = [(p, w) for p, w in zip(params, w32, strict=True) if p is not w]
    if pairs:
        torch._foreach_copy_([p for p, _ in pairs], [w for _, w in pairs])


def lars_param_groups(
    model: torch.nn.Module, *, weight_decay: float, exclude_bn_bias: bool = True
) -> list[dict[str, Any]]:
    """Split trainable params into LARS groups.

    With ``exclude_bn_bias`` (the paper's practice), tensors with ndim <= 1 (biases,
    BatchNorm gamma/beta) get ``lars_exclude=True`` and no weight decay: their norms
    say nothing about layer scale and decaying them hurts accuracy. When False, every
    trainable param is in one LARS group with the weight decay (ablation switch).
    Empty groups are omitted.
    """
    trainable = [p for p in model.parameters() if p.requires_grad]
    if not exclude_bn_bias:
        decay, no_decay = trainable, []
    else:
        decay = [p for p in trainable if p.ndim > 1]
        no_decay = [p for p in trainable if p.ndim <= 1]
    groups = [
        dict(name="decay", params=decay, lars_exclude=False, weight_decay=weight_decay),
        dict(name="no_decay", params=no_decay, lars_exclude=True, weight_decay=0.0),
    ]
    return [g for g in groups if g["params"]]
