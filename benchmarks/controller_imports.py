"""What Ray Train's controller pays before it asks for the workers: it unpickles the run's
config, dataset info (with the in-memory splits), restart log, torch backend config and
data config, and so imports every module they name. This pickles the same objects as
Ray does and loads them in fresh interpreters, `--repeats` times, printing the seconds of
each load and the torchvision modules it imported (the controller never transforms an
image, so it should import none).

    python benchmarks/controller_imports.py --repeats 5

Run it on two commits to compare them (BENCHMARKS.md, "Framework tax");
tests/unit/test_memory_feed.py checks the torchvision part with `controller_payload`.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

# Loads the pickle in a fresh interpreter: the seconds, and which torchvision modules came.
LOAD = ("import json, pickle, sys, time; start = time.perf_counter(); "
        "pickle.loads(open(sys.argv[1], 'rb').read()); "
        "print(json.dumps({'seconds': time.perf_counter() - start, 'torchvision': sorted("
        "name for name in sys.modules if name.split('.')[0] == 'torchvision')}))")


def controller_payload(run_dir: Path) -> list:
    """The run's own objects that Train's controller unpickles, as `job/trainer.py`'s
    `build_trainer` hands them over for the digits default (set held in memory)."""
    import numpy as np

    from ingest.info import DatasetInfo
    from ingest.memory import MemorySplits
    from ingest.pipeline import ArraySource, TransformSpec
    from ingest.sharding import IngestDataConfig
    from job.config import compose
    from job.restarts import RestartLog
    from job.torch_store import StoreOnMasterAddrConfig

    def spec(train: bool) -> TransformSpec:
        return TransformSpec(train=train, augment="shift", size=8, channels=1, max_shift_px=2,
                             min_crop_scale=0.08, val_crop_fraction=1.0, on_error="raise")

    source = ArraySource(np.zeros((4, 1, 8, 8), np.uint8), np.zeros(4, np.int64), np.arange(4))
    splits = MemorySplits(train=source, val=source, train_spec=spec(True),
                          val_spec=spec(False), seed=0, shuffle=True)
    info = DatasetInfo(num_classes=10, in_channels=1, num_train=4, num_val=4, mean=(0.5,),
                       std=(0.5,), in_memory=splits)
    return [compose([]), info, RestartLog(run_dir=str(run_dir)),
            StoreOnMasterAddrConfig(backend="gloo"),
            IngestDataConfig(recipes=None, cpus_per_worker=1, preprocess_cpus=None,
                             global_batch_size=64)]


def load_in_fresh_interpreter(path: Path) -> dict:
    """{"seconds", "torchvision"} of one load of the pickle at `path`."""
    done = subprocess.run([sys.executable, "-c", LOAD, str(path)], capture_output=True,
                          text=True, timeout=120)
    if done.returncode != 0:
        raise RuntimeError(f"loading {path} failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    import ray.cloudpickle

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "payload.pkl"
        path.write_bytes(ray.cloudpickle.dumps(controller_payload(Path(folder) / "run")))
        loads = [load_in_fresh_interpreter(path) for _ in range(args.repeats)]
    seconds = sorted(load["seconds"] for load in loads)
    print("controller unpickle (s): " + ", ".join(f"{s:.2f}" for s in seconds)
          + f"; median {seconds[len(seconds) // 2]:.2f}")
    print(f"torchvision modules imported: {len(loads[-1]['torchvision'])}")


if __name__ == "__main__":
    main()
