"""Typed configuration. Every section forbids unknown keys, so a typo is an error, not a silent default.

Sections map to pipeline stages (data, folds, train + models, predict, ensemble, pseudo, tune, submit). Paths under
``data`` are relative to ``data.root``; ``paths`` (runs, folds, submissions) are relative to the working directory.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, field_validator, model_validator

from segkit.errors import ConfigError


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


# ----------------------------------------------------------------------------------------------------------- data


class RLESpec(Section):
    """How the train csv stores masks."""

    id_column: str = "id"
    rle_column: str = "rle_mask"
    class_column: Optional[str] = None  # e.g. ClassId (values: 1-based class index or class name)
    id_class_sep: Optional[str] = None  # compound ids like "0002cc93b.jpg_1" -> sep "_"
    order: Literal["F", "C"] = "F"  # F: Kaggle column-major (top-to-bottom first); C: row-major
    relative: bool = False  # SIIM: each start counts from the end of the previous run


class DataConfig(Section):
    root: Path = Path("data/demo")
    train_images: str = "train/images"
    train_masks: Optional[str] = None  # folder of mask images named like the train images ...
    train_csv: Optional[str] = None  # ... or an RLE csv
    rle: RLESpec = Field(default_factory=RLESpec)
    test_images: Optional[str] = "test/images"
    sample_submission: Optional[str] = "sample_submission.csv"
    mode: Literal["binary", "multilabel", "multiclass"] = "binary"
    classes: list[str] = Field(default_factory=lambda: ["foreground"], min_length=1)
    channels: Literal[1, 3] = 3  # images are converted to this many channels on read
    extra_csv: Optional[str] = None  # per-image columns (e.g. TGS depths.csv), joined on its first column
    group_column: Optional[str] = None  # column of extra_csv / train csv: no group spans two folds
    # Labelled images held out of training and scored like a hidden test set (public data has no test labels).
    holdout_fraction: float = Field(0.0, ge=0.0, lt=1.0)

    def path(self, key: str) -> Path:
        """Absolute-or-cwd-relative path of a data key, checked to exist."""
        value = getattr(self, key)
        if value is None:
            raise ConfigError(f"data.{key}: not set")
        p = self.root / value
        if not p.exists():
            raise ConfigError(f"data.{key}: path does not exist: {p}")
        return p

    @model_validator(mode="after")
    def _masks_source(self) -> "DataConfig":
        if self.train_masks and self.train_csv:
            raise ValueError("give train_masks (a folder) or train_csv (RLE), not both")
        if self.mode == "binary" and len(self.classes) != 1:
            raise ValueError("binary mode has exactly one class")
        return self


class FoldsConfig(Section):
    n_splits: int = Field(5, ge=2)
    seed: int = 42
    coverage_bins: int = Field(5, ge=1)  # non-empty masks are binned by coverage quantile; empty is its own bin
    stratify: Literal["auto", "coverage", "classes", "none"] = "auto"
    file: Optional[str] = None  # default: <paths.folds>/<competition>.csv


# ---------------------------------------------------------------------------------------------------------- train


class ScheduleConfig(Section):
    name: str = "cosine"  # registry name: cosine, cosine_restarts, onecycle, cyclic, plateau, constant
    warmup_epochs: float = 0.0
    min_lr: float = 1e-6
    cycles: int = 1  # cosine_restarts: number of cycles in the run
    params: dict[str, Any] = Field(default_factory=dict)


class LossStage(Section):
    until_epoch: Optional[int] = None  # None = to the end
    terms: dict[str, float]


class TrainConfig(Section):
    epochs: int = Field(10, ge=1)
    batch_size: int = Field(8, ge=1)
    optimizer: str = "adamw"
    lr: float = Field(1e-3, gt=0)
    encoder_lr: Optional[float] = None  # default: same as lr
    weight_decay: float = 1e-4
    momentum: float = 0.9
    schedule: ScheduleConfig = Field(default_factory=ScheduleConfig)
    loss: dict[str, float] = Field(default_factory=lambda: {"bce": 1.0, "dice": 1.0})
    loss_stages: list[LossStage] = Field(default_factory=list)  # overrides `loss` epoch by epoch
    class_weights: Optional[list[float]] = None
    loss_params: dict[str, dict[str, Any]] = Field(default_factory=dict)  # e.g. {focal: {gamma: 2}}
    augment: str = "light"
    crop_size: Optional[int] = None  # random crops of this size for training (big images)
    pad_to: int = 32  # pad inputs to a multiple of the network stride, un-pad predictions
    amp: Literal["none", "bf16", "fp16"] = "none"
    channels_last: bool = False
    compile: bool = False
    workers: int = 0
    pin_memory: bool = False
    deterministic: bool = False
    ema: Optional[float] = None  # decay, e.g. 0.999
    accumulate: int = Field(1, ge=1)
    clip_grad: Optional[float] = None
    positive_share: Optional[float] = Field(None, ge=0, le=1)
    sync_bn: bool = False
    monitor: Optional[str] = None  # metric that picks the best checkpoint; default: the competition metric
    keep_snapshots: bool = True  # keep a checkpoint at the end of each LR cycle
    nan_policy: Literal["stop", "skip"] = "stop"
    val_every: int = Field(1, ge=1)
    max_steps_per_epoch: Optional[int] = None  # cap for quick runs and tests


class ModelConfig(Section):
    name: str
    arch: str = "Unet"
    encoder: str = "resnet34"
    encoder_weights: Optional[str] = None  # null | imagenet | path to .pth / .safetensors
    decoder_attention: Optional[str] = None  # "scse"
    aux_head: bool = False  # image-level "has mask" classification head
    params: dict[str, Any] = Field(default_factory=dict)  # passed to the smp constructor
    train: dict[str, Any] = Field(default_factory=dict)  # per-model overrides of the train section

    @field_validator("name")
    @classmethod
    def _safe_name(cls, v: str) -> str:
        if not v or "/" in v or v.startswith("."):
            raise ValueError("model name must be a plain folder name")
        return v


# -------------------------------------------------------------------------------------------------------- predict


class PredictConfig(Section):
    tta: str = "d4"  # none | hflip | flips | d4
    tta_merge: Literal["mean", "gmean", "max"] = "mean"
    batch_size: int = Field(8, ge=1)
    tta_chunk: Optional[int] = None  # views per forward batch; default by device
    tile_size: Optional[int] = None  # tiled inference for images larger than this
    tile_overlap: float = Field(0.5, ge=0, lt=1)
    tile_blend: Literal["gaussian", "linear"] = "gaussian"
    repredict_oof: bool = False
    amp: Literal["none", "bf16", "fp16"] = "none"


class EnsembleConfig(Section):
    methods: list[str] = Field(default_factory=lambda: ["mean"])
    choose: Optional[str] = None  # method to use; default: best by CV
    stack_pixels: int = 200_000
    stack_params: dict[str, Any] = Field(default_factory=dict)


class PseudoConfig(Section):
    rounds: int = Field(0, ge=0)
    low: float = 0.2
    high: float = 0.8
    confident_share: float = 0.97
    batch_share: float = Field(0.3, ge=0, le=1)


class TuneConfig(Section):
    thresholds: list[float] = Field(default_factory=lambda: [round(0.05 * i, 2) for i in range(2, 19)])
    min_areas: list[int] = Field(default_factory=lambda: [0, 10, 25, 50, 100, 200, 400])
    empty_rule: bool = True
    morphology: bool = True


# ---------------------------------------------------------------------------------------------------------- root


class PathsConfig(Section):
    runs: Path = Path("runs")
    folds: Path = Path("folds")
    submissions: Path = Path("submissions")


class Config(Section):
    competition: str = "demo"  # names folds/<competition>.csv
    experiment: str = "demo"  # names runs/<experiment>/ and submissions/<experiment>.csv
    metric: str = "dice"  # the competition's own score (segkit.metrics registry)
    seed: int = 42
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    paths: PathsConfig = Field(default_factory=PathsConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    folds: FoldsConfig = Field(default_factory=FoldsConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    models: list[ModelConfig] = Field(default_factory=list)
    predict: PredictConfig = Field(default_factory=PredictConfig)
    ensemble: EnsembleConfig = Field(default_factory=EnsembleConfig)
    pseudo: PseudoConfig = Field(default_factory=PseudoConfig)
    tune: TuneConfig = Field(default_factory=TuneConfig)

    _source: str = PrivateAttr(default="")

    @property
    def source(self) -> str:
        return self._source

    @source.setter
    def source(self, value: str) -> None:
        self._source = value

    @model_validator(mode="after")
    def _unique_models(self) -> "Config":
        names = [m.name for m in self.models]
        dup = {n for n in names if names.count(n) > 1}
        if dup:
            raise ValueError(f"models: duplicate names {sorted(dup)}")
        return self

    # Derived locations: one place decides the artifact layout.
    @property
    def run_dir(self) -> Path:
        return self.paths.runs / self.experiment

    @property
    def folds_file(self) -> Path:
        return Path(self.folds.file) if self.folds.file else self.paths.folds / f"{self.competition}.csv"

    @property
    def submission_file(self) -> Path:
        return self.paths.submissions / f"{self.experiment}.csv"

    def model(self, name: str) -> ModelConfig:
        for m in self.models:
            if m.name == name:
                return m
        raise ConfigError(f"--model {name!r}: not in models ({', '.join(m.name for m in self.models)})")

    def train_for(self, model: ModelConfig) -> TrainConfig:
        """The train section with the model's own overrides applied (validated; errors name the model)."""
        if not model.train:
            return self.train
        from pydantic import ValidationError

        from segkit.config.loader import _merge

        try:
            return TrainConfig.model_validate(_merge(self.train.model_dump(), model.train))
        except ValidationError as err:
            bad = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in err.errors())
            raise ConfigError(f"models[{model.name}].train: {bad}") from None
