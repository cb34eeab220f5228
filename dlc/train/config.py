"""A run's settings: every key of the spec's `train` statement, plus what the command line adds."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from dlc.train.augment import Augment


@dataclass
class TrainConfig:
    """Every key of the spec's `train` statement (same names), plus --balanced and augmentation."""

    loss: str = "mse"
    optimizer: str = "sgd"
    lr: float = 0.01
    momentum: float | None = None
    beta1: float | None = None
    beta2: float | None = None
    eps: float | None = None
    batch: int = 32
    epochs: int = 10
    seed: int = 0
    weight_decay: float = 0.0
    l1: float = 0.0
    maxnorm: float = 0.0
    init: str = "he"
    init_std: float = 0.01
    schedule: str = "constant"
    step_every: int | None = None
    gamma: float | None = None
    power: float | None = None
    restart_every: int | None = None
    lr_min: float | None = None
    k: float | None = None
    freeze: str | None = None  # transfer learning: the label (or layer) up to which the weights stay fixed
    warmup: int = 0  # optimizer steps of linear warmup (dlc.train.schedules.warmup_factor)
    clip: float = 0.0  # the largest global norm of the loss gradient; 0 is off
    balanced: bool = False
    augment: Augment = field(default_factory=Augment)


def config_to_json(cfg: TrainConfig) -> dict:
    """The configuration as the checkpoint's meta keeps it."""
    return asdict(cfg)


def config_from_json(doc: dict) -> TrainConfig:
    return TrainConfig(**dict(doc, augment=Augment(**doc["augment"])))
