"""trainers/resume.py: the work a resume redoes, and the sample-id segments."""

import json
import os
import threading

import numpy as np
import torch

from trainers.resume import ProgressMark, SampleRecord, last_progress, resume_record


def test_resume_record_counts_the_steps_finished_past_the_checkpoint(tmp_path):
    assert last_progress(str(tmp_path)) is None
    other = ProgressMark(run_dir=str(tmp_path), rank=1)
    other.step_done(40)  # not rank 0: no file
    other.close()
    assert last_progress(str(tmp_path)) is None
    mark = ProgressMark(run_dir=str(tmp_path), rank=0)
    mark.step_done(28)
    mark.close()
    record = resume_record(global_step=25, epoch=1, epoch_step=3, world_size=3,
                           global_batch_size=64, run_dir=str(tmp_path))
    assert record == {"global_step": 25, "epoch": 2, "epoch_step": 3, "sample_position": 192,
                      "world_size": 3, "lost_steps": 3, "lost_samples": 192}
    unknown = resume_record(global_step=25, epoch=1, epoch_step=3, world_size=3,
                            global_batch_size=64, run_dir=None)
    assert unknown["lost_steps"] is None and unknown["lost_samples"] is None


def test_a_step_never_waits_for_the_progress_file_and_the_newest_step_lands(tmp_path):
    """A file system that blocks a write (here a FIFO with no reader at the mark's staging
    path, as a hung NFS server would) does not hold up `step_done`; the steps that finish
    meanwhile fold into one write of the newest, and `flush` reports the wait."""
    staging = tmp_path / "progress.json.partial"
    os.mkfifo(staging)
    mark = ProgressMark(run_dir=str(tmp_path), rank=0)

    def returns_at_once(steps):
        caller = threading.Thread(target=lambda: [mark.step_done(s) for s in steps],
                                  daemon=True)
        caller.start()
        caller.join(timeout=10)
        assert not caller.is_alive(), "step_done waited for the file system"

    returns_at_once([1])
    assert mark.flush(timeout_s=0.5) is False  # the writer is blocked on the FIFO, with 1
    returns_at_once(range(2, 101))
    with open(staging) as reader:  # unblocks the write, which a rename then moves
        assert json.loads(reader.read()) == {"global_step": 1}
    assert mark.flush(timeout_s=10) is True
    assert last_progress(str(tmp_path)) == 100
    mark.close()


def test_sample_record_writes_one_file_per_segment(tmp_path):
    record = SampleRecord(run_dir=str(tmp_path), rank=1, enabled=True)
    record.start(first_step=0)
    record.add(torch.tensor([3, 4]))
    record.write(epoch=2, next_step=5)  # a checkpoint after step 5
    record.add(torch.tensor([7]))
    record.write(epoch=2, next_step=9)  # the epoch's end
    files = sorted(p.name for p in (tmp_path / "sample_ids").iterdir())
    assert files == ["epoch0002_step000000_rank1.npy", "epoch0002_step000005_rank1.npy"]
    assert np.load(tmp_path / "sample_ids" / files[1]).tolist() == [7]
    SampleRecord(run_dir=str(tmp_path / "off"), rank=0, enabled=False).write(epoch=0, next_step=1)
    assert not (tmp_path / "off").exists()
