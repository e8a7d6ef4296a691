"""Config composition and validation: every bad value fails before Ray starts, naming its key."""

import pytest
from hydra.errors import ConfigCompositionException
from omegaconf.errors import OmegaConfBaseException

from job.config import Config, compose, to_plain_dict
from tune.config import compose_sweep


def test_default_config_composes_and_validates():
    config = compose([])
    assert isinstance(config, Config)
    assert config.trainer.num_workers == 2
    assert (config.model.name, config.data.name, config.optim.name) == ("small_resnet", "digits", "lars")
    assert (config.precision.name, config.comms.name, config.ray.address) == ("fp32", "ddp", None)
    assert to_plain_dict(config)["optim"]["lr"] == config.optim.lr


@pytest.mark.parametrize("group,option", [
    ("model", "resnet50"), ("model", "alexnet_bn"), ("model", "alexnet"), ("optim", "sgd"),
    ("precision", "fp16"), ("precision", "bf16"), ("data", "synthetic"),
])
def test_every_group_option_composes(group, option):
    # AlexNet's pools need more than the digits' 32 px (a config error since issue 16).
    extra = ["data.image_size=64"] if option.startswith("alexnet") else []
    config = compose([f"{group}={option}", *extra])
    assert getattr(config, group).name == option


@pytest.mark.parametrize("override,key", [
    ("trainer.num_workers=0", "trainer.num_workers"),
    ("trainer.epochs=0", "trainer.epochs"),
    ("trainer.global_batch_size=1", "trainer.global_batch_size"),  # not a sample per worker
    ("trainer.min_workers=2", "trainer.min_workers"),  # without max_workers
    ("+trainer.worker_resources.CPU=1", "trainer.worker_resources.CPU"),
    ("trainer.global_batch_size=4096", "trainer.global_batch_size"),  # larger than the data
    ("trainer.cpus_per_worker=0", "trainer.cpus_per_worker"),
    ("trainer.max_failures=-2", "trainer.max_failures"),
    ("optim.lr=0", "optim.lr"),
    ("optim.lr=-1", "optim.lr"),
    ("optim.momentum=1.0", "optim.momentum"),
    ("optim.weight_decay=-1e-4", "optim.weight_decay"),
    ("optim.trust_coefficient=0", "optim.trust_coefficient"),
    ("optim.warmup_epochs=15", "optim.warmup_epochs"),  # not < trainer.epochs
    ("optim.end_lr=100", "optim.end_lr"),
    ("optim.label_smoothing=1.0", "optim.label_smoothing"),
    ("optim.name=adam", "optim.name"),
    ("model.name=vgg17", "model.name"),
    ("data.name=imagenet", "data.name"),
    ("data.image_size=4", "data.image_size"),
    ("precision.name=fp8", "precision.name"),
    ("precision=fp16 precision.init_scale=0", "precision.init_scale"),
    ("comms.compress=int8", "comms.compress"),
    ("comms.fusion_threshold_mb=0", "comms.fusion_threshold_mb"),
    ("comms=fused comms.segments=0", "comms.segments"),
    ("comms=hierarchical comms.pipeline_chunk_mb=0", "comms.pipeline_chunk_mb"),
    ("comms=hierarchical comms.variant=3d", "comms.variant"),
    ("optim.name=sgd", "optim.name"),  # the name without its group option's schema
    ("precision.name=fp16", "precision.name"),  # fp16's schema would be swapped in
    ("comms=fused comms.name=hierarchical", "comms.name"),
    ("trainer.checkpoint_every_epochs=2 debug.fail_in_checkpoint_epoch=3",
     "debug.fail_in_checkpoint_epoch"),  # no checkpoint in epoch 3: the fault never fires
    ("+comms.segments=2", "comms.segments"),  # a key comms=ddp does not read
    ("comms.backend=mpi", "comms.backend"),
    ("cluster.num_cpus=1", "cluster.num_cpus"),
])
def test_bad_value_raises_value_error_naming_key(override, key):
    with pytest.raises(ValueError, match=key.replace(".", r"\.")):
        compose(override.split())


@pytest.mark.parametrize("override,key", [
    ("trainer.epochs=many", "trainer.epochs"),  # wrong type
    ("+trainer.epoch=3", "trainer.epoch"),  # a key added with + that no schema has
    ("optim.lrr=0.1", "lrr"),
])
def test_unknown_key_or_wrong_type_names_the_key(override, key):
    with pytest.raises(Exception) as info:  # Hydra/OmegaConf composition errors
        compose([override])
    assert isinstance(info.value, (OmegaConfBaseException, Exception))
    assert key in str(info.value) or key in str(info.value.__cause__)


def test_unknown_group_option_is_rejected():
    with pytest.raises(Exception, match="carrier_pigeon"):
        compose(["comms=carrier_pigeon"])


def test_ignored_setting_warns():
    with pytest.warns(UserWarning, match="data.path"):
        compose(["data.path=/tmp/x"])


@pytest.mark.parametrize("overrides,key", [
    (["comms=fused", "comms.pipeline_chunk_mb=2"], "comms.pipeline_chunk_mb"),
    (["comms.segments=3"], "comms.segments"),  # ddp has no segments
    (["precision.init_scale=1024"], "precision.init_scale"),  # fp32 has no loss scaler
    (["optim=sgd", "optim.trust_coefficient=0.01"], "optim.trust_coefficient"),
])
def test_a_key_the_chosen_option_does_not_read_is_an_error_naming_it(overrides, key):
    with pytest.raises(ConfigCompositionException, match=key.replace(".", r"\.")):
        compose(overrides)


def test_each_option_composes_to_its_own_schema():
    from comms.config import DDPConfig, FusedConfig, HierarchicalConfig
    from trainers.optim import LarsConfig, SgdConfig
    from trainers.precision import Fp16Config, PrecisionConfig

    assert type(compose([]).comms) is DDPConfig and type(compose([]).optim) is LarsConfig
    assert type(compose(["comms=fused"]).comms) is FusedConfig
    assert type(compose(["comms=hierarchical"]).comms) is HierarchicalConfig
    assert type(compose(["optim=sgd"]).optim) is SgdConfig
    assert type(compose(["precision=fp16"]).precision) is Fp16Config
    assert type(compose(["precision=bf16"]).precision) is PrecisionConfig


def test_resume_from_must_be_a_checkpoint_with_epochs_left(tmp_path):
    import torch

    with pytest.raises(ValueError, match=r"trainer\.resume_from: no raylars checkpoint"):
        compose([f"trainer.resume_from={tmp_path}"])
    torch.save({"epoch": 15, "global_step": 330}, tmp_path / "state.pt")
    with pytest.raises(ValueError, match=r"trainer\.resume_from is at epoch 15"):
        compose([f"trainer.resume_from={tmp_path}"])
    assert compose([f"trainer.resume_from={tmp_path}", "trainer.epochs=16"]).trainer.epochs == 16


def test_tune_settings_are_checked_only_for_sweeps():
    assert compose(["trainer.epochs=2", "optim.warmup_epochs=1"]).trainer.epochs == 2  # tune.* ignored
    with pytest.raises(ValueError, match=r"tune\.warmup_epochs"):
        compose_sweep(["trainer.epochs=2", "optim.warmup_epochs=1"])  # warmups up to 2
    with pytest.raises(ValueError, match=r"tune\.lr_max"):
        compose_sweep(["tune.lr_max=0.1"])  # the tune section is schema-checked when built
    with pytest.raises(ConfigCompositionException, match="tune"):
        compose(["tune.lr_max=0.1"])  # launch/run.py has no tune section


def test_a_section_built_in_code_becomes_its_options_schema_with_its_defaults():
    from trainers.config import TrainingConfig
    from trainers.optim import OptimConfig, SgdConfig

    optim = TrainingConfig(optim=OptimConfig(name="sgd", momentum=0.5)).optim
    assert type(optim) is SgdConfig and optim.lr == 0.2 and optim.momentum == 0.5
