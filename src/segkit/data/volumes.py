"""Volume competitions (NIfTI): each volume is cut into slices along one voxel axis, and every slice is an image
of the 2D pipeline (with its neighbours as channels: ``data.context``), so folds, training, prediction stores,
tuning and submissions work unchanged; what needs the whole volume — per-volume scores in millimetres, label
volumes with the source's affine — assembles it again from the slices (``assemble``).

Orthogonal views (``data.volumes.train_axes`` / ``predict_axes``): a case is also cut along the other voxel axes.
Those slices have ids of their own (``<case>@axis<a>_<index>``, never in a fold file or a submission) that
training draws from and prediction predicts, averaging each voxel's views back into the slices of ``axis``.

Folders: the MSD / nnU-Net layout (``imagesTr/``, ``labelsTr/``, ``imagesTs/``) or any other pair
(``data.volumes.images`` / ``labels`` / ``test_images``). A case is one file, 3D (one modality) or 4D with the
modalities last (MSD), or one file a modality named ``<case>_0000.nii.gz``, ``<case>_0001.nii.gz``, ... (nnU-Net);
the modalities are the slice's channels (``data.channels``). Intensities are normalised per volume, as MRI needs:
clipped to ``data.clip_percentiles`` of the volume when given, then z-scored (``data.volumes.intensity``). Labels
are integer maps, 0 the background and 1..K the classes; a label volume whose shape or affine differs from its
image's, or that holds another value, is refused naming the file. A slice's id is
``data.volumes.slice_id`` (default ``<case>_s<index>``): the id of a per-slice submission row.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np

from segkit.artifacts import atomic
from segkit.config.schema import DataConfig
from segkit.data.stacks import Position
from segkit.data.volume_readers import DecodedCase, StreamedCase, nibabel
from segkit.errors import ConfigError, DataError

NIFTI = (".nii.gz", ".nii")
_MODALITY = re.compile(r"^(?P<case>.+)_(?P<modality>\d{4})$")
VIEW_ID = "{volume}@axis{axis}_{index:04d}"  # a slice cut along another axis than data.volumes.axis
# Volumes kept decoded per process. Validation, prediction and evaluation go volume by volume, so each volume is
# read once; training draws slices from any volume, and reads a small volume (MSD: 60k voxels, a few ms) again for
# nearly every slice. Large volumes are never decoded whole (segkit.data.volume_readers.StreamedCase).
CACHED_VOLUMES = 4


def case_name(path: Path) -> str:
    name = path.name
    for ext in NIFTI:
        if name.endswith(ext):
            return name[: -len(ext)]
    return name


@dataclass(frozen=True)
class Cut:
    """Where a slice is: its case, the voxel axis it is cut along and its index on that axis."""

    case: str
    axis: int
    index: int


@dataclass(frozen=True)
class Case:
    name: str
    images: tuple[Path, ...]  # one file, or one a modality in order
    label: Path | None


def find_cases(images: Path, labels: Path | None, key: str) -> list[Case]:
    """The cases of an image folder (and their label files), sorted by name."""
    if not images.is_dir():
        raise ConfigError(f"{key}: not a folder: {images}")
    files = sorted(p for p in images.iterdir() if p.name.endswith(NIFTI) and not p.name.startswith("."))
    if not files:
        raise DataError(f"{images}: no NIfTI volumes (.nii, .nii.gz)")
    by_case: dict[str, list[Path]] = {}
    for p in files:
        m = _MODALITY.match(case_name(p))
        by_case.setdefault(m.group("case") if m else case_name(p), []).append(p)
    label_files = {case_name(p): p for p in sorted(labels.iterdir()) if p.name.endswith(NIFTI)} if labels else {}
    cases = []
    for name, paths in sorted(by_case.items()):
        label = label_files.get(name)
        if labels is not None and label is None:
            raise DataError(f"{paths[0]}: no label volume {name}.nii.gz in {labels}")
        cases.append(Case(name, tuple(paths), label))
    return cases


class VolumeSet:
    """The cases of one folder, their slices as ids, and the slices' pixels (a few volumes cached)."""

    def __init__(self, cfg: DataConfig, images: Path, labels: Path | None, key: str):
        self.cfg = cfg
        self.spec = cfg.volumes
        self.axis = self.spec.axis
        self.folder = images
        self.cases = {c.name: c for c in find_cases(images, labels, key)}
        self._decoded: OrderedDict[str, DecodedCase] = OrderedDict()
        self._streamed: dict[str, StreamedCase] = {}

    # ------------------------------------------------------------------------------------------------ the ids
    @cached_property
    def _headers(self) -> dict[str, tuple[tuple[int, ...], tuple[float, ...], np.ndarray]]:
        """case -> (3D shape, voxel spacing in mm, affine), from the headers alone."""
        nib = nibabel()
        out = {}
        for name, case in self.cases.items():
            image = nib.load(case.images[0])
            zooms = tuple(float(z) for z in stored_spacing(case.images[0], image)[:3])
            if len(zooms) < 3 or not all(np.isfinite(z) and z > 0 for z in zooms):
                # every distance in mm and every resampling to the working spacing would be wrong or infinite
                raise DataError(f"{case.images[0]}: case {name!r}: the header's voxel spacing (pixdim) is {zooms}; "
                                f"every axis needs a size above 0 mm")
            out[name] = (tuple(int(s) for s in image.shape[:3]), zooms, image.affine)
        return out

    @cached_property
    def _cuts(self) -> dict[str, Cut]:
        """slice id -> where it is, for the slices along ``axis`` (case by case, in index order) and then along
        the other axes of the views."""
        out: dict[str, Cut] = {}
        for axis in [self.axis] + [a for a in self.view_axes if a != self.axis]:
            for name in self.cases:
                for i, slice_id in enumerate(self.cut(name, axis)):
                    out[slice_id] = Cut(name, axis, i)
        return out

    @property
    def view_axes(self) -> list[int]:
        """Every axis a slice is cut along, for training or prediction."""
        return sorted({self.axis, *self.spec.training_axes, *self.spec.prediction_axes})

    @cached_property
    def positions(self) -> dict[str, Position]:
        """slice id -> (case, index) of the slices along ``axis``, every case's slices in order."""
        return {i: Position(c.case, c.index) for i, c in self._cuts.items() if c.axis == self.axis}

    @cached_property
    def view_positions(self) -> dict[str, Position]:
        """The same for the slices along the other axes; each (case, axis) is a stack of its own for 2.5D."""
        return {i: Position(f"{c.case}@axis{c.axis}", c.index) for i, c in self._cuts.items() if c.axis != self.axis}

    def cut(self, case: str, axis: int) -> list[str]:
        """The ids of a case's slices along ``axis``, in index order."""
        n = self.shape(case)[axis]
        if axis == self.axis:
            return [self.spec.slice_id.format(volume=case, index=i) for i in range(n)]
        return [VIEW_ID.format(volume=case, axis=axis, index=i) for i in range(n)]

    def case_of(self, slice_id: str) -> str:
        return self._cuts[slice_id].case

    def ids(self) -> list[str]:
        return list(self.positions)

    def shape(self, case: str) -> tuple[int, ...]:
        return self._headers[case][0]

    def spacing(self, case: str) -> tuple[float, ...]:
        """Voxel size in mm along the three voxel axes."""
        return self._headers[case][1]

    def affine(self, case: str) -> np.ndarray:
        return self._headers[case][2]

    def slice_size(self, slice_id: str) -> tuple[int, int]:
        cut = self._cuts[slice_id]
        shape = list(self.shape(cut.case))
        del shape[cut.axis]
        return shape[0], shape[1]

    def slice_spacing(self, case: str) -> tuple[float, float]:
        """In-plane spacing of a slice (mm), for distances measured on one slice."""
        spacing = list(self.spacing(case))
        del spacing[self.axis]
        return spacing[0], spacing[1]

    def slices_of(self, case: str) -> list[str]:
        """The ids of a case's slices along ``axis`` in index order."""
        return self.cut(case, self.axis)

    # ------------------------------------------------------------------------------------------------ pixels
    def reader(self, name: str) -> DecodedCase | StreamedCase:
        """The voxels of a case: decoded whole (the last CACHED_VOLUMES kept) or, above
        ``data.volumes.stream_above_mb``, read slice by slice (every streamed case kept: it holds a few slices)."""
        if name in self._streamed:
            return self._streamed[name]
        if name in self._decoded:
            self._decoded.move_to_end(name)
            return self._decoded[name]
        case, shape = self.cases[name], self.shape(name)
        classes = len(self.cfg.classes)
        if np.prod(shape) * self.cfg.channels * 4 > self.spec.stream_above_mb * 2**20:
            kept = 2 * self.cfg.context + 2  # a 2.5D stack and the next slice
            self._streamed[name] = StreamedCase(self.cfg, case.images, case.label, self.affine(name), classes,
                                                shape, kept)
            return self._streamed[name]
        self._decoded[name] = DecodedCase(self.cfg, case.images, case.label, self.affine(name), classes)
        while len(self._decoded) > CACHED_VOLUMES:
            self._decoded.popitem(last=False)
        return self._decoded[name]

    def volume(self, name: str) -> tuple[np.ndarray, np.ndarray | None]:
        """A whole case, for 3D networks: float32 (modalities, X, Y, Z) normalised and its uint8 (X, Y, Z) labels
        (None without a label volume). A streamed case is assembled from its slices along the last axis."""
        reader = self.reader(name)
        if isinstance(reader, DecodedCase):
            return np.ascontiguousarray(reader.image.transpose(3, 0, 1, 2)), reader.label
        depth = self.shape(name)[2]
        image = np.stack([reader.image_slice(2, z) for z in range(depth)], axis=-1)  # (X, Y, C, Z)
        label = None if reader.label is None else np.stack([reader.label_slice(2, z) for z in range(depth)], axis=-1)
        return np.ascontiguousarray(image.transpose(2, 0, 1, 3)), label

    def image(self, slice_id: str) -> np.ndarray:
        """float32 (H, W, modalities) of one slice."""
        cut = self._cuts[slice_id]
        return self.reader(cut.case).image_slice(cut.axis, cut.index)

    def label(self, slice_id: str) -> np.ndarray:
        """uint8 (H, W) label map of one slice (0 background, 1..K)."""
        cut = self._cuts[slice_id]
        label = self.reader(cut.case).label_slice(cut.axis, cut.index)
        if label is None:
            raise DataError(f"case {cut.case!r}: no label volume")
        return label


def stored_spacing(path: Path, image) -> tuple[float, ...]:
    """The voxel sizes the file's header holds. nibabel's loader replaces a zero size by 1 mm with no more than a
    log line, which would put every distance in mm and every resampling silently wrong: read the header again as
    stored."""
    from nibabel.openers import ImageOpener  # here, with nibabel

    with ImageOpener(path) as f:
        header = type(image.header).from_fileobj(f, check=False)
    return tuple(float(z) for z in header.get_zooms())


def assemble(slices: list[np.ndarray], axis: int) -> np.ndarray:
    """A volume from its slices in index order: (..., H, W) arrays stacked back along voxel ``axis`` of the last 3."""
    stacked = np.stack(slices, axis=-3)  # (..., Z', H, W) with Z' the slice axis
    return np.moveaxis(stacked, -3, stacked.ndim - 3 + axis)


def write_labels(path: Path, labels: np.ndarray, affine: np.ndarray, like: Path) -> None:
    """A uint8 label volume as NIfTI with the source image's affine and header (spacing, orientation)."""
    nib = nibabel()
    source = nib.load(like)
    header = source.header.copy()
    header.set_data_dtype(np.uint8)
    image = nib.Nifti1Image(labels.astype(np.uint8), affine, header)
    with atomic.atomic_path(path) as tmp:
        nib.save(image, str(tmp) + ".nii.gz")
        Path(str(tmp) + ".nii.gz").replace(tmp)
