"""Mixed precision as in the brief: compute in fp16/bf16 under autocast, keep parameters
(master weights) and the optimizer's math in fp32.

fp16 uses dynamic loss scaling (torch.amp.GradScaler): gradients are unscaled before the
optimizer sees them (LARS norms need true magnitudes), and a step whose gradients hold
inf/nan is skipped and counted. bf16 has fp32's exponent range, so it needs no scaler.

`fp16_pure` is the ablation of the brief's failure mode: the model's parameters (BN
included), activations and gradients are fp16, there are no fp32 master weights, and the
LARS update itself (norms, trust ratio, momentum) runs in fp16; an update smaller than
half an fp16 ulp of its weight is lost, and small products underflow. With no master
weights GradScaler cannot unscale fp16 gradients, so this mode has no loss scaling.

No host sync per step. A step never reads a device value on the host: the skipped-step
count and the loss scale stay tensors on the device and are read only when someone asks
(`skipped_steps`, `loss_scale`: the trainer does, once an epoch). The skip itself happens on
the device for optimizers that take GradScaler's `found_inf` (`_step_supports_amp_scaling`:
torch's fused SGD, and LARS); for any other optimizer
GradScaler decides on the host, one `.item()` per step (`syncs_per_step` says which).

Each mode is one row of `MODES` (what it does) and one entry of `PRECISIONS` (its schema).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch

from common.registry import Registry
from common.validation import require


@dataclass
class PrecisionConfig:
    """`precision=fp32|bf16|fp16_pure` have no keys but the name."""

    name: str = "fp32"


@dataclass
class Fp16Config(PrecisionConfig):
    name: str = "fp16"
    # GradScaler: dynamic loss scaling starts here and doubles after `growth_interval`
    # finite steps; halves on inf/nan (the step is skipped).
    init_scale: float = 65536.0
    growth_interval: int = 2000

    def __post_init__(self) -> None:
        require(self.init_scale > 0, f"precision.init_scale must be > 0, got {self.init_scale}")
        require(self.growth_interval >= 1,
                f"precision.growth_interval must be >= 1, got {self.growth_interval}")


@dataclass(frozen=True)
class Mode:
    autocast_dtype: torch.dtype | None  # None: no autocast
    param_dtype: torch.dtype  # the model's parameters (and inputs)
    loss_scaling: bool


MODES = {
    "fp32": Mode(autocast_dtype=None, param_dtype=torch.float32, loss_scaling=False),
    "bf16": Mode(autocast_dtype=torch.bfloat16, param_dtype=torch.float32, loss_scaling=False),
    "fp16": Mode(autocast_dtype=torch.float16, param_dtype=torch.float32, loss_scaling=True),
    "fp16_pure": Mode(autocast_dtype=None, param_dtype=torch.float16, loss_scaling=False),
}


class Precision:
    def __init__(self, config: PrecisionConfig, *, device_type: str):
        self.name = config.name
        self.mode = MODES[config.name]
        self.device_type = device_type
        # Skipped steps: those of the checkpoint this run resumed from (a Python int), plus
        # this run's, counted on the device (created at the first fp16 step, on its device).
        self._skipped_before = 0
        self._skipped_here: torch.Tensor | None = None
        self.scaler = None
        if self.mode.loss_scaling:
            self.scaler = torch.amp.GradScaler(
                device_type, init_scale=config.init_scale, growth_interval=config.growth_interval
            )

    @property
    def upcast_update(self) -> bool:
        """Whether the optimizer may compute in fp32: only with fp32 master weights."""
        return self.mode.param_dtype == torch.float32

    def prepare(self, model: torch.nn.Module) -> torch.nn.Module:
        """The model as this precision trains it (fp16 parameters for fp16_pure)."""
        return model.to(self.mode.param_dtype)

    @property
    def input_dtype(self) -> torch.dtype:
        """The dtype the model's first layer computes in: the autocast dtype under
        autocast, else the parameters'. Inputs made directly in it skip a cast (valid only
        inside `autocast()` for bf16/fp16, where the first layer casts to it anyway)."""
        return self.mode.autocast_dtype or self.mode.param_dtype

    def autocast(self):
        if self.mode.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device_type, dtype=self.mode.autocast_dtype)

    def backward(self, loss: torch.Tensor) -> None:
        (self.scaler.scale(loss) if self.scaler else loss).backward()

    def step(self, optimizer: torch.optim.Optimizer) -> None:
        """Unscale, step unless gradients are non-finite, update the scale; count a skip.

        Nothing here reads a device value on the host when the optimizer skips on the
        device (see `syncs_per_step`)."""
        if self.scaler is None:
            optimizer.step()
            return
        # unscale_ fills found_inf on the device (no sync); then GradScaler.step hands it
        # to an optimizer that supports it, or reads it with .item() and skips on the host.
        self.scaler.unscale_(optimizer)
        found_inf = _found_inf(self.scaler, optimizer)
        self.scaler.step(optimizer)
        self.scaler.update()
        self._count_skip(found_inf)

    def syncs_per_step(self, optimizer: torch.optim.Optimizer) -> int:
        """Host syncs `step` makes with this optimizer: 0, or 1 where GradScaler must read
        found_inf itself because the optimizer cannot skip on the device."""
        if self.scaler is None or getattr(optimizer, "_step_supports_amp_scaling", False):
            return 0
        return 1

    def _count_skip(self, found_inf: torch.Tensor) -> None:
        # found_inf sums the per-device flags (0 or 1 each): a step skipped anywhere is one skip.
        skipped = (found_inf > 0).to(torch.int64)
        if self._skipped_here is None:
            self._skipped_here = skipped
        else:
            self._skipped_here.add_(skipped)

    @property
    def skipped_steps(self) -> int:
        """fp16 steps skipped on inf/nan gradients, resumed runs included. Syncs: read it
        once an epoch, not per step."""
        here = 0 if self._skipped_here is None else int(self._skipped_here.item())
        return self._skipped_before + here

    @property
    def loss_scale(self) -> float:
        """The current loss scale (1 without a scaler). Syncs, like `skipped_steps`."""
        return float(self.scaler.get_scale()) if self.scaler else 1.0

    def state_dict(self) -> dict:
        state = {"skipped_steps": self.skipped_steps}
        if self.scaler:
            state["scaler"] = self.scaler.state_dict()
        return state

    def load_state_dict(self, state: dict) -> None:
        self._skipped_before = int(state.get("skipped_steps", 0))
        self._skipped_here = None
        if self.scaler and "scaler" in state:
            self.scaler.load_state_dict(state["scaler"])


def _found_inf(scaler: torch.amp.GradScaler, optimizer: torch.optim.Optimizer) -> torch.Tensor:
    """After unscale_: the inf/nan flag GradScaler.step and update() act on, summed over the
    optimizer's devices onto the scale's device, the way GradScaler combines them. It is the
    private `_found_inf_per_device` (torch >= 2.0): a public API gives only a host bool."""
    flags = scaler._found_inf_per_device(optimizer)
    scale_device = scaler._get_scale_async().device
    return sum(flag.to(scale_device, non_blocking=True) for flag in flags.values())


PRECISIONS = Registry("precision", key="precision.name")
for _name, _schema in (("fp32", PrecisionConfig), ("bf16", PrecisionConfig),
                       ("fp16", Fp16Config), ("fp16_pure", PrecisionConfig)):
    PRECISIONS.register(_name, schema=_schema, builder=Precision)
