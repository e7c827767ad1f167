"""The aligner's settings, without torch: TrainConfig and the vocabularies it checks.

`align train`'s options take their defaults and choices from here, so `align --help`
does not load torch.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

LOSS_DIRECTIONS = ("symmetric", "code_to_audio", "audio_to_code")
MIN_TAU = 0.01  # CLIP clamps its learnable logit scale at 100, i.e. tau >= 0.01
SCHEDULES = ("cosine", "constant")
DEFAULT_DEVICE = "cpu"  # of training, sweeps and ranking; "auto" takes cuda when there is one


def check_architecture(hidden: int, out: int, layers: int) -> None:
    """Raise ValueError naming the bad value when the MLP shape is impossible."""
    for name, value in (("hidden", hidden), ("out", out), ("layers", layers)):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")


@dataclass
class TrainConfig:
    """Aligner and optimiser settings. Defaults are the study's (docs/align.md)."""

    hidden: int = 256
    out: int = 128
    layers: int = 5  # Linear layers per MLP; 5 = 4 x [Linear, BN, GELU] + Linear
    tau: float = 0.1
    learn_tau: bool = False
    loss: str = "symmetric"  # or "code_to_audio" (the authors' code), "audio_to_code"
    lr: float = 3e-3
    weight_decay: float = 1e-4
    batch_size: int = 64
    max_epochs: int = 100
    warmup: float = 0.05  # fraction of all max_epochs steps spent warming up linearly
    schedule: str = "cosine"  # cosine decay to 0 at max_epochs after warm-up, or constant
    patience: int = 10  # epochs without a better validation loss before stopping
    seed: int = 0
    config: str = "default"  # which dataset configuration's splits to train on

    def validate(self) -> "TrainConfig":
        check_architecture(self.hidden, self.out, self.layers)
        if self.loss not in LOSS_DIRECTIONS:
            raise ValueError(f"loss must be one of {LOSS_DIRECTIONS}, got {self.loss!r}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {SCHEDULES}, got {self.schedule!r}")
        if not self.tau >= MIN_TAU:
            raise ValueError(f"tau must be at least {MIN_TAU}, got {self.tau}")
        if self.batch_size < 2:
            raise ValueError(f"batch_size must be at least 2 (BatchNorm and InfoNCE need pairs), got {self.batch_size}")
        if self.max_epochs < 1 or self.patience < 1:
            raise ValueError(f"max_epochs and patience must be >= 1, got {self.max_epochs} and {self.patience}")
        if not 0 <= self.warmup < 1:
            raise ValueError(f"warmup is a fraction of training in [0, 1), got {self.warmup}")
        if self.lr <= 0 or self.weight_decay < 0:
            raise ValueError(f"lr must be > 0 and weight_decay >= 0, got {self.lr} and {self.weight_decay}")
        return self

    def replace(self, **changes) -> "TrainConfig":
        unknown = set(changes) - {f.name for f in dataclasses.fields(self)}
        if unknown:
            raise ValueError(f"unknown training setting(s) {sorted(unknown)}; known: {sorted(self.to_dict())}")
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)
