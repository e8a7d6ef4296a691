"""Worker-side preprocessing of an in-memory set (ingest/memory.py): the step shares and val
slices of every rank cover each sample exactly once, deterministically per (seed, epoch),
with the pipeline's own transforms; and the auto rule picks workers only when the cluster
has no CPU to spare for tasks."""

import sys
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from common.paths import REPO_ROOT
from ingest.memory import MemoryFeed, MemorySplits, use_worker_preprocessing
from ingest.order import StepSlices, unit_order
from ingest.pipeline import ArraySource, TransformSpec


def spec(train: bool) -> TransformSpec:
    return TransformSpec(train=train, augment="shift", size=8, channels=1, max_shift_px=2,
                         min_crop_scale=0.08, val_crop_fraction=1.0, on_error="raise")


def splits(num_train=23, num_val=10, shuffle=True) -> MemorySplits:
    rng = np.random.default_rng(0)
    def source(n, first_id):
        return ArraySource(rng.integers(0, 256, (n, 1, 8, 8), dtype=np.uint8),
                           rng.integers(0, 10, n), np.arange(first_id, first_id + n))
    return MemorySplits(train=source(num_train, 0), val=source(num_val, 1000),
                        train_spec=spec(True), val_spec=spec(False), seed=3, shuffle=shuffle)


def feeds(data: MemorySplits, world_size: int) -> list[MemoryFeed]:
    info = SimpleNamespace(num_classes=10, in_channels=1, num_train=data.train.num_units,
                           mean=(0.5,), std=(0.25,))
    return [MemoryFeed(data, info, rank=r, world_size=world_size, device=torch.device("cpu"))
            for r in range(world_size)]


def train_ids(feed: MemoryFeed, *, epoch: int, global_batch: int, first_step: int = 0,
              num_steps: int | None = None) -> list[int]:
    slices = StepSlices(global_batch_size=global_batch, world_size=feed.world_size,
                        rank=feed.rank)
    steps = feed.num_train // global_batch if num_steps is None else num_steps
    return ids_of(feed.train_batches(epoch=epoch, slices=slices, first_step=first_step,
                                     num_steps=steps))


def ids_of(batches) -> list[int]:
    return [int(i) for batch in batches for i in batch["id"]]


def test_each_step_trains_its_slice_of_the_epoch_permutation_whatever_the_world_size():
    data = splits()
    for epoch in (0, 1):
        order = unit_order(num_units=23, seed=3, epoch=epoch, shuffle=True)
        # 23 samples in global batches of 5: 4 steps, positions [0, 20) in step order.
        for world in (1, 2, 3):
            seen = [train_ids(feed, epoch=epoch, global_batch=5) for feed in feeds(data, world)]
            assert sorted(i for ids in seen for i in ids) == sorted(order[:20].tolist())
        # Resumed at step 2 with 3 workers after 2 steps with 2: each sample once.
        before = [train_ids(f, epoch=epoch, global_batch=5, num_steps=2) for f in feeds(data, 2)]
        after = [train_ids(f, epoch=epoch, global_batch=5, first_step=2) for f in feeds(data, 3)]
        flat = [i for ids in before + after for i in ids]
        assert sorted(flat) == sorted(order[:20].tolist())
    one = feeds(data, 3)[1]
    assert train_ids(one, epoch=1, global_batch=5) == train_ids(feeds(data, 3)[1], epoch=1,
                                                                 global_batch=5)
    assert train_ids(one, epoch=1, global_batch=5) != train_ids(one, epoch=0, global_batch=5)


def test_val_covers_every_sample_exactly_once_over_uneven_ranks():
    data = splits(num_val=10)
    seen = [ids_of(feed.val_batches(batch_size=3)) for feed in feeds(data, world_size=3)]
    assert sorted(i for ids in seen for i in ids) == list(range(1000, 1010))
    assert sorted(len(ids) for ids in seen) == [3, 3, 4]


def test_batches_are_the_pipeline_transforms_of_each_sample():
    data = splits()
    feed = feeds(data, world_size=1)[0]
    slices = StepSlices(global_batch_size=4, world_size=1, rank=0)
    batch = next(iter(feed.train_batches(epoch=2, slices=slices, first_step=0, num_steps=5)))
    for image, label, sample_id in zip(batch["image"], batch["label"], batch["id"], strict=True):
        sample = data.train.sample(int(sample_id), data.train.images)  # ids == units here
        assert torch.equal(image, spec(True).apply(sample, seed=3, epoch=2))
        assert int(label) == sample.label


@pytest.mark.parametrize("choice,in_memory,cluster,training,expected", [
    ("auto", True, 2, 2, True),      # this machine: 2 cores, 2 workers
    ("auto", True, 96, 16, False),   # a GPU node: 80 CPUs to spare for tasks
    ("auto", False, 2, 2, False),    # files to decode: always tasks
    ("workers", True, 96, 16, True),
    ("workers", False, 2, 2, False),     # nothing in memory to preprocess there
    ("tasks", True, 2, 2, False),
])
def test_auto_rule(choice, in_memory, cluster, training, expected):
    assert use_worker_preprocessing(choice=choice, in_memory=in_memory, cluster_cpus=cluster,
                                    training_cpus=training, num_workers=8 if cluster == 96 else 2) \
        is expected


def test_startup_breakdown_names_each_phase():
    from job.trainer import startup_breakdown

    phases = startup_breakdown({"run_start": 10.0, "ray_started": 13.0, "datasets_built": 14.0},
                               {"worker_start": 20.0, "first_batch": 21.5, "first_step": 22.0})
    assert phases == {"ray_start": 3.0, "dataset_setup": 1.0, "worker_group_start": 6.0,
                      "first_batch": 1.5, "first_step": 0.5, "to_first_step": 12.0,
                      "run_start": 10.0}
    assert startup_breakdown({"run_start": 1.0}, {})["to_first_step"] is None



def test_what_trains_controller_unpickles_leaves_torchvision_unimported(tmp_path):
    """Ray Train's controller unpickles the run's config, data and callbacks before it
    starts the workers; a torchvision import there (about 1.5 s here) would delay every
    group start, and the controller never transforms an image. A fresh interpreter loads
    the same objects, pickled as Ray pickles them."""
    import ray.cloudpickle

    sys.path.insert(0, str(REPO_ROOT / "benchmarks"))
    from controller_imports import controller_payload, load_in_fresh_interpreter

    path = tmp_path / "payload.pkl"
    path.write_bytes(ray.cloudpickle.dumps(controller_payload(tmp_path / "run")))
    assert load_in_fresh_interpreter(path)["torchvision"] == []
