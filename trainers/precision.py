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
"""

from __future__ import annotations

import contextlib

import torch

from trainers.config import PrecisionConfig

_AUTOCAST_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}


class Precision:
    def __init__(self, config: PrecisionConfig, *, device_type: str):
        self.name = config.name
        self.device_type = device_type
        self.skipped_steps = 0
        self.scaler = None
        if self.name == "fp16":
            self.scaler = torch.amp.GradScaler(
                device_type, init_scale=config.init_scale, growth_interval=config.growth_interval
            )

    @property
    def upcast_update(self) -> bool:
        """Whether the optimizer may compute in fp32 (all modes but fp16_pure)."""
        return self.name != "fp16_pure"

    def prepare(self, model: torch.nn.Module) -> torch.nn.Module:
        """The model as this precision trains it: fp16 parameters for fp16_pure."""
        return model.half() if self.name == "fp16_pure" else model

    def cast_inputs(self, images: torch.Tensor) -> torch.Tensor:
        return images.half() if self.name == "fp16_pure" else images

    def autocast(self):
        if self.name in ("fp32", "fp16_pure"):
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device_type, dtype=_AUTOCAST_DTYPES[self.name])

    def backward(self, loss: torch.Tensor) -> None:
        (self.scaler.scale(loss) if self.scaler else loss).backward()

    def step(self, optimizer: torch.optim.Optimizer) -> bool:
        """Unscale, step unless gradients are non-finite, update the scale. True if stepped."""
        if self.scaler is None:
            optimizer.step()
            return True
        self.scaler.unscale_(optimizer)
        scale_before = self.scaler.get_scale()
        self.scaler.step(optimizer)
        self.scaler.update()
        # GradScaler lowers the scale exactly when it found inf/nan and skipped the step.
        stepped = self.scaler.get_scale() >= scale_before
        self.skipped_steps += 0 if stepped else 1
        return stepped

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
