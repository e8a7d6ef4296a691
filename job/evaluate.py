"""Scoring a checkpoint: its top-1, top-5 and loss on a dataset's val split, on the same
workers and input pipeline as training (job/trainer.py's TorchTrainer, whose loop here
builds each rank's Trainer with the checkpoint's weights and only evaluates), and
exporting its weights alone. The CLI is launch/evaluate.py.

The config that rebuilds the model and data: the resolved training config stored in the
checkpoint (`state.pt`'s "config"), else, for checkpoints written before it was, the run's
summary.json two levels up (`<run>/train/checkpoint_epoch_NNNN`). Command-line overrides
apply on top. Where the training ran (the `cluster`, `ray`, `run` and `debug` sections and
`trainer.resume_from`) is not carried over; a section whose option the command line
changes (e.g. `data=parquet`) starts from that option's defaults.

Export (`export=PATH`): PATH holds the model's state_dict alone (`torch.load(PATH,
weights_only=True)`), PATH.json the keyword arguments of `trainers.models.build_model`
that rebuild it ("model") and the input it expects ("input": side, channels, and the
mean/std of pixels scaled to [0, 1]).
"""

from __future__ import annotations

import dataclasses
import json
import tempfile
import time
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from common.paths import CONF_DIR
from common.validation import require
from job.config import Config, compose_unchecked, to_plain_dict, validate

EVALUATION_FILE = "evaluation.json"
# Sections that describe where a run happened, not what it trained.
NOT_CARRIED = ("cluster", "ray", "run", "debug")
# Sections whose group option (`data=`, `optim=`, ...) is named by their `name` key.
OPTION_GROUPS = ("data", "optim", "precision", "comms")
METRICS = ("val_top1", "val_top5", "val_loss", "val_samples")


def stored_config(checkpoint: str) -> dict:
    """The training config of `checkpoint` (a `checkpoint_*` folder), as plain data."""
    from trainers.checkpoint import CHECKPOINT_FILE, load_state

    directory = Path(checkpoint)
    require((directory / CHECKPOINT_FILE).is_file(),
            f"no raylars checkpoint at {directory} (expected {directory / CHECKPOINT_FILE})")
    # mmap: the config without reading every tensor of a large model.
    saved = load_state(directory / CHECKPOINT_FILE, map_location="cpu", mmap=True)
    if "config" in saved:
        return saved["config"]
    summary = directory.resolve().parent.parent / "summary.json"
    require(summary.is_file(), f"checkpoint {directory} holds no config (written before "
                               f"checkpoints did) and there is no {summary} to read it from")
    return json.loads(summary.read_text())["config"]


def evaluation_config(checkpoint: str, overrides: list[str] | None = None) -> Config:
    """The checkpoint's training config with `overrides` (Hydra syntax) on top, validated
    (ValueError naming the key, before Ray starts)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    stored = stored_config(checkpoint)
    try:
        parsed = OverridesParser.create().parse_overrides(list(overrides or []))
    except HydraException as error:
        raise ValueError(f"bad override: {str(error).splitlines()[0]}") from None
    groups = {o.key_or_group: o for o in parsed if (CONF_DIR / o.key_or_group).is_dir()}
    for group, override in groups.items():
        known = sorted(path.stem for path in (CONF_DIR / group).glob("*.yaml"))
        hint = " (or model.name=<any torchvision classifier>)" if group == "model" else ""
        require(override.value() in known, f"{override.input_line}: unknown option; known: "
                                            f"{', '.join(known)}{hint}")
    choices = [f"{name}={stored[name]['name']}" for name in OPTION_GROUPS
               if name not in groups and name in stored]
    try:
        cfg = compose_unchecked(choices + [o.input_line for o in groups.values()])
        _apply(cfg, stored=stored, parsed=parsed, groups=groups)
    except (HydraException, OmegaConfBaseException) as error:  # e.g. a value of a wrong type
        key = getattr(error, "full_key", None)
        raise ValueError(f"{key + ': ' if key else ''}{str(error).splitlines()[0]}") from None
    if cfg.run.output_dir is None:  # like Hydra's run directories, beside them
        cfg.run.output_dir = str(Path("outputs", "evaluate", time.strftime("%Y-%m-%d"),
                                      time.strftime("%H-%M-%S")).resolve())
    return validate(cfg)


def _apply(cfg: DictConfig, *, stored: dict, parsed: list, groups: dict) -> None:
    """The stored sections, then the command line's key overrides, onto `cfg`."""
    for section, values in stored.items():
        changed = section in groups and groups[section].value() != values.get("name")
        if section in NOT_CARRIED or section not in cfg or changed:
            continue
        _merge_known(cfg[section], values)
    cfg.trainer.resume_from = None
    cfg.run.name = "evaluate"
    for override in parsed:
        if override.key_or_group in groups:
            continue
        require(not override.is_delete(), f"{override.input_line}: deleting a key is not "
                                          "supported here")
        key = override.key_or_group
        parent, _, leaf = key.rpartition(".")
        node = OmegaConf.select(cfg, parent) if parent else cfg
        require(override.is_add() or (isinstance(node, DictConfig) and leaf in node),
                f"{key}: unknown config key")
        OmegaConf.update(cfg, key, override.value(), merge=False, force_add=override.is_add())


def _merge_known(node: DictConfig, values: dict) -> None:
    """Set node's keys from `values`, leaving out keys the schema no longer has (a
    checkpoint from an older version)."""
    for key, value in values.items():
        if key not in node:
            continue
        child = node[key]
        # A schema's section recurses; a free dict (e.g. trainer.worker_resources) is a value.
        if isinstance(child, DictConfig) and dataclasses.is_dataclass(OmegaConf.get_type(child)):
            _merge_known(child, value)
        else:
            node[key] = value


def evaluate_loop_per_worker(loop_config: dict) -> None:
    """Each rank: the Trainer of the training loop with the checkpoint's weights; the val
    split evaluated once across the ranks; rank 0 reports the totals."""
    import ray.train
    import ray.train.torch
    import torch

    from ingest.memory import MemoryFeed
    from job.loop import RayFeed
    from trainers.checkpoint import CHECKPOINT_FILE, load_state
    from trainers.worker import Trainer

    config: Config = loop_config["config"]
    torch.set_num_threads(config.trainer.torch_threads or max(1, int(config.trainer.cpus_per_worker)))
    context = ray.train.get_context()
    rank, world_size = context.get_world_rank(), context.get_world_size()
    device = ray.train.torch.get_device()
    info = loop_config["info"]
    if loop_config["preprocess_in_workers"]:
        feed = MemoryFeed(info.in_memory, info, rank=rank, world_size=world_size, device=device)
    else:
        feed = RayFeed(info, config=config, rank=rank, world_size=world_size, device=device)
    state = load_state(Path(loop_config["checkpoint"]) / CHECKPOINT_FILE, map_location=device)
    # No run_dir: an evaluation writes no TensorBoard events or training records.
    trainer = Trainer(config, rank=rank, world_size=world_size, device=device, data=feed)
    try:
        # Every rank loads the same weights (after the sync's wrap, which broadcast its own).
        trainer.model.load_state_dict(state["model"])
        top1, top5, samples, loss_sum = trainer.sync.all_reduce_sum(trainer.evaluate()).tolist()
    finally:
        trainer.close()
    metrics = {"val_top1": top1 / samples, "val_top5": top5 / samples,
               "val_loss": loss_sum / samples, "val_samples": int(samples),
               "world_size": world_size, "data_feed": feed.name}
    # Train V2 keeps a report's metrics only with a checkpoint: rank 0 adds a tiny one.
    with tempfile.TemporaryDirectory() as directory:
        checkpoint = None
        if rank == 0:
            (Path(directory) / EVALUATION_FILE).write_text(json.dumps(metrics))
            checkpoint = ray.train.Checkpoint.from_directory(directory)
        ray.train.report(metrics, checkpoint=checkpoint, checkpoint_dir_name="evaluation")


def run_evaluation(config: Config, *, checkpoint: str, export: str | None = None) -> dict:
    """Evaluate `checkpoint` with `config` (from `evaluation_config`); write
    evaluation.json in `run.output_dir` (and the export, if asked) and return its dict."""
    from ingest import build_datasets
    from job.session import ray_session
    from job.trainer import build_trainer, preprocess_in_workers

    checkpoint = str(Path(checkpoint).resolve())
    with ray_session(config) as output_dir:
        datasets, info = build_datasets(config.data, seed=config.trainer.seed,
                                        in_workers=preprocess_in_workers(config))
        trainer = build_trainer(config, datasets=datasets, info=info,
                                run_dir=output_dir / config.run.name,
                                loop=evaluate_loop_per_worker,
                                loop_extra={"checkpoint": checkpoint})
        metrics = trainer.fit().metrics or {}
    require(set(METRICS) <= metrics.keys(), f"the evaluation of {checkpoint} reported no "
                                            f"metrics (got {sorted(metrics)})")
    result = {**{key: metrics[key] for key in METRICS}, "world_size": metrics["world_size"],
              "data_feed": metrics["data_feed"], "checkpoint": checkpoint,
              "num_classes": info.num_classes, "export": None,
              "evaluation_path": str(output_dir / EVALUATION_FILE),
              "config": to_plain_dict(config)}
    if export is not None:
        result["export"] = export_model(
            checkpoint=checkpoint, path=export,
            model={"name": config.model.name, "num_classes": info.num_classes,
                   "in_channels": info.in_channels, "image_size": config.data.image_size},
            inputs={"image_size": config.data.image_size, "channels": info.in_channels,
                    "mean": list(info.mean), "std": list(info.std)},
            evaluation={key: result[key] for key in METRICS})
    (output_dir / EVALUATION_FILE).write_text(json.dumps(result, indent=2))
    return result


def export_model(*, checkpoint: str, path: str, model: dict, inputs: dict,
                 evaluation: dict) -> str:
    """Write the checkpoint's model state_dict alone to `path` and what rebuilds and feeds
    it to `path`.json; checked by loading it into a freshly built model. Returns `path`."""
    import torch

    from trainers.checkpoint import CHECKPOINT_FILE, load_state
    from trainers.models import build_model

    state = load_state(Path(checkpoint) / CHECKPOINT_FILE, map_location="cpu")
    weights = {key.removeprefix("_orig_mod."): value.contiguous()
               for key, value in state["model"].items()}
    build_model(**model).load_state_dict(weights)  # strict: the export must fit the model
    target = Path(path).resolve()
    target.parent.mkdir(parents=True, exist_ok=True)
    torch.save(weights, target)
    meta = {"model": model, "input": {**inputs, "pixels": "uint8 / 255, then (x - mean) / std"},
            "checkpoint": checkpoint, "evaluation": evaluation}
    Path(f"{target}.json").write_text(json.dumps(meta, indent=2))
    return str(target)
