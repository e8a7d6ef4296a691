"""launch/prepare_data.py --from-imagefolder on a real cluster: an ImageFolder with a
corrupt file becomes Parquet with the same classes, labels and ids as data=imagefolder
reads, the bad file is reported and skipped, a rerun is a no-op (and finishes a lost
shard), and training on the result works."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from ingest import imagefolder, parquet
from ingest.convert import convert_imagefolder
from ingest.digits import load_digits_arrays
from ingest.prepare import samples, write_imagefolder
from job.config import compose
from job.trainer import run_training

REPO = Path(__file__).resolve().parents[2]
# Folder names whose sorted order is not the digits' order: labels follow the names.
NAMES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")


def _imagefolder(root: Path) -> Path:
    """6 PNGs per digit in train/, 2 JPEGs in val/, and one corrupt file in train/."""
    arrays = load_digits_arrays(image_size=16, val_fraction=0.2, seed=0)
    for split, per_class, encoding in (("train", 6, "png"), ("val", 2, "jpeg")):
        images, labels, ids = arrays[split]
        chosen = [i for digit in range(10) for i in (labels == digit).nonzero()[0][:per_class]]
        rows = samples(split_arrays=(images[chosen], labels[chosen], ids[chosen]), copies=0,
                       seed=0)
        write_imagefolder(rows, directory=root / split, encoding=encoding)
        for digit, name in enumerate(NAMES):
            (root / split / str(digit)).rename(root / split / name)
    corrupt = root / "train" / "three" / "broken.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n not really an image")
    return corrupt


def _rows(root: Path) -> dict[tuple[str, int], tuple[int, bytes]]:
    rows = {}
    for split in ("train", "val"):
        for path in sorted((root / split).glob("*.parquet")):
            table = pq.read_table(path)
            for image, label, sample_id in zip(*(table.column(c).to_pylist()
                                                 for c in ("image", "label", "id")), strict=True):
                rows[(split, sample_id)] = (label, image)
    return rows


def test_imagefolder_converts_resumes_and_trains(ray_cluster, tmp_path):
    source, out = tmp_path / "folder", tmp_path / "pq"
    corrupt = _imagefolder(source)
    result = convert_imagefolder(source=str(source), output=str(out), rows_per_file=16,
                                 rows_per_group=8)
    assert result["num_bad"] == 1 and result["splits"]["train"]["bad"][0]["path"] == str(corrupt)
    assert (result["splits"]["train"]["images"], result["splits"]["train"]["files"]) == (60, 61)
    assert result["splits"]["val"]["images"] == 20 and result["num_classes"] == 10
    assert (result["converted_shards"], result["complete_shards"]) == (4 + 2, 0)
    assert json.loads((out / "manifest.json").read_text())["num_bad"] == 1

    # Same classes, labels and ids as data=imagefolder reads; the bytes are the files'.
    listings = imagefolder.list_dataset(root=str(source), num_classes=None)
    assert json.loads((out / "classes.json").read_text()) == list(listings["train"].classes)
    assert listings["train"].classes[0] == "eight"  # sorted names, not digit order
    rows = _rows(out)
    expected = {(split, i): (int(label), Path(path).read_bytes())
                for split, listing in listings.items()
                for i, (path, label) in enumerate(zip(listing.paths, listing.labels, strict=True))
                if path != str(corrupt)}
    assert rows == expected
    pq_listings = parquet.list_dataset(root=str(out), num_classes=None)
    assert parquet.num_classes_of(pq_listings) == imagefolder.num_classes_of(listings) == 10

    # A rerun through the CLI converts nothing; with a shard lost, exactly that one.
    shards = sorted(out.glob("*/part-*.parquet"))
    stamps = [p.stat().st_mtime_ns for p in shards]
    shards[1].unlink()
    command = [sys.executable, str(REPO / "launch" / "prepare_data.py"), "--from-imagefolder",
               str(source), "--format", "parquet", "--output", str(out), "--rows-per-file",
               "16", "--rows-per-group", "8", "--ray-address", ray_cluster]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    for lost in (1, 0):
        done = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)
        assert done.returncode == 0, done.stderr[-3000:]
        assert done.stdout.strip().splitlines()[-1] == str(out.resolve())
        assert f"shards written now {lost}, already complete {6 - lost}" in done.stdout
        assert f"skipped {corrupt}" in done.stderr and "1 bad files skipped" in done.stdout
    kept = [i for i in range(len(shards)) if i != 1]
    assert [shards[i].stat().st_mtime_ns for i in kept] == [stamps[i] for i in kept]
    assert _rows(out) == rows

    summary = run_training(compose([
        "data=parquet", f"data.path={out}", "data.channels=1", "data.image_size=16",
        "data.augment=shift", "data.val_crop_fraction=1", "trainer.epochs=1",
        "optim.warmup_epochs=0", "trainer.global_batch_size=16",
        f"run.output_dir={tmp_path / 'run'}"]))
    assert summary["val_samples"] == 20 and summary["skipped_samples"] == 0
    assert summary["global_steps"] == 60 // 16


def test_another_plan_on_the_same_output_is_refused(ray_cluster, tmp_path):
    source, out = tmp_path / "folder", tmp_path / "pq"
    _imagefolder(source)
    convert_imagefolder(source=str(source), output=str(out), rows_per_file=64)
    with pytest.raises(ValueError, match="another source or plan"):
        convert_imagefolder(source=str(source), output=str(out), rows_per_file=32)
    with pytest.raises(ValueError, match="--from-imagefolder: no such directory"):
        convert_imagefolder(source=str(tmp_path / "missing"), output=str(tmp_path / "x"))
