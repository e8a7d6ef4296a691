"""Per-core preprocessing throughput on ImageNet-like photos: raylars' train transform
(ingest/transforms.py: header read, crop box drawn, JPEG draft decode at the smallest
scale that keeps the box >= the output, one fused crop+resize, flip) against torchvision's
standard pipeline (ImageFolder's PIL loader, RandomResizedCrop, RandomHorizontalFlip,
PILToTensor), on the same files, one core each.

    python benchmarks/decode_bench.py --images 384 --width 500 --height 375 --size 224 \
        [--epochs 4] [--json out.json]

1. In process, one thread: ms per image of each transform alone (best of --repeats passes
   over the files; also raylars' previous path: full decode, a full-size CHW tensor,
   torchvision's tensor resized_crop).
2. Framework, one core each: the Ray Data pipeline (ingest/pipeline.py, a 1-CPU Ray
   instance, read with iter_batches) against a torch DataLoader with num_workers=1
   running torchvision's transforms, batch 64, epochs alternating; epoch 0 (start-up)
   is left out of the medians.
The photos are `ingest.prepare.write_photos` JPEGs (quality 90: smooth colour fields plus
texture), written to a temporary folder.
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from bench_util import write_json

from ingest.config import DataConfig
from ingest.datasets import sizing_of
from ingest.imagefolder import FolderSource, list_split
from ingest.pipeline import PipelineState, Sample, SplitRecipe, TransformSpec, build_split
from ingest.prepare import write_photos
from ingest.transforms import crop_flip, decode, sample_rng


def torchvision_transform(size: int):
    from torchvision import transforms as T

    return T.Compose([T.RandomResizedCrop(size), T.RandomHorizontalFlip(), T.PILToTensor()])


def pil_loader(path: str):
    """torchvision.datasets.folder.pil_loader: the ImageFolder default."""
    from PIL import Image

    with open(path, "rb") as file:
        return Image.open(file).convert("RGB")


def train_spec(size: int) -> TransformSpec:
    return TransformSpec(train=True, augment="crop_flip", size=size, channels=3, max_shift_px=0,
                         min_crop_scale=0.08, val_crop_fraction=0.875, on_error="raise")


def in_process(paths: list[str], *, size: int, repeats: int) -> dict:
    """Best ms per image over `repeats` passes, one thread, for each transform."""
    torch.set_num_threads(1)
    data = [Path(p).read_bytes() for p in paths]  # from memory: the transform, not the disk
    spec, out = train_spec(size), np.empty((3, size, size), np.uint8)
    tv = torchvision_transform(size)

    def raylars(index):
        sample = Sample(index, 0, data[index], origin=paths[index])
        spec.write(sample, out, seed=0, epoch=0)

    def raylars_before(index):
        rng = sample_rng(seed=0, epoch=0, sample_id=index)
        out[...] = crop_flip(decode(data[index], channels=3), rng=rng, size=size,
                             min_scale=0.08).numpy()

    def torchvision(index):
        from PIL import Image

        tv(Image.open(io.BytesIO(data[index])).convert("RGB"))

    results = {}
    for name, fn in (("raylars", raylars), ("raylars_before", raylars_before),
                     ("torchvision", torchvision)):
        best = float("inf")
        for _ in range(repeats):
            start = time.perf_counter()
            for index in range(len(data)):
                fn(index)
            best = min(best, time.perf_counter() - start)
        results[name] = {"ms_per_image": 1000 * best / len(data),
                         "img_per_s": len(data) / best}
        print(f"[decode] in process {name}: {results[name]['ms_per_image']:.2f} ms/img",
              flush=True)
    return results


class TorchvisionFolder(torch.utils.data.Dataset):
    def __init__(self, paths: list[str], *, size: int):
        self.paths, self.transform = paths, torchvision_transform(size)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int):
        return self.transform(pil_loader(self.paths[index])), 0


def framework(root: str, paths: list[str], *, size: int, epochs: int, batch: int) -> dict:
    """img/s per epoch of the Ray Data pipeline on 1 CPU and a 1-worker DataLoader."""
    import ray

    listing = list_split(root=root, split="train")
    state = PipelineState.remote()
    recipe = SplitRecipe(source=FolderSource.put(listing), spec=train_spec(size), state=state,
                         split="train", seed=0, shuffle=True, num_rows=len(listing.labels),
                         sizing=sizing_of(DataConfig(preprocess_batch_size=batch)),
                         chunk_rows=batch, preprocess_cpus=1)
    dataset = build_split(recipe, cpus=1)
    torch_set = TorchvisionFolder(paths, size=size)
    loader = torch.utils.data.DataLoader(torch_set, batch_size=batch, num_workers=1,
                                         shuffle=True)
    rates = {"ray_data": [], "dataloader": []}
    for epoch in range(epochs):
        ray.get(state.set_epoch.remote(epoch))
        start, count = time.perf_counter(), 0
        for rows in dataset.iter_batches(batch_size=batch, batch_format="numpy",
                                         prefetch_batches=2):
            count += len(rows["label"])
        rates["ray_data"].append(count / (time.perf_counter() - start))
        start, count = time.perf_counter(), 0
        for images, _ in loader:
            count += len(images)
        rates["dataloader"].append(count / (time.perf_counter() - start))
        print(f"[decode] epoch {epoch}: ray_data {rates['ray_data'][-1]:.0f} img/s, "
              f"dataloader {rates['dataloader'][-1]:.0f} img/s", flush=True)
    steady = {name: statistics.median(r[1:] or r) for name, r in rates.items()}
    return {"img_per_s": rates, "steady_img_per_s": steady,
            "ray_over_dataloader": steady["ray_data"] / steady["dataloader"]}


def table(results: dict) -> list[str]:
    args, rows = results["args"], results["in_process"]
    tv = rows["torchvision"]["ms_per_image"]
    lines = [f"| {args['images']} JPEGs {args['width']}x{args['height']} q90 -> "
             f"{args['size']}, one core | ms/img | img/s | vs torchvision |", "|---|---|---|---|"]
    for name, label in (("raylars", "raylars crop_flip (draft decode, fused crop+resize)"),
                        ("raylars_before", "raylars before (full decode, tensor crop)"),
                        ("torchvision", "torchvision RandomResizedCrop+Flip+PILToTensor")):
        ms = rows[name]["ms_per_image"]
        lines.append(f"| {label}, in process | {ms:.2f} | {1000 / ms:.0f} | {tv / ms:.2f}x |")
    if "framework" in results:
        steady = results["framework"]["steady_img_per_s"]
        lines.append(f"| Ray Data pipeline, 1 CPU | | {steady['ray_data']:.0f} | "
                     f"{results['framework']['ray_over_dataloader']:.2f}x |")
        lines.append(f"| DataLoader num_workers=1, torchvision | | {steady['dataloader']:.0f} "
                     f"| 1.00x |")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=384)
    parser.add_argument("--width", type=int, default=500)
    parser.add_argument("--height", type=int, default=375)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--skip-framework", action="store_true")
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
    results = {"args": vars(args)}
    with tempfile.TemporaryDirectory() as scratch:
        paths = write_photos(output=scratch, count=args.images, width=args.width,
                             height=args.height)
        results["in_process"] = in_process(paths, size=args.size, repeats=args.repeats)
        if not args.skip_framework:
            import ray

            from job.session import init_local_ray

            # One CPU: one preprocessing task at a time, as the DataLoader's one worker.
            init_local_ray(num_cpus=1, include_dashboard=False)
            from ray.data import DataContext

            DataContext.get_current().execution_options.preserve_order = True
            try:
                results["framework"] = framework(scratch, paths, size=args.size,
                                                 epochs=args.epochs, batch=args.batch_size)
            finally:
                ray.shutdown()
    print("\n".join(table(results)), flush=True)
    if args.json:
        write_json(args.json, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
