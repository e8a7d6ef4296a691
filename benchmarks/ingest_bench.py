"""Measure the input pipeline (ingest/) on this machine.

1. Preprocessing throughput: images/s of the Ray Data pipeline (read + decode +
   random-resized-crop + flip in map_batches tasks) vs a torch DataLoader doing the same
   per-sample work (the same TransformSpec) with the same number of CPU processes.
2. Feeding a model: median train-step time of a compute-bound model fed by the pipeline
   (iter_torch_batches with prefetch) vs the same batches already in memory.

    python benchmarks/ingest_bench.py --cpus 2 --epochs 3 [--json out.json]

Epochs alternate between the two sides, so load from other users hits both alike; the
first epoch of each side (worker start-up) is reported apart and left out of the medians.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from bench_util import write_json

from ingest.config import DataConfig
from ingest.datasets import sizing_of
from ingest.imagefolder import FolderSource, list_dataset
from ingest.pipeline import (
    PipelineState,
    Sample,
    SplitRecipe,
    TransformSpec,
    build_split,
    split_bounds,
)
from ingest.prepare import prepare
from ingest.sizing import BlockSizing


class FolderDataset(torch.utils.data.Dataset):
    """The DataLoader side: the same files and TransformSpec, one sample per __getitem__."""

    def __init__(self, listing, *, spec: TransformSpec, seed: int):
        self.paths, self.labels = listing.paths, listing.labels
        self.spec, self.seed, self.epoch = spec, seed, 0

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int):
        sample = Sample(index, int(self.labels[index]), Path(str(self.paths[index])),
                        origin=str(self.paths[index]))
        return self.spec.apply(sample, seed=self.seed, epoch=self.epoch), sample.label


def ray_epoch(dataset, state, *, epoch: int, batch_size: int) -> tuple[int, float]:
    import ray

    ray.get(state.set_epoch.remote(epoch))
    start, count = time.perf_counter(), 0
    for batch in dataset.iter_batches(batch_size=batch_size, batch_format="numpy",
                                      prefetch_batches=2):
        count += len(batch["label"])
    return count, time.perf_counter() - start


def loader_epoch(loader, *, epoch: int) -> tuple[int, float]:
    loader.dataset.epoch = epoch  # read by the workers: persistent_workers is off
    loader.sampler.generator.manual_seed(epoch)
    start, count = time.perf_counter(), 0
    for images, _ in loader:
        count += len(images)
    return count, time.perf_counter() - start


def train_pipeline(*, root: str, cpus: int, batch_size: int, size: int,
                   num_blocks: int | None = None, reservation: bool = False):
    """The train split's Ray Data pipeline both measurements use: ImageFolder JPEGs decoded,
    random-resized-cropped and flipped in map_batches. Returns (listing, spec, state, dataset).
    `num_blocks` (None: what a training run with `cpus` spare CPUs gets, ingest/sizing.py)
    and `reservation` (Ray Data's per-operator CPU reservation, which build_split turns
    off) exist to measure what those choices cost."""
    listing = list_dataset(root=root, num_classes=None)["train"]
    spec = TransformSpec(train=True, augment="crop_flip", size=size, channels=3, max_shift_px=0,
                         min_crop_scale=0.08, val_crop_fraction=0.875, on_error="raise")
    state = PipelineState.remote()
    sizing = sizing_of(DataConfig(preprocess_batch_size=batch_size))
    if num_blocks is not None:  # exactly num_blocks: the floor, with no row cap
        sizing = BlockSizing(min_blocks=num_blocks, max_rows=1 << 30, min_rows=1 << 30)
    recipe = SplitRecipe(source=FolderSource.put(listing), spec=spec, state=state, split="train",
                         seed=0, shuffle=True, num_rows=len(listing.labels), sizing=sizing,
                         chunk_rows=batch_size, preprocess_cpus=cpus)
    dataset = build_split(recipe, cpus=cpus)
    dataset.context.op_resource_reservation_enabled = reservation
    print(f"[ingest] {len(split_bounds(recipe, cpus=cpus)) - 1} blocks", flush=True)
    return listing, spec, state, dataset


def throughput(*, root: str, cpus: int, epochs: int, batch_size: int, size: int,
               num_blocks: int | None, reservation: bool) -> dict:
    listing, spec, state, dataset = train_pipeline(root=root, cpus=cpus, batch_size=batch_size,
                                                   size=size, num_blocks=num_blocks,
                                                   reservation=reservation)
    torch_set = FolderDataset(listing, spec=spec, seed=0)
    loader = torch.utils.data.DataLoader(
        torch_set, batch_size=batch_size, num_workers=cpus,
        sampler=torch.utils.data.RandomSampler(torch_set, generator=torch.Generator()))
    rates = {"ray_data": [], "dataloader": []}
    for epoch in range(epochs):
        for name in ("ray_data", "dataloader"):
            count, seconds = (ray_epoch(dataset, state, epoch=epoch, batch_size=batch_size)
                              if name == "ray_data" else loader_epoch(loader, epoch=epoch))
            rates[name].append(count / seconds)
            print(f"[ingest] throughput epoch {epoch} {name}: {count / seconds:.0f} img/s",
                  flush=True)
    steady = {name: statistics.median(r[1:]) for name, r in rates.items()}
    return {"images": len(listing.labels), "cpus": cpus, "image_size": size,
            "num_blocks": num_blocks, "reservation": reservation,
            "img_per_s": rates, "steady_img_per_s": steady,
            "ray_over_dataloader": steady["ray_data"] / steady["dataloader"]}


def feeding(*, root: str, cpus: int, epochs: int, batch_size: int, size: int,
            model_threads: int) -> dict:
    import ray

    from trainers.models import build_model

    listing, spec, state, dataset = train_pipeline(root=root, cpus=cpus, batch_size=batch_size,
                                                   size=size)
    torch.set_num_threads(model_threads)
    torch.manual_seed(0)
    model = build_model(name="small_resnet", num_classes=10, in_channels=3)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)

    def step(images_u8, labels):
        optimizer.zero_grad(set_to_none=True)
        loss = torch.nn.functional.cross_entropy(model(images_u8.float().div_(255.0)), labels)
        loss.backward()
        optimizer.step()

    def timed_epoch(batches) -> list[float]:
        times, last = [], time.perf_counter()
        for images, labels in batches:
            step(images, labels)
            now = time.perf_counter()
            times.append(now - last)  # includes the wait for the batch
            last = now
        return times

    def pipeline_batches(epoch):
        ray.get(state.set_epoch.remote(epoch))
        for batch in dataset.iter_torch_batches(batch_size=batch_size, drop_last=True,
                                                prefetch_batches=2):
            yield batch["image"], batch["label"]

    ray.get(state.set_epoch.remote(0))
    in_memory = [(b["image"], b["label"]) for b in dataset.iter_torch_batches(
        batch_size=batch_size, drop_last=True)]
    step_ms = {"pipeline": [], "in_memory": []}
    for epoch in range(epochs):
        fed = timed_epoch(pipeline_batches(epoch))
        resident = timed_epoch(in_memory)
        # Skip each epoch's first step: the pipeline's start (reported in first_step_ms).
        step_ms["pipeline"].append(1000 * statistics.median(fed[1:]))
        step_ms["in_memory"].append(1000 * statistics.median(resident[1:]))
        print(f"[ingest] feeding epoch {epoch}: pipeline {step_ms['pipeline'][-1]:.1f} ms/step "
              f"(first {1000 * fed[0]:.0f} ms), in memory {step_ms['in_memory'][-1]:.1f} ms/step",
              flush=True)
    steady = {name: statistics.median(v[1:] if len(v) > 1 else v) for name, v in step_ms.items()}
    return {"model": "small_resnet", "image_size": size, "batch_size": batch_size,
            "model_threads": model_threads, "pipeline_cpus": cpus, "step_ms": step_ms,
            "steady_step_ms": steady, "pipeline_over_in_memory": steady["pipeline"] / steady["in_memory"]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cpus", type=int, default=2, help="preprocessing processes, both sides")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--copies", type=int, default=2, help="augmented digits copies")
    parser.add_argument("--source-size", type=int, default=128, help="side of the JPEG files")
    parser.add_argument("--size", type=int, default=96, help="side fed to the model")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--model-threads", type=int, default=1)
    parser.add_argument("--data", default=None, help="an existing ImageFolder tree")
    parser.add_argument("--json", default=None)
    parser.add_argument("--skip-feeding", action="store_true")
    parser.add_argument("--num-blocks", type=int, default=None,
                        help="blocks (= preprocessing tasks) per epoch; default: data.num_blocks")
    parser.add_argument("--reservation", action="store_true",
                        help="keep Ray Data's per-operator CPU reservation (off in raylars)")
    args = parser.parse_args(argv)

    import ray

    from job.session import init_local_ray

    os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
    with tempfile.TemporaryDirectory() as scratch:
        root = args.data or str(Path(scratch) / "digits")
        if args.data is None:
            prepare(output=root, fmt="imagefolder", copies=args.copies,
                    image_size=args.source_size, encoding="jpeg")
        # A private cluster with exactly the preprocessing CPUs (+1 for the feeding model).
        init_local_ray(num_cpus=args.cpus + 1, include_dashboard=False)
        from ray.data import DataContext

        DataContext.get_current().execution_options.preserve_order = True
        results = {"throughput": throughput(root=root, cpus=args.cpus, epochs=args.epochs,
                                            batch_size=args.batch_size, size=args.size,
                                            num_blocks=args.num_blocks,
                                            reservation=args.reservation)}
        if not args.skip_feeding:
            results["feeding"] = feeding(root=root, cpus=args.cpus, epochs=args.epochs,
                                         batch_size=args.batch_size, size=args.size,
                                         model_threads=args.model_threads)
        ray.shutdown()
    print(json.dumps(results, indent=2))
    if args.json:
        write_json(args.json, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
