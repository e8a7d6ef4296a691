"""The whole run's config: composes the component schemas, registers them with Hydra,
and checks values across components before Ray starts.

Every group of `conf/` merges into a typed node of `Config` (struct mode), so an unknown
key or a value of the wrong type fails at composition with the key's name; `validate`
then raises ValueError naming the key for values out of range or inconsistent.
"""

from __future__ import annotations

import dataclasses
import typing
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf

from comms.config import CommsConfig
from ingest.config import DataConfig
from trainers.config import (
    ModelConfig,
    OptimConfig,
    PrecisionConfig,
    TrainerConfig,
    require,
)
from trainers.elastic import steps_per_epoch
from tune.config import TuneConfig

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"


@dataclass
class ClusterConfig:
    """The embedded local cluster (used when `ray.address` is null)."""

    name: str = "local"
    # Logical CPUs of the local cluster (null: physical cores + 2). Ray Data needs CPU
    # slots beside the training workers, else the pipeline stalls.
    num_cpus: int | None = None
    object_store_memory_mb: int | None = None
    # The dashboard (ray[default]) is what lets Tune with Train V2 release placement groups.
    include_dashboard: bool | None = None


@dataclass
class RaySection:
    # null: start a local cluster bound to loopback; "auto" or "host:port": join a cluster.
    address: str | None = None


@dataclass
class RunSection:
    # null: Hydra's output directory for this run (outputs/DATE/TIME).
    output_dir: str | None = None
    name: str = "train"


@dataclass
class Config:
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    precision: PrecisionConfig = field(default_factory=PrecisionConfig)
    comms: CommsConfig = field(default_factory=CommsConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    ray: RaySection = field(default_factory=RaySection)
    run: RunSection = field(default_factory=RunSection)
    # Used by `launch/tune.py` only; `launch/run.py` ignores it.
    tune: TuneConfig = field(default_factory=TuneConfig)


def register_configs() -> None:
    """Register the schema that `conf/config.yaml` lists first in its defaults."""
    ConfigStore.instance().store(name="raylars_schema", node=Config)


def validate(cfg: DictConfig | Config, *, for_tune: bool = False) -> Config:
    """Check every component and the cross-component rules; return the typed config.
    `for_tune` adds the checks of the sweep settings (`launch/tune.py`)."""
    if isinstance(cfg, DictConfig):
        _reject_unknown_keys(cfg, schema=Config, prefix="")
    config = OmegaConf.to_object(cfg) if isinstance(cfg, DictConfig) else cfg
    for section in (config.trainer, config.model, config.data, config.optim,
                    config.precision, config.comms, config.tune):
        section.validate()
    _check_cross_fields(config)
    if for_tune:
        require(
            max(config.tune.warmup_epochs) < config.trainer.epochs,
            f"tune.warmup_epochs ({list(config.tune.warmup_epochs)}) must all be < "
            f"trainer.epochs ({config.trainer.epochs})",
        )
        require(not config.trainer.elastic,
                "trainer.min_workers/trainer.max_workers: a tune sweep runs fixed-size "
                "trials; set trainer.num_workers instead")
    _warn_ignored(config)
    return config


def _reject_unknown_keys(node: DictConfig, *, schema: type, prefix: str) -> None:
    # Struct mode stops `key=value` typos, but Hydra's `+key=value` appends on purpose;
    # to_object would then drop the key silently, so name it instead.
    fields = {f.name: f.type for f in dataclasses.fields(schema)}
    hints = typing.get_type_hints(schema)
    for key in node.keys():
        if key not in fields:
            raise ValueError(f"{prefix}{key}: unknown config key (not in {schema.__name__})")
        child = node._get_node(key)
        if isinstance(child, DictConfig) and dataclasses.is_dataclass(hints[key]):
            _reject_unknown_keys(child, schema=hints[key], prefix=f"{prefix}{key}.")


def _check_cross_fields(config: Config) -> None:
    from ingest import dataset_sizes

    trainer, optim = config.trainer, config.optim
    require(
        optim.warmup_epochs < trainer.epochs,
        f"optim.warmup_epochs ({optim.warmup_epochs}) must be < trainer.epochs ({trainer.epochs})",
    )
    num_train, _ = dataset_sizes(config.data, seed=trainer.seed)
    for world_size in range(trainer.min_world_size, trainer.max_world_size + 1):
        require(
            steps_per_epoch(num_train=num_train, world_size=world_size,
                            global_batch_size=trainer.global_batch_size, max_steps=None) >= 1,
            f"trainer.global_batch_size ({trainer.global_batch_size}) is larger than the "
            f"{num_train} training samples of data={config.data.name} split over "
            f"{world_size} workers: no full step per epoch",
        )
    if trainer.resume_from is not None:
        _check_resume_from(trainer)

    if config.cluster.num_cpus is not None:
        require(
            config.cluster.num_cpus >= trainer.min_world_size * trainer.cpus_per_worker,
            f"cluster.num_cpus ({config.cluster.num_cpus}) cannot host "
            f"{trainer.min_world_size} workers x trainer.cpus_per_worker "
            f"({trainer.cpus_per_worker})",
        )


def _check_resume_from(trainer: TrainerConfig) -> None:
    from trainers.loop import CHECKPOINT_FILE

    state_file = Path(trainer.resume_from) / CHECKPOINT_FILE
    require(state_file.is_file(),
            f"trainer.resume_from: no raylars checkpoint at {trainer.resume_from} "
            f"(expected {state_file})")
    from trainers.checkpoint import load_state

    # mmap: read the epoch counter without loading every tensor of a large model.
    saved = load_state(state_file, map_location="cpu", mmap=True)
    require(saved["epoch"] < trainer.epochs,
            f"trainer.resume_from is at epoch {saved['epoch']}: trainer.epochs "
            f"({trainer.epochs}) leaves nothing to train")


def _warn_ignored(config: Config) -> None:
    defaults = CommsConfig()
    if config.data.path is not None and not config.data.reads_path:
        warnings.warn(f"data.path is ignored by data={config.data.name}", stacklevel=3)
    if config.comms.name == "ddp":
        if (config.comms.segments != defaults.segments or config.comms.ranks_per_node is not None
                or config.comms.variant != defaults.variant or config.comms.split != defaults.split):
            warnings.warn(
                "comms.segments, comms.ranks_per_node, comms.variant and comms.split are "
                "ignored by comms=ddp "
                "(DDP overlaps per bucket and has no hierarchy)",
                stacklevel=3,
            )
    if (config.comms.name != "hierarchical"
            and config.comms.pipeline_chunk_mb != defaults.pipeline_chunk_mb):
        warnings.warn(f"comms.pipeline_chunk_mb is ignored by comms={config.comms.name} "
                      "(only comms=hierarchical has stages to pipeline)", stacklevel=3)
    trainer, trainer_defaults = config.trainer, TrainerConfig()
    if trainer.min_workers is not None and trainer.num_workers != trainer_defaults.num_workers:
        warnings.warn("trainer.num_workers is ignored when trainer.min_workers/max_workers "
                      "are set", stacklevel=3)
    if not trainer.elastic and trainer.resize_interval_s != trainer_defaults.resize_interval_s:
        warnings.warn("trainer.resize_interval_s is ignored: the run is not elastic "
                      "(set trainer.min_workers < trainer.max_workers)", stacklevel=3)
    if config.ray.address is not None and config.cluster.num_cpus is not None:
        warnings.warn("cluster.num_cpus is ignored when ray.address is set", stacklevel=3)


def compose_unchecked(overrides: list[str] | None = None) -> DictConfig:
    """Compose `conf/config.yaml` with Hydra overrides, type-checked by the schema only:
    for tools that read a recipe meant for another machine (its data path absent here)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    register_configs()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base=None):
        return hydra_compose(config_name="config", overrides=list(overrides or []))


def compose(overrides: list[str] | None = None, *, for_tune: bool = False) -> Config:
    """Compose `conf/config.yaml` with Hydra overrides and validate it (for tests, Tune)."""
    return validate(compose_unchecked(overrides), for_tune=for_tune)


def to_plain_dict(config: Config) -> dict:
    """The resolved config as plain JSON-friendly data (for summary.json)."""
    return OmegaConf.to_container(OmegaConf.structured(config), resolve=True)
