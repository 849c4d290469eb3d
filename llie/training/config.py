"""Settings of a training run (``llie train``), and the error for one that training cannot work with."""

from __future__ import annotations

from dataclasses import dataclass, field

from llie.method.mapping import MappingConfig
from llie.method.policy import EnhancePolicy
from llie.method.quantiles import QuantileModelConfig
from llie.method.refiner import RefinerConfig
from llie.training.stage2 import BANDWIDTHS, OutOfFold


class TrainingSetupError(ValueError):
    """A setting, data set or run directory that training cannot work with, found before (or instead of)
    doing the work: the command line shows its message without a traceback."""


@dataclass(frozen=True)
class RefinerTrainConfig:
    steps: int = 3000
    batch: int = 16
    crop: int = 160  # multiple of the refiner's 80-pixel window
    lr: float = 2e-3
    weight_decay: float = 0.02
    warmup: int = 100
    l1_weight: float = 20.0  # L1 is in [0, 1] units; this puts 0.05 of L1 on a par with 1 dB
    ssim_weight: float = 0.0  # weight of 1 - SSIM in the loss (100 puts 0.01 of SSIM on a par with 1 dB)
    eval_every: int = 250
    checkpoint_every: int = 250
    # validation scores (and keeps) a moving average of the weights when > 0: it smooths out how much
    # single steps move the refiner's exposure guess
    ema_decay: float = 0.0
    # train the detail head alone on the transformer of --init-refiner, which a fine-tune on a few
    # hundred pairs would over-fit to their exposures
    freeze_transformer: bool = False
    # crops lose a strip along two sides that mirror padding refills, the loss on the crop's own pixels:
    # inference pads photos too, and where a photo sits in its padding should not move the result
    pad_augment: bool = False
    # sigma of a random gamma exp(N(0, sigma)) per input crop (a quarter of it between channels): stage 3
    # leaves each training pair one exposure error, so the refiner would see each scene mis-exposed one way
    exposure_jitter: float = 0.0


@dataclass(frozen=True)
class IlluminationTrainConfig:
    steps: int = 0  # 0: a bundle without the local gain
    batch: int = 16
    lr: float = 2e-3
    weight_decay: float = 1e-4
    seed: int = 0


@dataclass(frozen=True)
class TrainConfig:
    data: str | tuple[str, ...]  # one paired set or several (llie.training.data.resolve_training_sets)
    output: str
    seed: int = 0
    val_fraction: float = 0.15
    oof_folds: int = 4
    device: str = "auto"
    threads: int | None = None
    quantile: QuantileModelConfig = field(default_factory=QuantileModelConfig)
    refiner: RefinerConfig = field(default_factory=RefinerConfig)
    refiner_train: RefinerTrainConfig = field(default_factory=RefinerTrainConfig)
    illumination: IlluminationTrainConfig = field(default_factory=IlluminationTrainConfig)
    bandwidths: tuple[float, ...] = BANDWIDTHS
    # stage 3's colour handling and slope bounds; the KDE bandwidth is chosen on validation
    mapping: MappingConfig = field(default_factory=MappingConfig)
    policy: EnhancePolicy = field(default_factory=EnhancePolicy)
    refit_all: bool = True  # final stage 2 sees every pair once settings are chosen
    capture_gate: bool = True  # fit llie.method.capture_gate where the sets are of both kinds
    detail: bool = True  # fit llie.method.detail's rule on the validation pairs
    max_pairs: int | None = None  # for quick runs and tests
    init_refiner: str | None = None  # bundle whose refiner weights start stage 4 (fine-tuning)

    @property
    def out_of_fold(self) -> OutOfFold:
        return OutOfFold(self.quantile, self.oof_folds, self.seed, self.threads)
