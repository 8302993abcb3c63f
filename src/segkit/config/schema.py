"""Typed configuration. Every section forbids unknown keys, so a typo is an error, not a silent default.

Sections map to pipeline stages (data, folds, train + models, predict, ensemble, pseudo, tune, submit). Paths under
``data`` are relative to ``data.root``; ``paths`` (runs, folds, submissions) are relative to the working directory.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Annotated, Any, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator, model_validator

from segkit.artifacts.layout import Layout
from segkit.config.merge import merge
from segkit.errors import ConfigError


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


PositiveInt = Annotated[int, Field(ge=1)]
Workers = Union[Annotated[int, Field(ge=0)], Literal["auto"]]


# ----------------------------------------------------------------------------------------------------------- data


class RLESpec(Section):
    """How the train csv stores masks."""

    id_column: str = "id"
    rle_column: str = "rle_mask"
    class_column: Optional[str] = None  # e.g. ClassId (values: 1-based class index or class name)
    id_class_sep: Optional[str] = None  # compound ids like "0002cc93b.jpg_1" -> sep "_"
    order: Literal["F", "C"] = "F"  # F: Kaggle column-major (top-to-bottom first); C: row-major
    relative: bool = False  # SIIM: each start counts from the end of the previous run


class InstanceSpec(Section):
    """An instance competition (segkit.data.instances): objects from label maps or a per-object RLE csv; the
    network learns per-pixel targets (its channels, which data.classes then names) that a decoder turns into
    objects (segkit.postprocess.instances)."""

    labels: Optional[str] = None  # folder of instance label maps (16-bit PNG/TIF) named like the images ...
    csv: Optional[str] = None  # ... or one RLE row per object (data.rle's columns and order; '' = no object)
    overlaps: Literal["error", "later_wins"] = "error"  # csv objects sharing pixels: refused, or the later wins
    targets: list[Literal["mask", "contour"]] = Field(default_factory=lambda: ["mask", "contour"], min_length=1)
    contour_width: int = Field(2, ge=1)  # px of each object's border band (where it meets another label)

    @model_validator(mode="after")
    def _one_source(self) -> "InstanceSpec":
        if bool(self.labels) == bool(self.csv):
            raise ValueError("give labels (a folder of instance label maps) or csv (one RLE row per object)")
        if len(set(self.targets)) != len(self.targets) or self.targets[0] != "mask":
            raise ValueError(f"targets: mask first, each once, got {self.targets}")
        return self


class SliceSpec(Section):
    """Where each image sits in its volume, for 2.5D stacks: a regex over the file's id with the named groups
    ``index`` (and ``volume``; without it every image is one volume), or columns of ``data.extra_csv``."""

    pattern: Optional[str] = None  # e.g. '(?P<volume>.+)_slice_(?P<index>\\d+)' (UW-Madison), '(?P<index>\\d+)'
    volume_column: Optional[str] = None
    index_column: Optional[str] = None

    @model_validator(mode="after")
    def _one_source(self) -> "SliceSpec":
        if bool(self.pattern) == bool(self.index_column):
            raise ValueError("give pattern (a regex with an 'index' group) or index_column (of data.extra_csv)")
        if self.pattern:
            try:
                groups = re.compile(self.pattern).groupindex
            except re.error as err:
                raise ValueError(f"pattern: not a regex ({err})") from None
            if "index" not in groups:
                raise ValueError("pattern: needs a named group 'index', e.g. (?P<index>\\d+)")
        return self


class VolumeSpec(Section):
    """A competition of NIfTI volumes (segkit.data.volumes): folders of image and label volumes, cut into slices."""

    images: str = "imagesTr"
    labels: Optional[str] = "labelsTr"
    test_images: Optional[str] = None  # imagesTs; without it, data.holdout_fraction plays the test set
    axis: int = Field(2, ge=0, le=2)  # the voxel axis the slices are cut along
    slice_id: str = "{volume}_s{index:03d}"  # a slice's id (and its per-slice submission rows)
    intensity: Literal["zscore", "none"] = "zscore"  # per volume and modality, after data.clip_percentiles
    nsd_tolerance: float = Field(1.0, gt=0)  # mm: normalised surface Dice counts surface voxels this close
    # Orthogonal views: training cuts the training cases along each of train_axes (validation stays on `axis`),
    # and prediction predicts every case along each of predict_axes and averages them (default: `axis` alone).
    train_axes: Optional[list[int]] = None
    predict_axes: Optional[list[int]] = None
    # A case whose decoded float32 image is larger is read slice by slice from its file, never held whole
    # (segkit.data.volume_readers); plain .nii files then, since a .nii.gz is decompressed up to every slice read.
    stream_above_mb: float = Field(256.0, ge=0)
    # 3D networks see every case resampled to this voxel spacing (mm along voxel axes 0, 1, 2) and predict back on
    # each case's own grid; null: the cases' median, a thick axis its 10th percentile (segkit.data.spacing)
    spacing: Optional[list[float]] = Field(None, min_length=3, max_length=3)

    @field_validator("slice_id")
    @classmethod
    def _names_both(cls, v: str) -> str:
        try:
            v.format(volume="v", index=1)
        except (KeyError, IndexError, ValueError) as err:
            raise ValueError(f"slice_id: a format with {{volume}} and {{index}} only ({err})") from None
        if "{volume" not in v or "{index" not in v:
            raise ValueError("slice_id: must name {volume} and {index}")
        return v

    @model_validator(mode="after")
    def _views(self) -> "VolumeSpec":
        for key in ("train_axes", "predict_axes"):
            axes = getattr(self, key)
            if axes is not None and (not axes or len(set(axes)) != len(axes) or not set(axes) <= {0, 1, 2}):
                raise ValueError(f"{key}: distinct voxel axes among 0, 1, 2, got {axes}")
        if self.axis not in self.training_axes:
            raise ValueError(f"train_axes: {self.train_axes} leaves out axis {self.axis}, which validation cuts along")
        unseen = [a for a in self.prediction_axes if a not in self.training_axes]
        if unseen:
            raise ValueError(f"predict_axes: axis {unseen[0]} is not among train_axes {self.training_axes}: the "
                             f"networks never saw slices cut along it")
        return self

    @property
    def training_axes(self) -> list[int]:
        return list(self.train_axes or [self.axis])

    @property
    def prediction_axes(self) -> list[int]:
        return list(self.predict_axes or [self.axis])


class ResizeSpec(Section):
    """The working resolution (segkit.data.resize): one of a fixed size, a scale factor or a longest side."""

    size: Optional[tuple[int, int]] = None  # [H, W]
    scale: Optional[float] = Field(None, gt=0)  # above 1 enlarges
    longest: Optional[int] = Field(None, ge=8)  # the longest side, aspect kept

    @model_validator(mode="after")
    def _one(self) -> "ResizeSpec":
        given = [k for k in ("size", "scale", "longest") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(f"give one of size, scale or longest (given: {', '.join(given) or 'none'})")
        if self.size is not None and min(self.size) < 8:
            raise ValueError(f"size: {list(self.size)} is too small to segment")
        return self


class DataConfig(Section):
    root: Path = Path("data/demo")
    train_images: str = "train/images"
    train_masks: Optional[str] = None  # folder of mask images named like the train images ...
    train_csv: Optional[str] = None  # ... or an RLE csv
    # Where the masks come from, by the name of a registered source (segkit.data.sources); unset: implied by the
    # keys set (volumes, instances, train_masks, train_csv). mask_options: settings of a source added by a module
    # of `imports`.
    mask_source: Optional[str] = None
    mask_options: dict[str, Any] = Field(default_factory=dict)
    rle: RLESpec = Field(default_factory=RLESpec)
    test_images: Optional[str] = "test/images"
    sample_submission: Optional[str] = "sample_submission.csv"
    mode: Literal["binary", "multilabel", "multiclass"] = "binary"
    classes: list[str] = Field(default_factory=lambda: ["foreground"], min_length=1)
    # Channels of one image file; gray and RGB(A) files are converted to 1 or 3, any other count must match.
    channels: int = Field(3, ge=1)
    # Per-channel files: the image <id> is <id><suffix>.<ext> for each suffix, one channel each (HPA-style bands).
    channel_suffixes: Optional[list[str]] = Field(None, min_length=1)
    # Clip each channel of an image to these percentiles of its own values and scale it to [0, 1] on read: raw CT,
    # MRI and float images (augmentations assume [0, 1]).
    clip_percentiles: Optional[tuple[float, float]] = None
    # imagenet: the encoders' pretraining statistics (1 or 3 input channels); image: each image's own per-channel
    # mean and std; dataset: data.mean / data.std (per input channel; `segkit check` prints the train set's); none
    normalize: Literal["imagenet", "image", "dataset", "none"] = "imagenet"
    mean: Optional[list[float]] = None
    std: Optional[list[float]] = None
    invert_masks: bool = False  # mask images whose foreground is black (ISBI 2012's membranes are 0)
    volumes: Optional[VolumeSpec] = None  # NIfTI volumes, cut into slices (then train_images etc. are unused)
    instances: Optional[InstanceSpec] = None  # one mask per object (then train_masks / train_csv are unused)
    # 2.5D: every image is a slice plus its neighbours +-context*stride as channels, in index order
    slices: Optional[SliceSpec] = None
    context: int = Field(0, ge=0)
    context_stride: int = Field(1, ge=1)
    context_ends: Literal["mirror", "repeat"] = "mirror"  # neighbours past a volume's first / last slice
    extra_csv: Optional[str] = None  # per-image columns (e.g. TGS depths.csv), joined on its first column
    group_column: Optional[str] = None  # column of extra_csv / train csv: no group spans two folds
    # Labelled images held out of training and scored like a hidden test set (public data has no test labels).
    holdout_fraction: float = Field(0.0, ge=0.0, lt=1.0)
    # Or a given set (a published split's test list): a text file under root, one id a line (a volume competition:
    # one case a line, its every slice held out)
    holdout_list: Optional[str] = None
    # The working resolution: images are resized on read for training and prediction, and every probability is
    # resized back to its image's native size (segkit.data.resize). Unset: native size.
    resize: Optional[ResizeSpec] = None

    def path(self, key: str) -> Path:
        """Absolute-or-cwd-relative path of a data key, checked to exist."""
        value = getattr(self, key)
        if value is None:
            raise ConfigError(f"data.{key}: not set")
        p = self.root / value
        if not p.exists():
            raise ConfigError(f"data.{key}: path does not exist: {p}")
        return p

    @model_validator(mode="before")
    @classmethod
    def _instance_channels(cls, data: Any) -> Any:
        """An instance competition's network channels are its targets: multilabel, data.classes named after them."""
        if not isinstance(data, dict) or not data.get("instances"):
            return data
        spec = data["instances"]
        names = list((spec.get("targets") if isinstance(spec, dict) else spec.targets) or ["mask", "contour"])
        if data.get("classes") not in (None, names):
            raise ValueError(f"classes: an instance competition's channels are data.instances.targets {names}; "
                             f"leave data.classes unset")
        return {**data, "classes": names, "mode": "multilabel"}

    @model_validator(mode="after")
    def _masks_source(self) -> "DataConfig":
        if self.train_masks and self.train_csv:
            raise ValueError("give train_masks (a folder) or train_csv (RLE), not both")
        if self.mode == "binary" and len(self.classes) != 1:
            raise ValueError("binary mode has exactly one class")
        if self.context and self.slices is None and self.volumes is None:
            raise ValueError("context: needs data.slices (which volume and index each image is) or data.volumes")
        if self.instances is not None and (self.train_masks or self.train_csv or self.volumes is not None):
            raise ValueError("instances: its objects are the masks; leave train_masks, train_csv and volumes unset")
        if self.resize is not None and self.volumes is not None:
            raise ValueError("resize: volumes keep their voxel grid (their label volumes are written on it); leave "
                             "data.resize unset")
        if self.volumes is not None and self.slices is not None:
            raise ValueError("slices: a volume competition's slices are the volumes'; leave data.slices unset")
        if self.channel_suffixes and self.channels != len(self.channel_suffixes):
            raise ValueError(f"channels: {self.channels}, but channel_suffixes names {len(self.channel_suffixes)} "
                             f"files of one channel each")
        if self.normalize == "imagenet" and self.input_channels not in (1, 3):
            raise ValueError(f"normalize: imagenet statistics are for 1 or 3 input channels, these images have "
                             f"{self.input_channels}; use image, dataset or none")
        if self.normalize == "dataset":
            for key in ("mean", "std"):
                values = getattr(self, key)
                if values is None or len(values) != self.input_channels:
                    raise ValueError(f"{key}: normalize: dataset needs {self.input_channels} values (one per input "
                                     f"channel; `segkit check` prints the train set's)")
        if self.clip_percentiles is not None and not 0 <= self.clip_percentiles[0] < self.clip_percentiles[1] <= 100:
            raise ValueError("clip_percentiles: [low, high] with 0 <= low < high <= 100")
        return self

    @property
    def input_channels(self) -> int:
        """Channels the network sees: one file's channels times the slices of a 2.5D stack."""
        return self.channels * (2 * self.context + 1)


class FoldsConfig(Section):
    n_splits: int = Field(5, ge=2)
    seed: int = 42
    coverage_bins: int = Field(5, ge=1)  # non-empty masks are binned by coverage quantile; empty is its own bin
    stratify: Literal["auto", "coverage", "classes", "none"] = "auto"
    # blocks: each volume's slices (data.slices) cut into n_splits contiguous runs of index, run k in fold k:
    # neighbouring sections of one stack are near copies, so random folds would validate on their twins
    split: Literal["stratified", "blocks"] = "stratified"
    file: Optional[str] = None  # default: <paths.folds>/<competition>.csv


# ---------------------------------------------------------------------------------------------------------- train


class ScheduleConfig(Section):
    """Learning-rate schedule: a multiplier of each group's base lr, stepped once per optimizer step."""

    name: str = "cosine"  # registry: constant, cosine, cosine_restarts, onecycle, cyclic, plateau
    warmup_epochs: float = Field(0.0, ge=0)  # linear warm-up from ~0, multiplied into any schedule
    min_lr: float = Field(1e-6, ge=0)  # floor of the (decoder) lr; the encoder's floor scales with it
    cycles: int = Field(1, ge=1)  # cosine_restarts / cyclic: cycles in the run (epochs must divide evenly)
    pct_start: float = Field(0.3, gt=0, lt=1)  # onecycle: share of the run spent rising
    div_factor: float = Field(25.0, gt=0)  # onecycle: start lr = lr / div_factor
    final_div_factor: float = Field(1e4, gt=0)  # onecycle: end lr = start lr / final_div_factor
    patience: int = Field(2, ge=0)  # plateau: validations without improvement before cutting
    factor: float = Field(0.5, gt=0, lt=1)  # plateau: lr multiplier per cut


class LossStage(Section):
    """Loss terms for the epochs up to ``until_epoch`` (1-based, inclusive); the last stage runs to the end."""

    until_epoch: Optional[int] = Field(None, ge=1)
    terms: dict[str, float] = Field(min_length=1)


class AverageConfig(Section):
    """Weight averaging of a fold's last epochs (``segkit.stages.train.averaging``): the fold then predicts with the
    average, its best single epoch kept beside it."""

    method: Literal["swa", "soup"]  # swa: the mean of every ingredient; soup: greedy, kept when val does not drop
    at: Literal["epochs", "cycles"] = "epochs"  # ingredients: the end of each epoch of the window, or of each LR cycle
    window: float = Field(0.25, gt=0, le=1)  # at: epochs: the last share of the epochs (at least two epochs)

    def ingredient_epochs(self, epochs: int, cycle_ends: list[int]) -> list[int]:
        """The 1-based epochs whose weights go into the average."""
        if self.at == "cycles":
            return list(cycle_ends)
        return list(range(epochs - max(2, math.ceil(self.window * epochs)) + 1, epochs + 1))


class TrainConfig(Section):
    epochs: int = Field(10, ge=1)
    # Instead of epochs: the minutes a fold may train here; epochs derived from a measured step (segkit.stages.train
    # .budget), recorded in last.pt so that a resume keeps them.
    minutes: Optional[float] = Field(None, gt=0)
    batch_size: int = Field(8, ge=1)
    val_batch_size: Optional[int] = Field(None, ge=1)  # default: batch_size
    optimizer: str = "adamw"  # registry: adamw, sgd, radam
    lr: float = Field(1e-3, gt=0)  # decoder and heads
    encoder_lr: Optional[float] = Field(None, gt=0)  # default: same as lr
    weight_decay: float = Field(1e-4, ge=0)  # never applied to biases and norm weights
    momentum: float = 0.9  # sgd
    nesterov: bool = False  # sgd
    schedule: ScheduleConfig = Field(default_factory=ScheduleConfig)
    loss: dict[str, float] = Field(default_factory=lambda: {"bce": 1.0, "dice": 1.0}, min_length=1)
    loss_stages: list[LossStage] = Field(default_factory=list)  # replaces `loss` epoch by epoch
    class_weights: Optional[list[float]] = None  # one per class in data.classes
    loss_params: dict[str, dict[str, Any]] = Field(default_factory=dict)  # e.g. {focal: {gamma: 2}}
    augment: str = "light"
    crop_size: Optional[int] = None  # random crops of this size for training (big images)
    # 3D networks: the training patch along voxel axes 0, 1, 2 (at the working spacing, data.volumes.spacing), each
    # side a multiple of the network's stride; also the sliding window's size at prediction
    patch_size: Optional[list[int]] = Field(None, min_length=3, max_length=3)
    pad_to: int = 32  # pad inputs to a multiple of the network stride, un-pad predictions
    amp: Literal["none", "bf16", "fp16", "auto"] = "none"  # auto: see segkit.compute.device.resolve_amp
    channels_last: bool = False
    compile: bool = False
    workers: Workers = 0  # DataLoader workers; auto: from the cores on a GPU, 0 on the CPU (segkit.compute.sizing)
    pin_memory: bool = False
    threads: Optional[int] = Field(None, ge=1)  # torch CPU threads (default: torch's choice, one per core)
    deterministic: bool = False
    ema: Optional[float] = Field(None, gt=0, lt=1)  # decay, e.g. 0.999; validation and checkpoints use the EMA
    accumulate: int = Field(1, ge=1)
    clip_grad: Optional[float] = Field(None, gt=0)  # max global grad norm
    positive_share: Optional[float] = Field(None, ge=0, le=1)  # share of images with a mask in every batch
    sync_bn: bool = False  # DDP only
    monitor: Optional[str] = None  # picks best.pt: loss | dice | iou | score (default: score = cfg.metric)
    threshold: float = Field(0.5, gt=0, lt=1)  # binarises probabilities for the validation metrics
    average: Optional[AverageConfig] = None  # SWA or a greedy soup of the last epochs / cycles
    keep: list[Literal["best", "last", "snapshots"]] = Field(default_factory=lambda: ["best", "last", "snapshots"])
    nan_policy: Literal["stop", "skip"] = "stop"
    val_every: int = Field(1, ge=1)  # the last epoch is always validated
    max_steps_per_epoch: Optional[int] = Field(None, ge=1)  # cap for quick runs and tests
    progress: bool = True  # tqdm bars (shown only on a terminal)

    @model_validator(mode="after")
    def _check(self) -> "TrainConfig":
        if "best" not in self.keep:
            raise ValueError("keep must include 'best' (the OOF and the predict stage use best.pt)")
        ends = [s.until_epoch for s in self.loss_stages]
        if any(e is None for e in ends[:-1]):
            raise ValueError("loss_stages: only the last stage may omit until_epoch")
        given = [e for e in ends if e is not None]
        if given != sorted(set(given)):
            raise ValueError("loss_stages: until_epoch must increase from stage to stage")
        cyclic = self.schedule.name in ("cosine_restarts", "cyclic")
        if cyclic and self.epochs % self.schedule.cycles:
            raise ValueError(f"schedule.cycles ({self.schedule.cycles}) must divide epochs ({self.epochs})")
        if self.average is not None and self.average.at == "cycles" and not (cyclic and self.schedule.cycles > 1):
            raise ValueError("average.at: cycles averages the end of each LR cycle: it needs schedule.name "
                             "cosine_restarts or cyclic with schedule.cycles >= 2 (or use at: epochs)")
        if self.average is not None and self.average.at == "epochs" and self.epochs < 2 and self.minutes is None:
            raise ValueError("average: averaging needs at least two epochs (train.epochs)")
        return self


class ModelConfig(Section):
    name: str
    arch: str = "Unet"  # registry: Unet, UnetPlusPlus, FPN, DeepLabV3, DeepLabV3Plus, Linknet, PSPNet, MAnet, ...
    encoder: str = "resnet34"  # any smp encoder, or tu-<timm model>
    encoder_weights: Optional[str] = None  # null | imagenet | path to .pth / .safetensors
    decoder_attention: Optional[Literal["scse"]] = None  # Unet / UnetPlusPlus only
    aux_head: bool = False  # image-level "has mask" classification head
    aux_weight: float = Field(0.1, ge=0)  # weight of its BCE in the loss
    # The network sees its input this many times larger (bilinear) and its mask logits are averaged back down:
    # small objects in small tiles (TGS's 101 px) get more pixels through the encoder's strides, at scale^2 the cost.
    input_scale: int = Field(1, ge=1, le=8)
    params: dict[str, Any] = Field(default_factory=dict)  # passed to the smp constructor
    train: dict[str, Any] = Field(default_factory=dict)  # per-model overrides of the train section

    @field_validator("name")
    @classmethod
    def _safe_name(cls, v: str) -> str:
        if not v or "/" in v or v.startswith("."):
            raise ValueError("model name must be a plain folder name")
        return v


# -------------------------------------------------------------------------------------------------------- predict


def scales_problem(scales) -> Optional[str]:
    """What is wrong with a list of TTA scales (``predict.tta_scales``), or None."""
    if not scales:
        return "empty; [1] predicts at the native size alone"
    bad = [s for s in scales if not s > 0]
    if bad:
        return f"{bad[0]} is no scale: every scale must be > 0, e.g. [0.75, 1, 1.25]"
    if len(set(scales)) != len(scales):
        return f"{list(scales)} names a scale twice"
    return None


class PredictConfig(Section):
    tta: str = "d4"  # none | hflip | flips | d4: the views of image (and 2.5D slice) models
    tta_3d: str = "mirror3d"  # the views of 3D models' windows: mirror3d (8 flips of three axes), flips, none, ...
    tta_merge: Literal["mean", "gmean", "max"] = "mean"
    # multi-scale TTA: every view again at these sizes relative to the image (image and 2.5D models), merged at the
    # native size; [1]: native only (segkit.inference.tta)
    tta_scales: list[float] = Field(default_factory=lambda: [1.0], min_length=1)
    batch_size: Union[PositiveInt, Literal["auto"]] = 8  # auto: what fits the GPU's free memory (segkit.compute.sizing)
    tta_chunk: Optional[int] = None  # views per forward batch; default by device
    tile_size: Optional[int] = None  # tiled inference for images larger than this
    tile_overlap: float = Field(0.5, ge=0, lt=1)
    tile_blend: Literal["gaussian", "linear"] = "gaussian"
    repredict_oof: bool = False  # also re-predict each fold's validation ids with TTA into <model>/oof_tta/
    amp: Literal["none", "bf16", "fp16", "auto"] = "none"  # auto: see segkit.compute.device.resolve_amp
    snapshots: bool = True  # average the cycle snapshots (snapshot<c>.pt) of each fold with its best.pt
    # how: the mean of their probabilities (one network each), or of their weights (one network a fold:
    # weights_mean.pt, k times faster to predict; what the bundle then carries)
    snapshot_merge: Literal["probabilities", "weights"] = "probabilities"
    # which end-of-training checkpoint of each fold to use; best_epoch: with train.average, the best single epoch
    checkpoint: Literal["best", "last", "best_epoch"] = "best"
    channels_last: bool = False
    workers: Workers = 0  # DataLoader workers reading test images (auto as train.workers)

    @field_validator("tta_scales")
    @classmethod
    def _scales(cls, v: list[float]) -> list[float]:
        problem = scales_problem(v)
        if problem:
            raise ValueError(problem)
        return v

    def tta_of(self, dims: int) -> str:
        """The views of a network with ``dims`` spatial axes: ``tta_3d`` for a 3D one, ``tta`` otherwise."""
        return self.tta_3d if dims == 3 else self.tta


class EnsembleConfig(Section):
    # registry names (segkit.ensemble.METHODS); "all" = every registered method
    methods: list[str] = Field(default_factory=lambda: ["mean"])
    choose: Optional[str] = None  # method (or "model:<name>") to use; default: the best ensemble method by CV
    fit_pixels: int = Field(20_000_000, ge=1)  # pixel values per model held in RAM to fit weights / vote thresholds
    stack_pixels: int = Field(200_000, ge=100)  # OOF pixels (per class) the LightGBM stacker trains on
    stack_params: dict[str, Any] = Field(default_factory=dict)  # LightGBM parameters over segkit's defaults
    stack_rounds: int = Field(100, ge=1)  # boosting rounds of the pixel stacker
    stack_scales: list[int] = Field(default_factory=lambda: [5, 15, 31])  # box sizes of local-mean features
    stack_test: Literal["folds", "refit"] = "folds"  # test: mean of the fold stackers, or one fit on all OOF
    empty_classifier: bool = True  # image-level "is this class empty" LightGBM; its output is a stacker feature
    empty_gate: Optional[float] = Field(None, ge=0, le=1)  # stacker: blank a class when P(non-empty) < this
    threads: Optional[int] = Field(None, ge=1)  # LightGBM threads (default: 1 for small jobs, half the cores)


class PseudoConfig(Section):
    rounds: int = Field(0, ge=0)  # pseudo-labelling rounds `segkit pseudo` / `segkit run` go through
    round: int = Field(0, ge=0)  # the round this config trains in: 0 = no pseudo labels, r = mix in pseudo/round<r>
    low: float = Field(0.2, ge=0, le=1)  # a pixel is confident below `low` or above `high`
    high: float = Field(0.8, ge=0, le=1)
    confident_share: float = Field(0.97, ge=0, le=1)  # share of confident pixels an image needs to be selected
    threshold: float = Field(0.5, gt=0, lt=1)  # binarises the selected images' probabilities into labels
    max_images: Optional[int] = Field(None, ge=1)  # keep at most this many (the most confident)
    batch_share: float = Field(0.3, ge=0, le=1)  # share of each training batch drawn from pseudo-labelled images

    @model_validator(mode="after")
    def _band(self) -> "PseudoConfig":
        if self.low > self.high:
            raise ValueError("pseudo.low must not exceed pseudo.high")
        return self


class InstanceTune(Section):
    """The instance decoder's search grids (segkit.stages.tune.instances); p > 0.5 and 0 are the starting point."""

    masks: list[float] = Field(default_factory=lambda: [0.3, 0.4, 0.5, 0.6, 0.7])
    seeds: list[float] = Field(default_factory=lambda: [0.2, 0.3, 0.4, 0.5, 0.6, 0.7])
    min_seeds: list[int] = Field(default_factory=lambda: [0, 4, 8, 16, 32])
    min_sizes: list[int] = Field(default_factory=lambda: [0, 8, 16, 32, 64])
    dilations: list[int] = Field(default_factory=lambda: [0, 1, 2])
    max_images: Optional[int] = Field(400, ge=2)  # an even sample of the OOF images the search decodes


class TuneConfig(Section):
    """Post-processing search on the ensemble OOF (segkit.stages.tune); 0.5 and 0 are always added to the grids, being
    the untuned baseline."""

    thresholds: list[float] = Field(default_factory=lambda: [round(0.05 * i, 2) for i in range(2, 19)], min_length=1)
    min_areas: list[int] = Field(default_factory=lambda: [0, 10, 25, 50, 100, 200, 400], min_length=1)
    empty_rule: bool = True
    # The empty-mask rule's N: a class is dropped when fewer than N pixels exceed the top threshold.
    empty_pixels: list[int] = Field(default_factory=lambda: [5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000])
    morphology: bool = True
    morph_radii: list[int] = Field(default_factory=lambda: [1, 2, 3])
    # the morphology steps tried, in this order (segkit.postprocess.masks.MASK_STEPS: a module may add its own)
    morph_steps: list[str] = Field(default_factory=lambda: ["fill_holes", "opening", "closing", "dilation", "erosion"])
    keep_largest: bool = True  # try keeping only the largest component (one object per image)
    # volume competitions: after the slice-wise search, per class the largest 3D component or a minimum volume
    volume_cleanup: bool = True
    min_volumes: list[int] = Field(default_factory=lambda: [10, 50, 100, 250, 500, 1000])
    # ... and with it, per class, the slice-wise threshold shifted by one of these (0 is always tried)
    volume_threshold_shifts: list[float] = Field(default_factory=lambda: [-0.2, -0.1, 0.1, 0.2])
    instances: InstanceTune = Field(default_factory=InstanceTune)  # instance competitions: the decoder's search
    # When a step is kept (segkit.stages.tune.search.KeepRule): a number g (its mean gain exceeds g), "most_folds" (its
    # gain is positive on more than half of the folds) or "fold_se" (its mean gain exceeds the standard error of
    # its per-fold gains). The default, any positive mean gain, scored the best nested CV of these rules on six
    # runs (bench/tune_rules.py, BENCHMARKS.md).
    min_gain: Union[Annotated[float, Field(ge=0)], Literal["most_folds", "fold_se"]] = 0.0

    @field_validator("thresholds")
    @classmethod
    def _probabilities(cls, v: list[float]) -> list[float]:
        if any(not 0.0 <= t < 1.0 for t in v):
            raise ValueError("thresholds must lie in [0, 1)")
        return v

    @field_validator("min_areas", "empty_pixels", "morph_radii", "min_volumes")
    @classmethod
    def _non_negative(cls, v: list[int]) -> list[int]:
        if any(x < 0 for x in v):
            raise ValueError("must be non-negative")
        return v


# ---------------------------------------------------------------------------------------------------------- root


class PlanConfig(Section):
    """The budget a recipe was planned for (``segkit plan`` writes it): ``segkit run`` prints each stage's time
    against its planned minutes and says, as soon as the train stage ends, when the run is heading past the budget."""

    minutes: Optional[float] = Field(None, gt=0)  # the whole run
    stages: dict[str, float] = Field(default_factory=dict)  # a stage's name -> its planned minutes

    @field_validator("stages")
    @classmethod
    def _positive(cls, v: dict[str, float]) -> dict[str, float]:
        bad = [k for k, m in v.items() if m <= 0]
        if bad:
            raise ValueError(f"{bad[0]}: planned minutes must be > 0")
        return v


class PathsConfig(Section):
    runs: Path = Path("runs")
    folds: Path = Path("folds")
    submissions: Path = Path("submissions")


class Config(Section):
    competition: str = "demo"  # names folds/<competition>.csv
    # Modules imported when the config loads, before any name it picks is checked: where an experiment's own
    # components register themselves (README: Extending segkit). A module may also be a .py file beside the config.
    imports: list[str] = Field(default_factory=list)
    experiment: str = "demo"  # names runs/<experiment>/ and submissions/<experiment>.csv
    budget: Optional[str] = None  # the `budgets:` entry merged over this file (config/loader.py); for the record
    metric: str = "dice"  # the competition's own score (segkit.metrics registry)
    seed: int = 42
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    # Processes sharing the per-image passes of ensemble, tune and evaluate (segkit.compute.pool): auto = the cores
    # this process may use; 1 = this process alone
    cpu_workers: Workers = "auto"
    paths: PathsConfig = Field(default_factory=PathsConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    folds: FoldsConfig = Field(default_factory=FoldsConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    models: list[ModelConfig] = Field(default_factory=list)
    predict: PredictConfig = Field(default_factory=PredictConfig)
    ensemble: EnsembleConfig = Field(default_factory=EnsembleConfig)
    pseudo: PseudoConfig = Field(default_factory=PseudoConfig)
    tune: TuneConfig = Field(default_factory=TuneConfig)
    plan: PlanConfig = Field(default_factory=PlanConfig)

    _source: str = PrivateAttr(default="")
    _origins: dict = PrivateAttr(default_factory=dict)

    @property
    def source(self) -> str:
        """The config file this was loaded from ("" when built in code)."""
        return self._source

    @source.setter
    def source(self, value: str) -> None:
        self._source = value

    @property
    def origins(self) -> dict[str, str]:
        """Which file (or the command line) set each key, for error messages that name it."""
        return self._origins

    @origins.setter
    def origins(self, value: dict[str, str]) -> None:
        self._origins = dict(value)

    def origin(self, key: str) -> str:
        """The file (or "command line") that set ``key`` or its nearest parent; the config file otherwise."""
        parts = key.split(".")
        for n in range(len(parts), 0, -1):
            hit = self._origins.get(".".join(parts[:n]))
            if hit:
                return hit
        return self._source or "config"

    @model_validator(mode="after")
    def _unique_models(self) -> "Config":
        names = [m.name for m in self.models]
        dup = {n for n in names if names.count(n) > 1}
        if dup:
            raise ValueError(f"models: duplicate names {sorted(dup)}")
        return self

    @property
    def layout(self) -> Layout:
        """Where every artifact of this experiment lives (``segkit.artifacts.layout``)."""
        return Layout.of(self)

    # The three roots of the layout, for convenience (notebooks, tests).
    @property
    def run_dir(self) -> Path:
        return self.layout.run_dir

    @property
    def folds_file(self) -> Path:
        return self.layout.folds_file

    @property
    def submission_file(self) -> Path:
        return self.layout.submission

    def model(self, name: str) -> ModelConfig:
        for m in self.models:
            if m.name == name:
                return m
        raise ConfigError(f"--model {name!r}: not in models ({', '.join(m.name for m in self.models)})")

    def train_for(self, model: ModelConfig) -> TrainConfig:
        """The train section with the model's own overrides applied (validated; errors name the model)."""
        if not model.train:
            return self.train
        try:
            return TrainConfig.model_validate(merge(self.train.model_dump(), model.train))
        except ValidationError as err:
            bad = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in err.errors())
            raise ConfigError(f"models[{model.name}].train: {bad}") from None
