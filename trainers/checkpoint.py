"""Checkpoint files: written atomically, loaded as plain tensors, and refused clearly when
damaged.

A worker writes `state.pt` into a staging folder that Ray Train then copies into the run
directory and registers; only registered checkpoints are ever restored, so a crash during
the copy leaves the previous one in use. Our own write goes to a temporary name and is
renamed into place after an fsync, so a staged `state.pt` is always whole.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import torch

# The file of a raylars checkpoint, inside the checkpoint directory Ray Train registers.
CHECKPOINT_FILE = "state.pt"


def write_state(state: dict, *, path: Path) -> None:
    """torch.save to `path` atomically: a reader sees the old file, or the whole new one."""
    partial = path.with_name(path.name + ".partial")
    with open(partial, "wb") as handle:
        torch.save(state, handle)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(partial, path)


def load_state(path: Path, *, map_location=None, mmap: bool = False) -> dict:
    """Load a checkpoint with `weights_only=True` (tensors and plain data, no code)."""
    try:
        return torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except FileNotFoundError:
        raise ValueError(f"no raylars checkpoint file at {path}") from None
    except (RuntimeError, EOFError, pickle.UnpicklingError, OSError) as error:
        raise ValueError(f"checkpoint {path} is damaged or incomplete (a crash while it "
                         f"was written?); resume from an earlier one: {error}") from error


def crash_while_writing(state: dict, *, path: Path) -> None:
    """Fault injection: leave the first half of the checkpoint's bytes at `path`, as a
    process killed mid-write would, and exit at once (no exception, no cleanup)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = path.with_name(path.name + ".full")
    torch.save(state, staging)
    data = staging.read_bytes()
    staging.unlink()
    with open(path, "wb") as handle:
        handle.write(data[: len(data) // 2])
        handle.flush()
        os.fsync(handle.fileno())
    print(f"[raylars] fault injected: crashing while writing {path} "
          "(debug.fail_in_checkpoint_epoch)", flush=True)
    os._exit(1)
