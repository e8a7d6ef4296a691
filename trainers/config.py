"""Config schemas of the trainer component: the loop, the model, the optimizer, precision.

Each dataclass checks its own values (`validate`) and raises ValueError naming the full
config key, so a bad value fails before Ray starts. Cross-component checks live in
`launch/config.py`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

OPTIM_NAMES = ("lars", "sgd")
PRECISION_NAMES = ("fp32", "fp16", "bf16", "fp16_pure")


def require(condition: bool, message: str) -> None:
    """Raise ValueError(message) when a user-supplied value is out of range."""
    if not condition:
        raise ValueError(message)


@dataclass
class TrainerConfig:
    num_workers: int = 2
    # Elastic: set both (min < max) and Ray Train sizes the group within them as nodes
    # come and go, restarting from the last checkpoint; num_workers is then unused.
    min_workers: int | None = None
    max_workers: int | None = None
    # How often a healthy elastic group checks whether more workers could run (seconds).
    resize_interval_s: float = 60.0
    epochs: int = 15
    global_batch_size: int = 64
    use_gpu: bool = False
    cpus_per_worker: float = 1.0
    # Extra Ray resources each worker needs (e.g. a custom node resource that marks the
    # nodes training may use), on top of cpus_per_worker and the GPU.
    worker_resources: dict[str, float] = field(default_factory=dict)
    seed: int = 0
    eval_batch_size: int = 256
    # Cap on optimizer steps per epoch (null: the whole epoch); for short smoke and
    # throughput runs on large data.
    max_steps_per_epoch: int | None = None
    checkpoint_every_epochs: int = 1
    num_checkpoints_to_keep: int = 2
    # Ray Train FailureConfig.max_failures: worker-group restarts from the last checkpoint.
    max_failures: int = 0
    # Start from this checkpoint directory (a `checkpoint_*` folder of an earlier run).
    resume_from: str | None = None
    # Fault injection for recovery tests: raise once, on rank 0, before this global step.
    fail_at_step: int | None = None
    # Fault injection for the atomic-checkpoint test: once, rank 0 crashes (exits) halfway
    # through writing this epoch's checkpoint into the run directory.
    fail_in_checkpoint_epoch: int | None = None
    # torch intra-op threads per worker (null: cpus_per_worker, at least 1).
    torch_threads: int | None = None

    def validate(self) -> None:
        require(self.num_workers >= 1, f"trainer.num_workers must be >= 1, got {self.num_workers}")
        require(self.epochs >= 1, f"trainer.epochs must be >= 1, got {self.epochs}")
        require(
            self.global_batch_size >= 1,
            f"trainer.global_batch_size must be >= 1, got {self.global_batch_size}",
        )
        self._validate_elastic()
        require(
            self.global_batch_size >= self.max_world_size,
            f"trainer.global_batch_size ({self.global_batch_size}) must give each of "
            f"{self.max_world_size} workers at least one sample",
        )
        require(
            self.cpus_per_worker > 0,
            f"trainer.cpus_per_worker must be > 0, got {self.cpus_per_worker}",
        )
        require(
            self.eval_batch_size >= 1,
            f"trainer.eval_batch_size must be >= 1, got {self.eval_batch_size}",
        )
        require(
            self.max_steps_per_epoch is None or self.max_steps_per_epoch >= 1,
            f"trainer.max_steps_per_epoch must be >= 1 or null, got {self.max_steps_per_epoch}",
        )
        require(
            self.checkpoint_every_epochs >= 1,
            f"trainer.checkpoint_every_epochs must be >= 1, got {self.checkpoint_every_epochs}",
        )
        require(
            self.num_checkpoints_to_keep >= 1,
            f"trainer.num_checkpoints_to_keep must be >= 1, got {self.num_checkpoints_to_keep}",
        )
        require(self.max_failures >= -1, f"trainer.max_failures must be >= -1, got {self.max_failures}")
        require(
            self.fail_at_step is None or self.fail_at_step >= 0,
            f"trainer.fail_at_step must be >= 0 or null, got {self.fail_at_step}",
        )
        require(
            self.fail_in_checkpoint_epoch is None or self.fail_in_checkpoint_epoch >= 1,
            "trainer.fail_in_checkpoint_epoch must be >= 1 or null, "
            f"got {self.fail_in_checkpoint_epoch}",
        )
        for name, amount in self.worker_resources.items():
            require(amount > 0, f"trainer.worker_resources.{name} must be > 0, got {amount}")
            require(name not in ("CPU", "GPU"),
                    f"trainer.worker_resources.{name}: set trainer.cpus_per_worker or "
                    "trainer.use_gpu instead")
        require(
            self.torch_threads is None or self.torch_threads >= 1,
            f"trainer.torch_threads must be >= 1 or null, got {self.torch_threads}",
        )

    def _validate_elastic(self) -> None:
        bounds = (self.min_workers, self.max_workers)
        if bounds == (None, None):
            return
        require(None not in bounds,
                "trainer.min_workers and trainer.max_workers must be set together "
                f"(got {self.min_workers} and {self.max_workers})")
        require(1 <= self.min_workers <= self.max_workers,
                f"trainer.min_workers ({self.min_workers}) and trainer.max_workers "
                f"({self.max_workers}) need 1 <= min_workers <= max_workers")
        require(self.resize_interval_s >= 0,
                f"trainer.resize_interval_s must be >= 0, got {self.resize_interval_s}")

    @property
    def elastic(self) -> bool:
        return self.min_workers is not None and self.min_workers != self.max_workers

    @property
    def worker_range(self) -> int | tuple[int, int]:
        """Ray's ScalingConfig.num_workers: a fixed count or (min, max) when elastic."""
        if self.min_workers is None:
            return self.num_workers
        return (self.min_workers, self.max_workers) if self.elastic else self.min_workers

    @property
    def min_world_size(self) -> int:
        return self.num_workers if self.min_workers is None else self.min_workers

    @property
    def max_world_size(self) -> int:
        return self.num_workers if self.max_workers is None else self.max_workers


@dataclass
class ModelConfig:
    name: str = "small_resnet"

    def validate(self) -> None:
        from trainers.models import MODEL_NAMES

        require(
            self.name in MODEL_NAMES,
            f"model.name: unknown model {self.name!r}; known: {', '.join(MODEL_NAMES)}",
        )


@dataclass
class OptimConfig:
    name: str = "lars"
    lr: float = 10.0
    momentum: float = 0.9
    weight_decay: float = 5e-4
    trust_coefficient: float = 0.001
    eps: float = 0.0
    warmup_epochs: float = 2.0
    end_lr: float = 0.0
    poly_power: float = 2.0
    # No weight decay and no trust ratio on 1-D tensors (biases, BN gamma/beta).
    exclude_bn_bias: bool = True
    label_smoothing: float = 0.0

    def validate(self) -> None:
        require(
            self.name in OPTIM_NAMES,
            f"optim.name: unknown optimizer {self.name!r}; known: {', '.join(OPTIM_NAMES)}",
        )
        require(self.lr > 0, f"optim.lr must be > 0, got {self.lr}")
        require(0 <= self.momentum < 1, f"optim.momentum must be in [0, 1), got {self.momentum}")
        require(self.weight_decay >= 0, f"optim.weight_decay must be >= 0, got {self.weight_decay}")
        require(
            self.trust_coefficient > 0,
            f"optim.trust_coefficient must be > 0, got {self.trust_coefficient}",
        )
        require(self.eps >= 0, f"optim.eps must be >= 0, got {self.eps}")
        require(
            self.warmup_epochs >= 0,
            f"optim.warmup_epochs must be >= 0, got {self.warmup_epochs}",
        )
        require(
            0 <= self.end_lr <= self.lr,
            f"optim.end_lr must be in [0, optim.lr={self.lr}], got {self.end_lr}",
        )
        require(self.poly_power > 0, f"optim.poly_power must be > 0, got {self.poly_power}")
        require(
            0 <= self.label_smoothing < 1,
            f"optim.label_smoothing must be in [0, 1), got {self.label_smoothing}",
        )


@dataclass
class PrecisionConfig:
    name: str = "fp32"
    # GradScaler (fp16 only): dynamic loss scaling starts here and doubles after
    # `growth_interval` finite steps; halves on inf/nan (the step is skipped).
    init_scale: float = 65536.0
    growth_interval: int = 2000

    def validate(self) -> None:
        require(
            self.name in PRECISION_NAMES,
            f"precision.name: unknown precision {self.name!r}; known: {', '.join(PRECISION_NAMES)}",
        )
        require(self.init_scale > 0, f"precision.init_scale must be > 0, got {self.init_scale}")
        require(
            self.growth_interval >= 1,
            f"precision.growth_interval must be >= 1, got {self.growth_interval}",
        )
