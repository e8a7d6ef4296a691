"""Config schema of the input pipeline (`data=`): which dataset, where it lives, how it
is preprocessed in Ray Data, and what happens to images that cannot be decoded. The
known `data.name`s and which of them read `data.path` come from ingest/formats.py."""

from __future__ import annotations

from dataclasses import dataclass

from common.validation import require
from ingest.formats import FORMATS, format_of

PREPROCESS_ON = ("auto", "tasks", "workers")
AUGMENTS = ("crop_flip", "shift", "none")
ON_ERROR = ("skip", "raise")


@dataclass
class DataConfig:
    name: str = "digits"
    # Dataset location, for the file formats (the digits and synthetic sets need none).
    path: str | None = None
    # Side of the square images fed to the model.
    image_size: int = 32
    # Class count. Synthetic: how many to draw. File formats: null reads it from the data
    # (class folders, or the largest Parquet label + 1); a number is checked against it.
    num_classes: int | None = 10
    # synthetic: number of train/val samples.
    num_train_samples: int = 1024
    num_val_samples: int = 256
    # digits: share of the 1797 images held out for validation (stratified, seeded).
    val_fraction: float = 0.2
    # Train augmentation: crop_flip (random-resized-crop + horizontal flip, ImageNet
    # style), shift (random translation by up to max_shift_px, digits style) or none.
    augment: str = "shift"
    max_shift_px: int = 2
    # crop_flip: smallest crop area as a share of the image.
    min_crop_scale: float = 0.08
    # File formats, val: resize the short side to image_size / val_crop_fraction, then
    # center-crop image_size (0.875: 256 -> 224). 1.0: plain resize.
    val_crop_fraction: float = 0.875
    # File formats: image channels decoded (3 RGB, 1 grayscale) and their normalisation
    # (null: the ImageNet statistics, averaged for grayscale).
    channels: int = 3
    mean: list[float] | None = None
    std: list[float] | None = None
    # Train: a fresh global permutation of the samples (Parquet: of row groups) each epoch,
    # seeded by (trainer.seed, epoch).
    shuffle: bool = True
    # An image that cannot be decoded: skip it and count it, or raise naming the file.
    on_error: str = "skip"
    # Most preprocessing tasks at once (each takes one CPU), and the CPUs the blocks are
    # sized for; null: as many as free CPUs allow, blocks sized for the CPUs the training
    # workers leave.
    preprocess_cpus: int | None = None
    # Rows per preprocessing call and per output block.
    preprocess_batch_size: int = 64
    # Ray Data blocks (one preprocessing task each), sized when a worker group starts for
    # the CPUs the training workers leave (ingest/sizing.py): blocks_per_cpu per CPU at
    # least, in whole waves, none under preprocess_batch_size rows; at least num_blocks,
    # and at most rows_per_block rows each. Few large tasks on a small machine: on 2 CPUs
    # each extra task cost 0.1-0.3 s beyond its images (7185 images: 2 blocks 3772 img/s,
    # 4 blocks 2923, 8 blocks 2662; BENCHMARKS.md, ingest).
    num_blocks: int = 2
    rows_per_block: int = 4096
    blocks_per_cpu: int = 1
    # Train: each worker also shuffles its rows through a buffer of this many decoded images
    # (it mixes the samples of neighbouring Parquet row groups; memory: rows x image bytes).
    local_shuffle_rows: int = 4096
    # Batches each worker prefetches (onto the device) ahead of the step that needs them.
    prefetch_batches: int = 2
    # Tests: each worker writes the sample ids it trained on to run_dir/sample_ids/.
    record_sample_ids: bool = False
    # Where an in-memory set (digits) is preprocessed: `tasks` (Ray Data map_batches),
    # `workers` (inside each training process, ingest/memory.py), or `auto`: the workers
    # when the cluster has less than one spare CPU per training worker. The other formats
    # always use tasks.
    preprocess_on: str = "auto"
    # A Ray Data feed that yields no batch for this many seconds while a worker waits for
    # one fails the run with what holds the cluster's CPUs and what waits for them
    # (job/watchdog.py), instead of waiting forever.
    stall_timeout_s: float = 300.0

    def __post_init__(self) -> None:
        # Checked when built, like every schema: no builder sees an unchecked config.
        self.validate()

    def validate(self) -> None:
        FORMATS.get(self.name)  # ValueError naming data.name and the known names
        require(self.image_size >= 8, f"data.image_size must be >= 8, got {self.image_size}")
        require(
            self.num_classes is not None or self.reads_path,
            f"data.num_classes may be null only for file formats, not data={self.name}",
        )
        require(
            self.num_classes is None or self.num_classes >= 2,
            f"data.num_classes must be >= 2, got {self.num_classes}",
        )
        require(
            self.num_train_samples >= 1,
            f"data.num_train_samples must be >= 1, got {self.num_train_samples}",
        )
        require(
            self.num_val_samples >= 1,
            f"data.num_val_samples must be >= 1, got {self.num_val_samples}",
        )
        require(
            0 < self.val_fraction < 1,
            f"data.val_fraction must be in (0, 1), got {self.val_fraction}",
        )
        self._validate_preprocessing()
        require(
            not self.reads_path or self.path is not None,
            f"data.path is required for data={self.name}",
        )

    def _validate_preprocessing(self) -> None:
        require(self.augment in AUGMENTS,
                f"data.augment: unknown {self.augment!r}; known: {', '.join(AUGMENTS)}")
        require(self.max_shift_px >= 0, f"data.max_shift_px must be >= 0, got {self.max_shift_px}")
        require(0 < self.min_crop_scale <= 1,
                f"data.min_crop_scale must be in (0, 1], got {self.min_crop_scale}")
        require(0 < self.val_crop_fraction <= 1,
                f"data.val_crop_fraction must be in (0, 1], got {self.val_crop_fraction}")
        require(self.channels in (1, 3), f"data.channels must be 1 or 3, got {self.channels}")
        for key in ("mean", "std"):
            values = getattr(self, key)
            require(values is None or len(values) == self.channels,
                    f"data.{key} needs {self.channels} values (data.channels), got {values}")
        require(self.std is None or all(v > 0 for v in self.std),
                f"data.std must be > 0, got {self.std}")
        require(self.on_error in ON_ERROR,
                f"data.on_error: unknown {self.on_error!r}; known: {', '.join(ON_ERROR)}")
        require(self.preprocess_cpus is None or self.preprocess_cpus >= 1,
                f"data.preprocess_cpus must be >= 1 or null, got {self.preprocess_cpus}")
        require(self.preprocess_on in PREPROCESS_ON,
                f"data.preprocess_on: unknown {self.preprocess_on!r}; "
                f"known: {', '.join(PREPROCESS_ON)}")
        require(self.stall_timeout_s > 0,
                f"data.stall_timeout_s must be > 0, got {self.stall_timeout_s}")
        for key in ("preprocess_batch_size", "num_blocks", "rows_per_block", "blocks_per_cpu",
                    "prefetch_batches", "local_shuffle_rows"):
            require(getattr(self, key) >= 1, f"data.{key} must be >= 1, got {getattr(self, key)}")

    @property
    def reads_path(self) -> bool:
        """Whether data.path is read; False for an unknown name (validate reports it)."""
        return self.name in FORMATS and format_of(self.name).reads_path
