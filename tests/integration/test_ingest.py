"""The file formats end to end on the session's Ray cluster, with files made in the test:
exactly-once epochs over 2 workers, corrupt images skipped and counted or raising, val
evaluated once per sample over 3 workers, and blocks sized for the cluster's CPUs."""

import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ingest.prepare import prepare
from job.config import compose
from job.trainer import run_training

# Prepared digits at 16x16, grayscale: a small, fast set for the file formats.
EPOCHS = 3
DIGITS_FILE_OVERRIDES = ["data.channels=1", "data.image_size=16", f"trainer.epochs={EPOCHS}",
                         "optim.warmup_epochs=1"]
NUM_TRAIN = 1437


def sample_ids(run_dir: Path, *, epoch: int, world_size: int = 2) -> list[np.ndarray]:
    """Each rank's trained ids of `epoch` (its checkpoint segments' files, in step order)."""
    directory = run_dir / "train" / "sample_ids"
    return [np.concatenate([np.load(path) for path in
                            sorted(directory.glob(f"epoch{epoch:04d}_step*_rank{rank}.npy"))])
            for rank in range(world_size)]


def error_text(error: BaseException) -> str:
    """The error and its causes, with each failed worker's full error (Train's message
    holds only a snippet)."""
    parts = []
    while error is not None:
        parts.append(str(error))
        parts.extend(str(failure) for failure in getattr(error, "worker_failures", {}).values())
        error = error.__cause__ or error.__context__
    return "\n".join(parts)


def test_imagefolder_trains_each_sample_at_most_once_per_epoch(ray_cluster, tmp_path):
    prepare(output=str(tmp_path / "data"), fmt="imagefolder", image_size=16)
    summary = run_training(compose(DIGITS_FILE_OVERRIDES + [
        "data=imagefolder", f"data.path={tmp_path / 'data'}", "data.augment=crop_flip",
        "data.min_crop_scale=0.5", "data.record_sample_ids=true", f"run.output_dir={tmp_path}"]))
    steps = summary["steps_per_epoch"]
    assert steps == NUM_TRAIN // 64 and summary["global_steps"] == EPOCHS * steps
    assert summary["skipped_samples"] == 0 and np.isfinite(summary["train_loss"])
    for epoch in range(EPOCHS):
        ranks = sample_ids(tmp_path, epoch=epoch)
        assert [len(ids) for ids in ranks] == [steps * 32] * 2
        seen = np.concatenate(ranks)
        # Exactly once: no sample twice; the ones left out are the documented remainder
        # (the last NUM_TRAIN % 64 positions of the epoch's permutation).
        assert len(np.unique(seen)) == len(seen)
        assert set(seen.tolist()) <= set(range(NUM_TRAIN))
        assert NUM_TRAIN - len(seen) == NUM_TRAIN % 64
    # A new global permutation each epoch: the workers see different samples.
    assert set(sample_ids(tmp_path, epoch=0)[0]) != set(sample_ids(tmp_path, epoch=1)[0])


def corrupt_parquet_row(path: Path, *, row: int) -> None:
    table = pq.read_table(path)
    images = table.column("image").to_pylist()
    images[row] = b"\x89PNG\r\n\x1a\n this is not an image"
    table = table.set_column(table.schema.get_field_index("image"), "image",
                             pa.array(images, pa.binary()))
    pq.write_table(table, path, row_group_size=256)


def test_parquet_skips_and_counts_corrupt_images(ray_cluster, tmp_path):
    root = tmp_path / "data"
    prepare(output=str(root), fmt="parquet", image_size=16, rows_per_file=1000,
            rows_per_group=256)
    corrupt_parquet_row(root / "train" / "part-00001.parquet", row=5)
    corrupt_parquet_row(root / "val" / "part-00000.parquet", row=0)
    summary = run_training(compose(DIGITS_FILE_OVERRIDES + [
        "data=parquet", f"data.path={root}", "data.augment=shift", "data.val_crop_fraction=1",
        "data.record_sample_ids=true", f"run.output_dir={tmp_path}"]))
    # Counted once each, though every epoch meets them again.
    assert summary["skipped_samples"] == 2
    steps = summary["steps_per_epoch"]
    # Steps are the epoch's full global batches; a step holding the corrupt sample trains
    # one sample fewer on its rank.
    assert steps == NUM_TRAIN // 64 and summary["global_steps"] == EPOCHS * steps
    corrupt_id = pq.read_table(root / "train" / "part-00001.parquet").column("id")[5].as_py()
    for epoch in range(EPOCHS):
        seen = np.concatenate(sample_ids(tmp_path, epoch=epoch))
        assert len(np.unique(seen)) == len(seen) and corrupt_id not in seen
    assert 0.0 <= summary["val_top1"] <= 1.0


def test_on_error_raise_names_the_corrupt_file(ray_cluster, tmp_path):
    root = tmp_path / "data"
    prepare(output=str(root), fmt="imagefolder", image_size=16)
    broken = sorted((root / "train" / "3").iterdir())[4]
    broken.write_bytes(b"GIF89a broken")
    config = compose(DIGITS_FILE_OVERRIDES + [
        "data=imagefolder", f"data.path={root}", "data.on_error=raise",
        f"run.output_dir={tmp_path / 'run'}"])
    with pytest.raises(Exception) as caught:
        run_training(config)
    text = error_text(caught.value)
    assert str(broken) in text and "data.on_error=raise" in text


def test_digits_preprocessed_in_the_workers_exactly_once_and_reproducibly(ray_cluster, tmp_path):
    """data.preprocess_on=workers (what `auto` picks on a small machine): each epoch's
    shards are disjoint, every val sample is evaluated once, and a second run with the same
    seed gives the same losses bit for bit."""
    overrides = ["data.preprocess_on=workers", "trainer.epochs=2", "optim.warmup_epochs=1",
                 "data.record_sample_ids=true"]
    first = run_training(compose(overrides + [f"run.output_dir={tmp_path / 'a'}"]))
    second = run_training(compose(overrides + [f"run.output_dir={tmp_path / 'b'}"]))
    assert first["data_feed"] == "workers" and first["val_samples"] == 360
    steps = first["steps_per_epoch"]
    for epoch in range(2):
        ranks = sample_ids(tmp_path / "a", epoch=epoch)
        assert [len(ids) for ids in ranks] == [steps * 32] * 2
        seen = np.concatenate(ranks)
        assert len(np.unique(seen)) == len(seen)
    assert set(sample_ids(tmp_path / "a", epoch=0)[0]) != set(sample_ids(tmp_path / "a", epoch=1)[0])
    losses = [[h["train_loss"] for h in run["history"]] for run in (first, second)]
    assert losses[0] == losses[1] and np.isfinite(losses[0]).all()


# ---- validation once per sample, and blocks sized for the cluster --------------------

NUM_VAL_UNEVEN = 362  # digits val at val_fraction 0.201: not a multiple of 3 workers


def evaluation_loop(loop_config: dict) -> None:
    """A Ray Train loop that only evaluates a checkpoint, through the real RayFeed and
    Trainer.evaluate, and records the val ids each rank saw."""
    import ray.train
    import torch

    from job.loop import RayFeed
    from trainers.checkpoint import CHECKPOINT_FILE, load_state
    from trainers.worker import Trainer

    config, context = loop_config["config"], ray.train.get_context()
    rank, world_size = context.get_world_rank(), context.get_world_size()
    device = torch.device("cpu")
    feed = RayFeed(loop_config["info"], config=config, rank=rank, world_size=world_size,
                   device=device)
    seen, batches = [], feed.val_batches

    def recording(*, batch_size):
        for batch in batches(batch_size=batch_size):
            seen.append(batch["id"].numpy())
            yield batch

    feed.val_batches = recording
    state = load_state(Path(loop_config["checkpoint"]) / CHECKPOINT_FILE, map_location=device)
    trainer = Trainer(config, rank=rank, world_size=world_size, device=device, data=feed,
                      checkpoint=state)
    counts = trainer.sync.all_reduce_sum(trainer.evaluate()).tolist()
    trainer.close()
    out = Path(loop_config["out"])
    np.save(out / f"rank{rank}.npy", np.concatenate(seen))
    if rank == 0:  # Train V2 keeps metrics only with a checkpoint: a file instead
        np.save(out / "counts.npy", np.asarray(counts))
    ray.train.report({})


def evaluate_checkpoint(config, *, checkpoint: str, workers: int, out: Path) -> list[float]:
    """[top-1 hits, top-5 hits, samples] of `checkpoint` over val with `workers` workers."""
    from ray import cloudpickle
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from ingest import build_datasets, trainer_data_config

    # The workers cannot import this test module: ship evaluation_loop by value.
    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    out.mkdir(parents=True)
    datasets, info = build_datasets(config.data, seed=config.trainer.seed)
    trainer = TorchTrainer(
        evaluation_loop, scaling_config=ScalingConfig(num_workers=workers),
        train_loop_config={"config": config, "info": info, "checkpoint": checkpoint,
                           "out": str(out)},
        datasets=datasets, run_config=RunConfig(name=f"eval{workers}", storage_path=str(out)),
        dataset_config=trainer_data_config(info, config=config.data, cpus_per_worker=1,
                                           global_batch_size=64))
    trainer.fit()
    return np.load(out / "counts.npy").tolist()


def test_val_is_evaluated_once_across_workers_with_the_top1_of_one_worker(ray_cluster, tmp_path):
    """3 workers on a val set of 362: every sample evaluated exactly once (by one rank),
    and a fixed trained checkpoint scores the same with 3 workers as with 1, and as the
    training run reported."""
    root = tmp_path / "data"
    counts = prepare(output=str(root), fmt="imagefolder", image_size=64, encoding="jpeg",
                     val_fraction=0.201)
    assert counts["val"] == NUM_VAL_UNEVEN
    overrides = ["data=imagefolder", f"data.path={root}", "data.channels=1",
                 "data.image_size=16", "trainer.epochs=1", "optim.warmup_epochs=0"]
    summary = run_training(compose(overrides + ["trainer.num_workers=3",
                                                f"run.output_dir={tmp_path / 'run'}"]))
    assert summary["world_size"] == 3 and summary["val_samples"] == NUM_VAL_UNEVEN
    config = compose(overrides + [f"run.output_dir={tmp_path / 'eval'}"])
    results = {}
    for workers in (1, 3):
        out = tmp_path / f"eval{workers}"
        results[workers] = evaluate_checkpoint(config, checkpoint=summary["checkpoint"],
                                               workers=workers, out=out)
        ranks = [np.load(out / f"rank{rank}.npy") for rank in range(workers)]
        seen = np.concatenate(ranks)
        # Each val sample once, in balanced contiguous slices (ids are listing order).
        assert sorted(seen.tolist()) == list(range(NUM_VAL_UNEVEN))
        assert max(map(len, ranks)) - min(map(len, ranks)) <= 1
    # Hits and samples exactly (the loss sum, results[3], rounds by batch).
    assert results[1][:3] == results[3][:3] and results[3][2] == NUM_VAL_UNEVEN
    assert results[3][0] / NUM_VAL_UNEVEN == summary["val_top1"]


def test_blocks_follow_the_cpus_the_workers_leave(ray_cluster):
    """The tasks per epoch grow with the spare CPUs (6 CPUs in the session cluster), the
    built Datasets have those blocks, and every layout reads each sample once."""
    import ray

    from ingest import build_datasets, trainer_data_config
    from ingest.pipeline import build_split, split_bounds

    data = compose(["data.preprocess_on=tasks"]).data
    datasets, info = build_datasets(data, seed=0)
    recipe = info.recipes["train"]
    sharding = trainer_data_config(info, config=data, cpus_per_worker=1, global_batch_size=64)
    assert ray.cluster_resources()["CPU"] == 6
    assert [sharding.spare_cpus(world) for world in (2, 3, 5)] == [4, 3, 1]
    # Pure sizing: 1437 train rows, one block per spare CPU (2 at least: data.num_blocks).
    assert [len(split_bounds(recipe, cpus=cpus)) - 1 for cpus in (1, 2, 6, 64)] == [2, 2, 6, 22]
    train_ids = sorted(recipe.source.ids.tolist())
    for cpus in (4, 1):
        dataset = build_split(recipe, cpus=cpus).materialize()
        assert f"{max(2, cpus)} tasks executed" in dataset.stats()
        assert sorted(np.concatenate([b["id"] for b in dataset.iter_batches(
            batch_format="numpy")]).tolist()) == train_ids
    # Per-rank val slices: disjoint, covering val, balanced within one sample.
    shards = sharding.val_shards(datasets["val"], world_size=3, cpus=3)
    ranks = [np.concatenate([b["id"] for b in shard.iter_batches(batch_format="numpy")])
             for shard in shards]
    assert sorted(np.concatenate(ranks).tolist()) == sorted(info.recipes["val"].source.ids.tolist())
    assert max(map(len, ranks)) - min(map(len, ranks)) <= 1


def test_val_without_a_recipe_is_split_without_dropping_rows(ray_cluster):
    """Synthetic val (no recipe): streaming_split(equal=False) over 3 readers at once
    reads each of 50 rows once (dealt by whole blocks: with 2 blocks a reader gets none);
    equal=True would drop rows."""
    from concurrent.futures import ThreadPoolExecutor

    from ingest import build_datasets, trainer_data_config

    data = compose(["data=synthetic", "data.num_val_samples=50", "data.image_size=8"]).data
    datasets, info = build_datasets(data, seed=0)
    sharding = trainer_data_config(info, config=data, cpus_per_worker=1, global_batch_size=64)
    shards = sharding.val_shards(datasets["val"], world_size=3, cpus=3)

    def read(shard):  # a streaming split starts once every reader asks
        ids = [b["id"] for b in shard.iter_batches(batch_format="numpy")]
        return np.concatenate(ids) if ids else np.empty(0, np.int64)

    with ThreadPoolExecutor(3) as pool:
        ranks = list(pool.map(read, shards))
    assert sorted(np.concatenate(ranks).tolist()) == list(range(50))
