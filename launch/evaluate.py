"""Score a checkpoint: `python launch/evaluate.py CHECKPOINT_DIR [overrides] [--export PATH]`.

Evaluates the checkpoint (a `checkpoint_epoch_NNNN` folder of a run) on the val split of
its training data, or of the data the overrides name (e.g. `data.path=...`), on the same
workers and input pipeline as training: top-1, top-5 and the mean cross-entropy loss.
Prints them, writes `evaluation.json` in `run.output_dir` (default
outputs/evaluate/DATE/TIME) and prints its path as the last line. `--export PATH` also
writes the model's weights alone (a state_dict: `torch.load(PATH, weights_only=True)`) and
PATH.json, whose "model" entry holds the `trainers.models.build_model` arguments that
rebuild it and "input" the image size, channels and normalisation it expects.
"""

from __future__ import annotations

import argparse
import os
import sys

# Keep Ray's addresses on loopback (tests/integration/conftest.py says why).
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", help="a checkpoint_* directory of a run")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. data.path=DIR")
    parser.add_argument("--export", metavar="PATH", help="write the weights (and PATH.json)")
    args = parser.parse_args(argv)

    from job.evaluate import evaluation_config, run_evaluation

    try:
        config = evaluation_config(args.checkpoint, args.overrides)
    except ValueError as error:
        print(f"config error: {error}", file=sys.stderr)
        return 2
    result = run_evaluation(config, checkpoint=args.checkpoint, export=args.export)
    print("[raylars] evaluation: " + ", ".join(
        f"{key}={result[key]:.4g}" if isinstance(result[key], float) else f"{key}={result[key]}"
        for key in ("val_top1", "val_top5", "val_loss", "val_samples", "world_size")))
    if result["export"]:
        print(f"[raylars] exported: {result['export']} (+ .json)")
    print(result["evaluation_path"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
