"""prepare_data writes readable sets; every bad data.path fails at config time (before Ray
starts) with a ValueError naming the path or column."""

import io

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from ingest import imagefolder, parquet
from ingest.prepare import prepare
from job.config import compose


def png_bytes(array: np.ndarray, mode: str) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array, mode=mode).save(buffer, format="PNG")
    return buffer.getvalue()


IMAGE = png_bytes(np.full((8, 8), 128, np.uint8), "L")


def make_folder(root, *, train=("a", "b"), val=("a",), images=2):
    for split, classes in (("train", train), ("val", val)):
        for name in classes:
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(images):
                (folder / f"{i}.png").write_bytes(IMAGE)
    return root


def write_parquet(path, **columns):
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table(columns), path)


def make_parquet(root, *, labels=(0, 1, 2, 1)):
    for split in ("train", "val"):
        write_parquet(root / split / "part-0.parquet", image=pa.array([IMAGE] * len(labels), pa.binary()),
                      label=pa.array(labels, pa.int64()))
    return root


def fmt_overrides(name, path, *extra):
    return [f"data={name}", f"data.path={path}", "data.image_size=8",
            "trainer.global_batch_size=2", *extra]


def test_imagefolder_listing_is_sorted_with_class_labels(tmp_path):
    listings = imagefolder.list_dataset(root=str(make_folder(tmp_path, train=("b", "a"))),
                                        num_classes=None)
    train = listings["train"]
    assert train.classes == ("a", "b") and train.labels.tolist() == [0, 0, 1, 1]
    assert [p.rsplit("/", 2)[-2] for p in train.paths] == ["a", "a", "b", "b"]
    assert listings["val"].labels.tolist() == [0, 0]


def test_parquet_listing_counts_rows_and_row_groups(tmp_path):
    root = make_parquet(tmp_path)
    write_parquet(tmp_path / "train" / "part-1.parquet", image=pa.array([IMAGE] * 3, pa.binary()),
                  label=pa.array([0, 0, 3], pa.int32()))
    listing = parquet.list_dataset(root=str(root), num_classes=None)["train"]
    assert listing.num_rows == 7 and listing.max_label == 3 and not listing.has_id
    assert listing.first_id.tolist() == [0, 4]


@pytest.mark.parametrize("name", ["imagefolder", "parquet"])
def test_missing_path_is_named(name, tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(ValueError, match=f"data.path: no such directory: {missing}"):
        compose(fmt_overrides(name, missing))
    with pytest.raises(ValueError, match="data.path is required"):
        compose([f"data={name}"])


def test_empty_or_incomplete_folder_is_named(tmp_path):
    with pytest.raises(ValueError, match=f"{tmp_path} has no 'train' folder"):
        compose(fmt_overrides("imagefolder", tmp_path))
    (tmp_path / "train" / "a").mkdir(parents=True)
    with pytest.raises(ValueError, match=f"{tmp_path / 'train'} has no images"):
        compose(fmt_overrides("imagefolder", tmp_path))
    with pytest.raises(ValueError, match=r"has no \.parquet files"):
        compose(fmt_overrides("parquet", tmp_path))


def test_val_class_unknown_to_train_is_named(tmp_path):
    make_folder(tmp_path, val=("a", "zebra"))
    with pytest.raises(ValueError, match="zebra"):
        compose(fmt_overrides("imagefolder", tmp_path))


def test_parquet_without_columns_is_named(tmp_path):
    write_parquet(tmp_path / "train" / "x.parquet", img=pa.array([IMAGE], pa.binary()),
                  label=pa.array([0]))
    with pytest.raises(ValueError, match=r"x\.parquet has no 'image' column"):
        compose(fmt_overrides("parquet", tmp_path))
    write_parquet(tmp_path / "train" / "x.parquet", image=pa.array([IMAGE], pa.binary()),
                  target=pa.array([0]))
    with pytest.raises(ValueError, match=r"x\.parquet has no 'label' column"):
        compose(fmt_overrides("parquet", tmp_path))


def test_label_outside_the_class_count_is_named(tmp_path):
    make_parquet(tmp_path, labels=(0, 1, 5, 1))
    with pytest.raises(ValueError, match=r"column 'label' in .*train has label 5, outside the "
                                         r"class count 3 \(data.num_classes\)"):
        compose(fmt_overrides("parquet", tmp_path, "data.num_classes=3"))
    write_parquet(tmp_path / "val" / "part-0.parquet", image=pa.array([IMAGE], pa.binary()),
                  label=pa.array([9]))
    with pytest.raises(ValueError, match=r"val has label 9, outside the class count 6"):
        compose(fmt_overrides("parquet", tmp_path))


def test_more_class_folders_than_num_classes_is_named(tmp_path):
    make_folder(tmp_path, train=("a", "b", "c"))
    with pytest.raises(ValueError, match=r"data.num_classes \(2\) is smaller than the 3 class"):
        compose(fmt_overrides("imagefolder", tmp_path, "data.num_classes=2"))


def test_good_sets_compose_and_path_is_not_reported_as_ignored(tmp_path, recwarn):
    config = compose(fmt_overrides("imagefolder", make_folder(tmp_path / "f")))
    assert config.data.name == "imagefolder" and config.data.augment == "crop_flip"
    assert compose(fmt_overrides("parquet", make_parquet(tmp_path / "p"))).data.num_classes is None
    assert not [w for w in recwarn if "data.path" in str(w.message)]


@pytest.mark.parametrize("override,key", [
    ("data.on_error=ignore", "data.on_error"), ("data.augment=mixup", "data.augment"),
    ("data.preprocess_cpus=0", "data.preprocess_cpus"), ("data.channels=2", "data.channels"),
    ("data.mean=[0.5]", "data.mean"), ("data.val_crop_fraction=0", "data.val_crop_fraction"),
])
def test_bad_preprocessing_values_name_their_key(override, key):
    with pytest.raises(ValueError, match=key.replace(".", r"\.")):
        compose([override])


@pytest.mark.parametrize("fmt", ["imagefolder", "parquet"])
def test_prepare_data_writes_a_set_the_readers_accept(fmt, tmp_path):
    counts = prepare(output=str(tmp_path / fmt), fmt=fmt, copies=1, image_size=12,
                     rows_per_file=1000, rows_per_group=300)
    assert counts == {"train": 2 * 1437, "val": 360}
    module = imagefolder if fmt == "imagefolder" else parquet
    listings = module.list_dataset(root=str(tmp_path / fmt), num_classes=10)
    sizes = {split: (len(lst.labels) if fmt == "imagefolder" else lst.num_rows)
             for split, lst in listings.items()}
    assert sizes == counts
    if fmt == "parquet":
        assert listings["train"].has_id and len(listings["train"].row_group) == 11  # 4+4+3
    with pytest.raises(ValueError, match="not empty"):
        prepare(output=str(tmp_path / fmt), fmt=fmt)
