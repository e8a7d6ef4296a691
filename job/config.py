"""The whole run's config: the training tree (trainers/config.py) plus where it runs
(`cluster`, `ray`, `run`), registered with Hydra, and checked before Ray starts.

Every group of `conf/` merges into a typed node of `Config` (struct mode): the groups whose
option picks a schema (`optim`, `precision`, `comms`) name it in their yaml (`defaults:
[<option>_schema]`), so an unknown key, a key the chosen option does not read, or a value
of the wrong type fails at composition with the key's name. Building the typed object runs
each schema's own checks; `validate` adds the rules across sections.
"""

from __future__ import annotations

import dataclasses
import warnings
from dataclasses import dataclass, field

from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf

from common.paths import CONF_DIR
from common.validation import require
from trainers.config import OPTION_SECTIONS, TrainingConfig, check_training


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
class RayConfig:
    # null: start a local cluster bound to loopback; "auto" or "host:port": join a cluster.
    address: str | None = None


@dataclass
class OutputConfig:
    # null: Hydra's output directory for this run (outputs/DATE/TIME).
    output_dir: str | None = None
    # Ray Train run name: the folder of checkpoints inside output_dir.
    name: str = "train"


@dataclass
class Config(TrainingConfig):
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    ray: RayConfig = field(default_factory=RayConfig)
    run: OutputConfig = field(default_factory=OutputConfig)


def register_configs(schema: type = Config) -> None:
    """Register the root schema `conf/config.yaml` lists first, and each option's schema
    under its group (`comms/ddp_schema`, ...), read from the components' registries."""
    store = ConfigStore.instance()
    store.store(name="raylars_schema", node=schema)
    for group, registry in OPTION_SECTIONS:
        for name in registry:
            store.store(group=group, name=f"{name}_schema", node=registry.get(name).schema)


def validate(cfg: DictConfig | Config) -> Config:
    """Build the typed config (each schema checks itself), check the rules across
    sections, warn about settings the run ignores; return it."""
    if isinstance(cfg, DictConfig):
        reject_unknown_keys(cfg, prefix="")
        _check_option_names(cfg)
    config = OmegaConf.to_object(cfg) if isinstance(cfg, DictConfig) else cfg
    check_training(config)
    if config.cluster.num_cpus is not None:
        trainer = config.trainer
        require(config.cluster.num_cpus >= trainer.min_world_size * trainer.cpus_per_worker,
                f"cluster.num_cpus ({config.cluster.num_cpus}) cannot host "
                f"{trainer.min_world_size} workers x trainer.cpus_per_worker "
                f"({trainer.cpus_per_worker})")
    _warn_ignored(config)
    return config


def _check_option_names(cfg: DictConfig) -> None:
    """`optim.name=sgd` under `optim=lars` would build a LARS schema named sgd: the option
    is chosen with the group (`optim=sgd`), so name and schema must agree."""
    for section, registry in OPTION_SECTIONS:
        name = cfg[section].name
        require(OmegaConf.get_type(cfg[section]) is registry.get(name).schema,
                f"{section}.name={name} needs the {section}={name} group option "
                f"(choose it with `{section}={name}`, not by setting {section}.name)")


def reject_unknown_keys(node: DictConfig, *, prefix: str) -> None:
    # Struct mode stops `key=value` typos, but Hydra's `+key=value` appends on purpose;
    # to_object would then drop the key silently, so name it instead. The node's own
    # schema decides (a group option's subclass, not the field's base type).
    schema = OmegaConf.get_type(node)
    if not dataclasses.is_dataclass(schema):
        return
    fields = {f.name for f in dataclasses.fields(schema)}
    for key in node.keys():
        if key not in fields:
            raise ValueError(f"{prefix}{key}: unknown config key (not in {schema.__name__})")
        child = node._get_node(key)
        if isinstance(child, DictConfig):
            reject_unknown_keys(child, prefix=f"{prefix}{key}.")


def _warn_ignored(config: Config) -> None:
    from ingest.formats import format_of

    data = config.data
    if data.path is not None and not data.reads_path:
        warnings.warn(f"data.path is ignored by data={data.name}", stacklevel=3)
    if data.preprocess_on == "workers" and not format_of(data.name).in_memory:
        warnings.warn(f"data.preprocess_on=workers is ignored by data={data.name}: only a set "
                      "held in memory (digits) can be preprocessed in the workers", stacklevel=3)
    trainer, trainer_defaults = config.trainer, type(config.trainer)()
    if trainer.min_workers is not None and trainer.num_workers != trainer_defaults.num_workers:
        warnings.warn("trainer.num_workers is ignored when trainer.min_workers/max_workers "
                      "are set", stacklevel=3)
    if not trainer.elastic and trainer.resize_interval_s != trainer_defaults.resize_interval_s:
        warnings.warn("trainer.resize_interval_s is ignored: the run is not elastic "
                      "(set trainer.min_workers < trainer.max_workers)", stacklevel=3)
    if config.ray.address is not None and config.cluster.num_cpus is not None:
        warnings.warn("cluster.num_cpus is ignored when ray.address is set", stacklevel=3)


def compose_unchecked(overrides: list[str] | None = None, *, config_name: str = "config",
                      schema: type = Config) -> DictConfig:
    """Compose `conf/<config_name>.yaml` with Hydra overrides, type-checked by the schema
    only: for tools that read a recipe meant for another machine (its data path absent)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    register_configs(schema)
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base=None):
        return hydra_compose(config_name=config_name, overrides=list(overrides or []))


def compose(overrides: list[str] | None = None) -> Config:
    """Compose `conf/config.yaml` with Hydra overrides and validate it (for tests, tools)."""
    return validate(compose_unchecked(overrides))


def to_plain_dict(config: Config) -> dict:
    """The resolved config as plain JSON-friendly data (for summary.json)."""
    return OmegaConf.to_container(OmegaConf.structured(config), resolve=True)
