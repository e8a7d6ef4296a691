"""Config schema of the input pipeline (`data=`)."""

from __future__ import annotations

from dataclasses import dataclass

from trainers.config import require

DATA_NAMES = ("digits", "synthetic")


@dataclass
class DataConfig:
    name: str = "digits"
    # Dataset location, for the file formats (the digits and synthetic sets need none).
    path: str | None = None
    # Side of the square images fed to the model.
    image_size: int = 32
    # synthetic: number of classes and of train/val samples.
    num_classes: int = 10
    num_train_samples: int = 1024
    num_val_samples: int = 256
    # digits: share of the 1797 images held out for validation (stratified, seeded).
    val_fraction: float = 0.2
    # digits: random translation of up to this many pixels (train only).
    max_shift_px: int = 2
    # Ray Data blocks the in-memory sets are cut into.
    num_blocks: int = 8

    def validate(self) -> None:
        require(
            self.name in DATA_NAMES,
            f"data.name: unknown dataset {self.name!r}; known: {', '.join(DATA_NAMES)}",
        )
        require(self.image_size >= 8, f"data.image_size must be >= 8, got {self.image_size}")
        require(self.num_classes >= 2, f"data.num_classes must be >= 2, got {self.num_classes}")
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
        require(self.max_shift_px >= 0, f"data.max_shift_px must be >= 0, got {self.max_shift_px}")
        require(self.num_blocks >= 1, f"data.num_blocks must be >= 1, got {self.num_blocks}")
