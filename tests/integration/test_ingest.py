"""The file formats end to end on the session's Ray cluster, with files made in the test:
exactly-once epochs over 2 workers, corrupt images skipped and counted or raising."""

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
    return [np.load(run_dir / "train" / "sample_ids" / f"epoch{epoch:04d}_rank{rank}.npy")
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
    assert steps == (NUM_TRAIN // 2) // 32 and summary["global_steps"] == EPOCHS * steps
    assert summary["skipped_samples"] == 0 and np.isfinite(summary["train_loss"])
    for epoch in range(EPOCHS):
        ranks = sample_ids(tmp_path, epoch=epoch)
        assert [len(ids) for ids in ranks] == [steps * 32] * 2
        seen = np.concatenate(ranks)
        # Exactly once: no sample twice; the ones left out are the documented remainder
        # (split remainder < world, plus each worker's last partial batch).
        assert len(np.unique(seen)) == len(seen)
        assert set(seen.tolist()) <= set(range(NUM_TRAIN))
        assert NUM_TRAIN - len(seen) == NUM_TRAIN - 2 * steps * 32
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
    assert steps == ((NUM_TRAIN - 1) // 2) // 32 and summary["global_steps"] == EPOCHS * steps
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
