"""Unit tests for job/evaluate.py's config: a checkpoint's stored training config, with
command-line overrides on top, rebuilt before Ray starts (no cluster here)."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from job.config import compose
from job.evaluate import evaluation_config, stored_config

TRAINED = ["model.name=resnet18", "trainer.num_workers=1", "trainer.global_batch_size=32",
           "+trainer.worker_resources.spot=0.5",
           "data.max_shift_px=3", "optim=sgd", "optim.lr=0.05", "precision=bf16",
           "ray.address=127.0.0.1:1", "trainer.epochs=4"]


def _checkpoint(tmp_path, *, with_config: bool = True):
    config = compose(TRAINED + [f"run.output_dir={tmp_path}"])
    directory = tmp_path / "train" / "checkpoint_epoch_0004"
    directory.mkdir(parents=True)
    state = {"model": {"w": torch.zeros(1)}, "epoch": 4}
    if with_config:
        state["config"] = dataclasses.asdict(config)
    torch.save(state, directory / "state.pt")
    return directory, config


def test_stored_config_loads_with_weights_only(tmp_path):
    directory, config = _checkpoint(tmp_path)
    assert torch.load(directory / "state.pt", weights_only=True)["config"]["model"] == {
        "name": "resnet18"}
    assert stored_config(str(directory)) == dataclasses.asdict(config)


def test_training_config_with_overrides_on_top(tmp_path):
    directory, _ = _checkpoint(tmp_path)
    config = evaluation_config(str(directory), ["trainer.num_workers=2",
                                                f"run.output_dir={tmp_path / 'eval'}"])
    assert config.model.name == "resnet18" and config.data.max_shift_px == 3
    assert (config.optim.name, config.optim.lr, config.precision.name) == ("sgd", 0.05, "bf16")
    assert config.trainer.num_workers == 2 and config.trainer.global_batch_size == 32
    assert config.trainer.worker_resources == {"spot": 0.5}
    # Where the training ran is not carried over.
    assert config.ray.address is None and config.run.output_dir == str(tmp_path / "eval")
    assert config.run.name == "evaluate" and config.trainer.resume_from is None


def test_a_changed_data_option_starts_from_its_defaults(tmp_path):
    directory, _ = _checkpoint(tmp_path)
    config = evaluation_config(str(directory), ["data=synthetic", "data.num_classes=10"])
    defaults = compose(["data=synthetic", "data.num_classes=10"]).data
    assert config.data == defaults and config.data.max_shift_px != 3
    assert config.run.output_dir.endswith(tuple("0123456789"))  # outputs/evaluate/DATE/TIME


def test_older_checkpoint_reads_the_run_summary(tmp_path):
    directory, config = _checkpoint(tmp_path, with_config=False)
    with pytest.raises(ValueError, match="holds no config.*summary.json"):
        stored_config(str(directory))
    (tmp_path / "summary.json").write_text(json.dumps({"config": dataclasses.asdict(config)}))
    assert evaluation_config(str(directory), []).model.name == "resnet18"


def test_bad_inputs_are_value_errors(tmp_path):
    with pytest.raises(ValueError, match="no raylars checkpoint"):
        evaluation_config(str(tmp_path), [])
    directory, _ = _checkpoint(tmp_path)
    with pytest.raises(ValueError, match="trainer.num_workers must be >= 1"):
        evaluation_config(str(directory), ["trainer.num_workers=0"])
    with pytest.raises(ValueError, match="unknown model 'nope'"):
        evaluation_config(str(directory), ["model.name=nope"])


@pytest.mark.parametrize(("override", "message"), [
    ("trainer.nope=1", "trainer.nope: unknown config key"),
    ("trainer.epochs=many", "trainer.epochs"),
    ("data=nope", "data=nope: unknown option; known: .*digits"),
    ("model=resnet18", r"model=resnet18: unknown option; known: .*model.name="),
    ("trainer.epochs", "bad override"),
])
def test_bad_overrides_are_one_line_value_errors(tmp_path, override, message):
    directory, _ = _checkpoint(tmp_path)
    with pytest.raises(ValueError, match=message) as info:
        evaluation_config(str(directory), [override])
    assert "\n" not in str(info.value)
