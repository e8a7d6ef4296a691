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
        self.skipped_steps = 0
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

    def cast_inputs(self, images: torch.Tensor) -> torch.Tensor:
        return images.to(self.mode.param_dtype)

    def autocast(self):
        if self.mode.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device_type, dtype=self.mode.autocast_dtype)

    def backward(self, loss: torch.Tensor) -> None:
        (self.scaler.scale(loss) if self.scaler else loss).backward()

    def step(self, optimizer: torch.optim.Optimizer) -> None:
        """Unscale, step unless gradients are non-finite, update the scale."""
        if self.scaler is None:
            optimizer.step()
            return
        self.scaler.unscale_(optimizer)
        scale_before = self.scaler.get_scale()
        self.scaler.step(optimizer)
        self.scaler.update()
        # GradScaler lowers the scale exactly when it found inf/nan and skipped the step.
        self.skipped_steps += 0 if self.scaler.get_scale() >= scale_before else 1

    @property
    def loss_scale(self) -> float:
        return float(self.scaler.get_scale()) if self.scaler else 1.0

    def state_dict(self) -> dict:
        state = {"skipped_steps": self.skipped_steps}
        if self.scaler:
            state["scaler"] = self.scaler.state_dict()
        return state

    def load_state_dict(self, state: dict) -> None:
        self.skipped_steps = int(state.get("skipped_steps", 0))
        if self.scaler and "scaler" in state:
            self.scaler.load_state_dict(state["scaler"])


PRECISIONS = Registry("precision", key="precision.name")
for _name, _schema in (("fp32", PrecisionConfig), ("bf16", PrecisionConfig),
                       ("fp16", Fp16Config), ("fp16_pure", PrecisionConfig)):
    PRECISIONS.register(_name, schema=_schema, builder=Precision)
