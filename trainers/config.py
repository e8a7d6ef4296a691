"""Config schemas of one rank's training: the loop (`trainer`), the model, and
`TrainingConfig`, the tree of every section one rank needs (the component schemas of data,
optimizer, precision, comms and debug included).

Every schema checks its own values when built (`__post_init__`) and raises ValueError
naming the full config key, so a bad value fails before Ray starts and no builder ever sees
an unchecked config. `check_training` adds the rules that span sections.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

from common.validation import require
from comms.config import CommsConfig
from comms.registry import SYNCS
from ingest.config import DataConfig
from trainers.batching import steps_per_epoch
from trainers.faults import DebugConfig
from trainers.optim import OPTIMIZERS, OptimConfig
from trainers.precision import PRECISIONS, PrecisionConfig

# The sections whose option (`optim=`, ...) picks a schema, each with its registry.
OPTION_SECTIONS = (("optim", OPTIMIZERS), ("precision", PRECISIONS), ("comms", SYNCS))


@dataclass
class TrainerConfig:
    num_workers: int = 2
    # Elastic: set both (min < max) and Ray Train sizes the group within them as nodes
    # come and go, restarting from the last checkpoint; num_workers is then unused.
    min_workers: int | None = None
    max_workers: int | None = None
    # How often a healthy elastic group checks whether more workers could run (seconds).
    resize_interval_s: float = 60.0
    # How long the run waits at start for a joined cluster (`ray.address`) to hold its
    # workers (min_workers when elastic) before it fails, naming what is missing; an
    # autoscaler may add nodes meanwhile. The embedded cluster never grows: no wait.
    start_timeout_s: float = 120.0
    epochs: int = 15
    global_batch_size: int = 64
    # Gradient accumulation: each worker runs its share of the global batch in passes of
    # at most this many samples, communicating once per optimizer step (null: one pass).
    micro_batch_size: int | None = None
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
    # Also a checkpoint every this many optimizer steps, mid-epoch included (null: at
    # epoch ends only); a resume continues at that step, each sample of the epoch once.
    checkpoint_every_steps: int | None = None
    # Every this many steps all ranks ask Ray Train for a node preemption notice
    # (ray.train.get_preemption_info, a barrier); on one, a checkpoint at once (0: never).
    preemption_check_steps: int = 10
    num_checkpoints_to_keep: int = 2
    # Ray Train FailureConfig.max_failures: worker-group restarts from the last checkpoint.
    max_failures: int = 0
    # FailureConfig.max_preemption_failures: restarts after a node's preemption notice,
    # counted apart from max_failures (-1: unlimited, 0: a preemption fails the run).
    max_preemptions: int = -1
    # How a checkpoint reaches the run directory: `async` (Ray copies it in a background
    # thread while training goes on; it is registered, and so restorable, only once
    # whole) or `sync` (the step waits for the copy).
    checkpoint_upload: str = "async"
    # Start from this checkpoint directory (a `checkpoint_*` folder of an earlier run).
    resume_from: str | None = None
    # torch intra-op threads per worker (null: cpus_per_worker, at least 1).
    torch_threads: int | None = None
    # channels_last memory format for the model and its inputs (null: on for CUDA, off on
    # CPU). On CUDA the trainer also turns on cuDNN autotuning and TF32 (trainers/speed.py).
    channels_last: bool | None = None
    # torch.compile the model in place (state_dict unchanged); the first steps pay the
    # compilation, and a compiled backward hands over its gradients at its end.
    compile: bool = False
    # A progress line (and TensorBoard scalars) every this many optimizer steps (null:
    # five per epoch, max(1, steps_per_epoch // 5); 0: epoch lines only).
    log_every_steps: int | None = None

    def __post_init__(self) -> None:
        for key in ("num_workers", "epochs", "global_batch_size", "eval_batch_size",
                    "checkpoint_every_epochs", "num_checkpoints_to_keep"):
            value = getattr(self, key)
            require(value >= 1, f"trainer.{key} must be >= 1, got {value}")
        require(self.preemption_check_steps >= 0,
                f"trainer.preemption_check_steps must be >= 0, got {self.preemption_check_steps}")
        for key in ("max_steps_per_epoch", "torch_threads", "micro_batch_size",
                    "checkpoint_every_steps"):
            value = getattr(self, key)
            require(value is None or value >= 1, f"trainer.{key} must be >= 1 or null, got {value}")
        require(self.log_every_steps is None or self.log_every_steps >= 0,
                f"trainer.log_every_steps must be >= 0 or null, got {self.log_every_steps}")
        self._check_elastic()
        require(self.global_batch_size >= self.max_world_size,
                f"trainer.global_batch_size ({self.global_batch_size}) must give each of "
                f"{self.max_world_size} workers at least one sample")
        require(self.start_timeout_s >= 0,
                f"trainer.start_timeout_s must be >= 0, got {self.start_timeout_s}")
        require(self.cpus_per_worker > 0,
                f"trainer.cpus_per_worker must be > 0, got {self.cpus_per_worker}")
        require(self.max_failures >= -1, f"trainer.max_failures must be >= -1, got {self.max_failures}")
        require(self.max_preemptions >= -1,
                f"trainer.max_preemptions must be >= -1, got {self.max_preemptions}")
        require(self.checkpoint_upload in ("async", "sync"),
                f"trainer.checkpoint_upload: unknown {self.checkpoint_upload!r}; known: async, sync")
        for name, amount in self.worker_resources.items():
            require(amount > 0, f"trainer.worker_resources.{name} must be > 0, got {amount}")
            require(name not in ("CPU", "GPU"),
                    f"trainer.worker_resources.{name}: set trainer.cpus_per_worker or "
                    "trainer.use_gpu instead")

    def _check_elastic(self) -> None:
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

    def __post_init__(self) -> None:
        from trainers.models import MODELS

        MODELS.get(self.name)  # an unknown name lists the known ones


@dataclass
class TrainingConfig:
    """Everything one rank's training reads. The sections whose option picks a schema
    (optim, precision, comms) are typed by their base class; Hydra merges the option's
    subclass in (conf/<group>/<option>.yaml names its schema)."""

    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    precision: PrecisionConfig = field(default_factory=PrecisionConfig)
    comms: CommsConfig = field(default_factory=CommsConfig)
    debug: DebugConfig = field(default_factory=DebugConfig)

    def __post_init__(self) -> None:
        # Built in code (tests, benchmarks) with a section left at its base class: become
        # the named option's schema, so a builder always gets the keys it reads; only the
        # fields set away from the base's defaults carry over (the option's own defaults,
        # e.g. sgd's lr, stay). A composed config was checked for this before it was built
        # (job/config.py), and check_training rejects a name that does not match its schema.
        for section, registry in OPTION_SECTIONS:
            value = getattr(self, section)
            schema = registry.get(value.name).schema
            if type(value) is not schema and issubclass(schema, type(value)):
                base = type(value)()
                changed = {f.name: getattr(value, f.name) for f in dataclasses.fields(value)
                           if getattr(value, f.name) != getattr(base, f.name)}
                setattr(self, section, schema(**changed))


def check_training(config: TrainingConfig) -> None:
    """The rules across sections: the chosen options' schemas, warmup inside the run, a
    full step per epoch at every world size, and a resumable checkpoint."""
    from ingest import dataset_sizes
    from trainers.models import check_input_size

    for section, registry in OPTION_SECTIONS:
        value = getattr(config, section)
        schema = registry.get(value.name).schema
        require(type(value) is schema,
                f"{section}.name={value.name} needs the {section}={value.name} group option "
                f"(choose it with `{section}={value.name}`, not by setting {section}.name)")
    trainer, optim = config.trainer, config.optim
    require(optim.warmup_epochs < trainer.epochs,
            f"optim.warmup_epochs ({optim.warmup_epochs}) must be < trainer.epochs ({trainer.epochs})")
    # The architecture must accept the data's image size (e.g. ViT patches, AlexNet pools).
    check_input_size(name=config.model.name, image_size=config.data.image_size)
    num_train, _ = dataset_sizes(config.data)
    for world_size in range(trainer.min_world_size, trainer.max_world_size + 1):
        require(
            steps_per_epoch(num_train=num_train, world_size=world_size,
                            global_batch_size=trainer.global_batch_size, max_steps=None) >= 1,
            f"trainer.global_batch_size ({trainer.global_batch_size}) is larger than the "
            f"{num_train} training samples of data={config.data.name} split over "
            f"{world_size} workers: no full step per epoch")
    fault = config.debug.fail_in_checkpoint_epoch
    require(fault is None or (fault <= trainer.epochs and (
        fault == trainer.epochs or fault % trainer.checkpoint_every_epochs == 0)),
        f"debug.fail_in_checkpoint_epoch ({fault}) is not an epoch that writes a checkpoint "
        f"(every trainer.checkpoint_every_epochs={trainer.checkpoint_every_epochs} epochs, "
        f"and the last of trainer.epochs={trainer.epochs})")
    if trainer.resume_from is not None:
        _check_resume_from(trainer)


def _check_resume_from(trainer: TrainerConfig) -> None:
    from trainers.checkpoint import CHECKPOINT_FILE, load_state

    state_file = Path(trainer.resume_from) / CHECKPOINT_FILE
    require(state_file.is_file(),
            f"trainer.resume_from: no raylars checkpoint at {trainer.resume_from} "
            f"(expected {state_file})")
    # mmap: read the epoch counter without loading every tensor of a large model.
    saved = load_state(state_file, map_location="cpu", mmap=True)
    require(saved["epoch"] < trainer.epochs,
            f"trainer.resume_from is at epoch {saved['epoch']}: trainer.epochs "
            f"({trainer.epochs}) leaves nothing to train")
