"""Converts an existing ImageFolder tree (`DIR/{train,val}/<class>/<image>`, e.g. ImageNet's)
into the sharded Parquet that `data=parquet` reads (ingest/parquet.py): columns `image`
(the file's bytes, not re-encoded), `label` and `id`. The CLI is launch/prepare_data.py
(`--from-imagefolder DIR --format parquet --output OUT`).

Same classes and ids as `data=imagefolder` on DIR (ingest/imagefolder.py): a label is the
index of its class folder among the sorted folders of train/ (torchvision's ImageFolder
rule), and an id is the file's index in the sorted listing of its split. The class names,
by label, go to OUT/classes.json. Train files are shuffled (seeded) before sharding, so
every shard mixes the classes; val keeps the listing order.

Parallel: one Ray Data task per shard reads its files, checks that each decodes (the
training pipeline's decoder), and writes the shard. A file that does not decode is
skipped and listed (OUT/manifest.json). Resumable: a task writes its shard under a
temporary name, then its record (OUT/_shards/), then renames the shard into place; a rerun
converts only the shards that are not complete, and refuses an OUT made from another
source or plan (OUT/plan.json). Files must be readable, and OUT writable, from every node.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np

from common.validation import require

CLASSES_FILE = "classes.json"
MANIFEST_FILE = "manifest.json"
PLAN_FILE = "plan.json"
RECORDS_DIR = "_shards"


def plan_shards(*, source: str, rows_per_file: int, seed: int) -> tuple[list[str], list[dict]]:
    """(class names by label, the shards: split, index, paths, labels, ids)."""
    from ingest.imagefolder import list_dataset

    try:
        listings = list_dataset(root=source, num_classes=None)
    except ValueError as error:
        raise ValueError(str(error).replace("data.path:", "--from-imagefolder:", 1)) from None
    shards = []
    for split, listing in listings.items():
        ids = np.arange(listing.num_rows)
        if split == "train":  # mixed classes in every shard and row group
            ids = np.random.default_rng(seed).permutation(ids)
        for index, start in enumerate(range(0, len(ids), rows_per_file)):
            chosen = ids[start:start + rows_per_file]
            shards.append({"split": split, "index": index,
                           "paths": listing.paths[chosen].tolist(),
                           "labels": listing.labels[chosen].tolist(), "ids": chosen.tolist()})
    return list(listings["train"].classes), shards


def shard_path(output: Path, shard: dict) -> Path:
    return output / shard["split"] / f"part-{shard['index']:05d}.parquet"


def record_path(output: Path, shard: dict) -> Path:
    return output / RECORDS_DIR / f"{shard['split']}-{shard['index']:05d}.json"


def convert_shard(shard: dict, *, output: str, rows_per_group: int) -> dict:
    """Read, check and write one shard (in a Ray Data task); return its record."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from ingest.transforms import DecodeError, decode

    rows, bad = {"image": [], "label": [], "id": []}, []
    for path, label, sample_id in zip(shard["paths"], shard["labels"], shard["ids"], strict=True):
        try:
            data = Path(path).read_bytes()
            decode(data, channels=3)  # the training decoder: a file it rejects is skipped
        except (OSError, DecodeError) as error:
            bad.append({"path": path, "error": str(error)})
            continue
        rows["image"].append(data)
        rows["label"].append(label)
        rows["id"].append(sample_id)
    table = pa.table({"image": pa.array(rows["image"], pa.binary()),
                      "label": pa.array(rows["label"], pa.int64()),
                      "id": pa.array(rows["id"], pa.int64())})
    target, record_file = shard_path(Path(output), shard), record_path(Path(output), shard)
    partial = target.with_name(target.name + ".partial")
    pq.write_table(table, partial, row_group_size=rows_per_group)
    record = {"split": shard["split"], "index": shard["index"], "file": target.name,
              "rows": table.num_rows, "bad": bad}
    _write_atomic(record_file, json.dumps(record))
    os.replace(partial, target)  # last: a shard in place is a complete one
    return record


def _write_atomic(path: Path, text: str) -> None:
    partial = path.with_name(path.name + ".partial")
    partial.write_text(text)
    os.replace(partial, path)


def _prepare_output(output: Path, plan: dict, classes: list[str]) -> None:
    """Create OUT, or check that it holds a conversion of this same plan (to resume)."""
    plan_file = output / PLAN_FILE
    if plan_file.exists():
        require(json.loads(plan_file.read_text()) == plan,
                f"--output {output} holds a conversion of another source or plan "
                f"({plan_file}); use a new --output")
    else:
        require(not output.exists() or not any(output.iterdir()),
                f"--output {output} exists, is not empty and holds no {PLAN_FILE}")
    for folder in ("train", "val", RECORDS_DIR):
        (output / folder).mkdir(parents=True, exist_ok=True)
    _write_atomic(output / CLASSES_FILE, json.dumps(classes, indent=1))
    _write_atomic(plan_file, json.dumps(plan, indent=1))


def plan_conversion(*, source: str, output: str, rows_per_file: int = 1024,
                    rows_per_group: int = 256, seed: int = 0) -> dict:
    """List and check `source`, create (or check, to resume) `output`, and return the
    conversion's plan with its shards; no Ray. ValueError for anything wrong."""
    require(rows_per_file >= 1 and rows_per_group >= 1,
            f"--rows-per-file and --rows-per-group must be >= 1 "
            f"(got {rows_per_file}, {rows_per_group})")
    classes, shards = plan_shards(source=source, rows_per_file=rows_per_file, seed=seed)
    root = Path(output).resolve()
    listing = hashlib.sha256(json.dumps([(s["paths"], s["labels"]) for s in shards])
                             .encode()).hexdigest()
    plan = {"source": str(Path(source).resolve()), "rows_per_file": rows_per_file,
            "rows_per_group": rows_per_group, "seed": seed, "listing_sha256": listing}
    _prepare_output(root, plan, classes)
    return {"plan": plan, "output": str(root), "classes": classes, "shards": shards}


def run_conversion(conversion: dict) -> dict:
    """Convert the shards of `plan_conversion` that are not complete; needs Ray running.
    Returns the manifest (also written to OUT/manifest.json) plus `converted_shards` and
    `complete_shards`, this call's work and what an earlier call had already done."""
    import ray

    root, shards = Path(conversion["output"]), conversion["shards"]
    rows_per_group = conversion["plan"]["rows_per_group"]
    pending = [s for s in shards
               if not (shard_path(root, s).exists() and record_path(root, s).exists())]
    if pending:
        items = [{"shard": json.dumps(shard)} for shard in pending]
        (ray.data.from_items(items, override_num_blocks=len(items))
         .map(lambda row: {"record": json.dumps(convert_shard(
             json.loads(row["shard"]), output=str(root), rows_per_group=rows_per_group))},
              num_cpus=1)
         .take_all())
    manifest = _manifest(root, shards, classes=conversion["classes"],
                         source=conversion["plan"]["source"])
    _write_atomic(root / MANIFEST_FILE, json.dumps(manifest, indent=1))
    return {**manifest, "converted_shards": len(pending),
            "complete_shards": len(shards) - len(pending)}


def convert_imagefolder(**kwargs) -> dict:
    """`plan_conversion(**kwargs)`, then `run_conversion` (needs Ray running)."""
    return run_conversion(plan_conversion(**kwargs))


def _manifest(root: Path, shards: list[dict], *, classes: list[str], source: str) -> dict:
    splits = {}
    for split in ("train", "val"):
        records = [json.loads(record_path(root, s).read_text())
                   for s in shards if s["split"] == split]
        splits[split] = {"images": sum(r["rows"] for r in records),
                         "files": sum(r["rows"] + len(r["bad"]) for r in records),
                         "shards": len(records),
                         "bad": [bad for r in records for bad in r["bad"]]}
    return {"source": source, "num_classes": len(classes), "splits": splits,
            "num_bad": sum(len(s["bad"]) for s in splits.values())}
