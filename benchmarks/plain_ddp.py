"""The baseline of the framework-tax benchmark: the default job written as a plain DDP
script, the way a user would before moving to raylars.

torchrun-style processes (torch.multiprocessing, gloo on loopback), the digits set in
memory, a torch DataLoader with a DistributedSampler applying the same per-sample
augmentation (a seeded random shift), and the same model, LARS optimizer, LR schedule,
global batch and seed as `python launch/run.py`. Writes a JSON summary: img/s per epoch
(training loop only, like raylars' epoch figure), time to the first step, wall time.

    python benchmarks/plain_ddp.py --epochs 15 --json /tmp/plain_ddp.json
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import socket
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.utils.data import DataLoader, Dataset, DistributedSampler


class ShiftedDigits(Dataset):
    """uint8 (1, S, S) digits, each shifted by a (seed, epoch, index)-seeded offset."""

    def __init__(self, images, labels, *, seed: int, max_shift_px: int, train: bool):
        self.images, self.labels = torch.from_numpy(images), torch.from_numpy(labels)
        self.seed, self.max_shift_px, self.train, self.epoch = seed, max_shift_px, train, 0

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int):
        from ingest.transforms import sample_rng, shift

        image = self.images[index]
        if self.train:
            rng = sample_rng(seed=self.seed, epoch=self.epoch, sample_id=index)
            image = shift(image, rng=rng, max_px=self.max_shift_px)
        return image, self.labels[index]


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _evaluate(model, loader, *, mean: float, std: float) -> tuple[float, float]:
    model.eval()
    correct = total = 0
    with torch.no_grad():
        for images, labels in loader:
            logits = model((images.float() / 255.0 - mean) / std)
            correct += (logits.argmax(1) == labels).sum().item()
            total += len(labels)
    return correct, total


def _train(rank: int, args, port: int, queue) -> None:
    from ingest.digits import load_digits_arrays
    from trainers.models import build_model
    from trainers.optim import LarsConfig, build_optimizer, set_lr
    from trainers.schedule import WarmupPolySchedule

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=args.workers, timeout=datetime.timedelta(seconds=300))
    arrays = load_digits_arrays(image_size=args.image_size, val_fraction=0.2, seed=args.seed)
    train = ShiftedDigits(*arrays["train"][:2], seed=args.seed, max_shift_px=2, train=True)
    val = ShiftedDigits(*arrays["val"][:2], seed=args.seed, max_shift_px=2, train=False)
    pixels = arrays["train"][0].astype("float64") / 255.0
    mean, std = float(pixels.mean()), float(pixels.std())
    sampler = DistributedSampler(train, num_replicas=args.workers, rank=rank, seed=args.seed,
                                 drop_last=True)
    per_rank = args.batch // args.workers
    loader = DataLoader(train, batch_size=per_rank, sampler=sampler, drop_last=True,
                        num_workers=args.loader_workers)
    val_loader = DataLoader(torch.utils.data.Subset(val, range(rank, len(val), args.workers)),
                            batch_size=256)
    torch.manual_seed(args.seed)
    model = torch.nn.parallel.DistributedDataParallel(
        build_model(name=args.model, num_classes=10, in_channels=1))
    config = LarsConfig()
    optimizer = build_optimizer(config, model=model.module)
    steps_per_epoch = len(train) // args.batch
    schedule = WarmupPolySchedule.from_config(config, epochs=args.epochs,
                                              steps_per_epoch=steps_per_epoch)
    loss_fn, step, epochs, first_step = torch.nn.CrossEntropyLoss(), 0, [], None
    for epoch in range(args.epochs):
        sampler.set_epoch(epoch)
        train.epoch = epoch
        model.train()
        start, losses = time.perf_counter(), []
        for images, labels in loader:
            set_lr(optimizer, schedule(step))
            optimizer.zero_grad(set_to_none=False)
            loss = loss_fn(model((images.float() / 255.0 - mean) / std), labels)
            loss.backward()
            optimizer.step()
            losses.append(loss.detach())
            step += 1
            first_step = first_step or time.time()
        seconds = time.perf_counter() - start
        correct, total = _evaluate(model, val_loader, mean=mean, std=std)
        totals = torch.tensor([float(torch.stack(losses).mean()), correct, total])
        dist.all_reduce(totals)
        epochs.append({"epoch": epoch + 1, "images_per_sec": len(losses) * args.batch / seconds,
                       "train_loss": totals[0].item() / args.workers,
                       "val_top1": totals[1].item() / totals[2].item()})
        if rank == 0:
            print(f"[plain ddp] epoch {epoch + 1}/{args.epochs} "
                  f"img/s {epochs[-1]['images_per_sec']:.0f} val_top1 {epochs[-1]['val_top1']:.4f}",
                  flush=True)
    if rank == 0:
        queue.put({"epochs": epochs, "first_step_time": first_step})
    dist.destroy_process_group()


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--epochs", type=int, default=15)
    ap.add_argument("--batch", type=int, default=64, help="global batch")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--model", default="small_resnet")
    ap.add_argument("--image-size", type=int, default=32)
    ap.add_argument("--loader-workers", type=int, default=0,
                    help="DataLoader worker processes per rank (0: in the training process)")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    started = time.time()
    context = mp.get_context("spawn")
    queue = context.SimpleQueue()
    port = _free_port()
    procs = [context.Process(target=_train, args=(rank, args, port, queue))
             for rank in range(args.workers)]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join()
    if any(proc.exitcode for proc in procs):
        raise SystemExit(f"a rank failed: exit codes {[p.exitcode for p in procs]}")
    result = queue.get()
    result.update(wall_seconds=time.time() - started,
                  time_to_first_step_s=result.pop("first_step_time") - started)
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as handle:
            json.dump(result, handle, indent=2)
    return result


if __name__ == "__main__":
    main()
