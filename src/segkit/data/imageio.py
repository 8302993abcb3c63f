"""Reading images and mask images from disk into the layouts the pipeline uses.

Images become float32 (H, W, C) in [0, 1]: gray, RGB and RGBA files (8- or 16-bit, float) are converted to the
1 or 3 channels asked for; a file of any other channel count — a multi-page TIFF (its pages are the channels) or a
``.npy`` array (H, W[, C]) — must hold exactly the channels asked for. Masks become uint8 (K, H, W) of 0/1. Every
failure names the file.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from segkit.errors import DataError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".npy")
TIFF_EXTENSIONS = (".tif", ".tiff")
LOSSY_EXTENSIONS = (".jpg", ".jpeg")
# The most pixels one image may declare: OpenCV's own default limit (2^30, e.g. 32768 x 32768). A file declaring
# more is refused from its header, before anything is allocated: a decompression bomb (a few kB of PNG that
# inflate to gigabytes), or a slide that must be tiled before it is a training image. PIL is held to the same
# limit, so reading a header and reading the pixels agree.
MAX_IMAGE_PIXELS = 2**30
Image.MAX_IMAGE_PIXELS = MAX_IMAGE_PIXELS

# Decoding threads fight the DataLoader workers for the same cores.
cv2.setNumThreads(1)
# A broken file is reported once, by us, with its name; OpenCV's own warnings would only repeat it without one.
cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)


def read_raw(path: str | Path) -> np.ndarray:
    """The file's pixels as stored (any dtype, 2-D or H x W x C in RGB(A) order)."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: file not found")
    if path.stat().st_size == 0:
        raise DataError(f"{path}: empty file (0 bytes)")
    if path.suffix.lower() == ".npy":
        return _read_npy(path)
    if path.suffix.lower() in TIFF_EXTENSIONS:
        pages = _tiff_pages(path)
        if pages is not None:
            return pages
    data = np.fromfile(path, dtype=np.uint8)
    try:
        # OpenCV checks the declared size from the header before it allocates (its limit is MAX_IMAGE_PIXELS), so
        # the header is read a second time, by PIL, only to say why a file failed.
        arr = cv2.imdecode(data, cv2.IMREAD_UNCHANGED)
    except cv2.error as err:  # OpenCV asserts on what its header check refuses, rather than returning None
        _refuse_bombs(path)
        raise DataError(f"{path}: not a readable image ({str(err).strip().splitlines()[-1][:160]})") from None
    if arr is None:
        _refuse_bombs(path)
        raise DataError(f"{path}: not a readable image (corrupt, truncated or unsupported format)")
    if arr.ndim == 3:
        if arr.shape[2] == 1:
            arr = arr[:, :, 0]
        elif arr.shape[2] == 3:
            arr = cv2.cvtColor(arr, cv2.COLOR_BGR2RGB)
        elif arr.shape[2] == 4:
            arr = cv2.cvtColor(arr, cv2.COLOR_BGRA2RGBA)
    return arr


def _load_npy(path: str | Path, mmap_mode: str | None = None) -> np.ndarray:
    """np.load that never unpickles: a .npy of objects is refused, naming the file."""
    try:
        return np.load(path, mmap_mode=mmap_mode, allow_pickle=False)
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except ValueError as err:
        raise DataError(f"{path}: not a plain numeric .npy array ({str(err).splitlines()[0][:120]})") from None


def _read_npy(path: Path) -> np.ndarray:
    """An (H, W) or (H, W, C) array."""
    arr = _load_npy(path)
    if arr.ndim not in (2, 3) or arr.dtype.kind not in "uif":
        raise DataError(f"{path}: expected an (H, W) or (H, W, C) numeric array, got {arr.dtype} {arr.shape}")
    return arr


def _tiff_pages(path: Path) -> np.ndarray | None:
    """A multi-page TIFF as (H, W, pages), one channel a page; None for a single page (read as any image)."""
    ok, pages = cv2.imreadmulti(str(path), flags=cv2.IMREAD_UNCHANGED)
    if not ok or len(pages) < 2:
        return None
    shapes = {p.shape for p in pages}
    if len(shapes) != 1 or pages[0].ndim != 2:
        raise DataError(f"{path}: the pages of a multi-page TIFF must be single-channel and alike, found "
                        f"{sorted(shapes)}")
    return np.stack(pages, axis=2)


class ImageTooLarge(DataError):
    """A file whose header declares more pixels than segkit reads (MAX_IMAGE_PIXELS)."""


def _refuse_bombs(path: Path) -> None:
    """Name a file whose header declares more than MAX_IMAGE_PIXELS for what it is (formats PIL cannot parse are
    left to the caller's message)."""
    try:
        image_size(path)
    except ImageTooLarge:
        raise
    except DataError:
        pass


def image_size(path: str | Path) -> tuple[int, int]:
    """(H, W) from the file header only: cheap enough to call for every image of a big set."""
    if Path(path).suffix.lower() == ".npy":
        return tuple(_load_npy(path, mmap_mode="r").shape[:2])  # the header: nothing read but the shape
    try:
        with Image.open(path) as im:
            w, h = im.size
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except Image.DecompressionBombError as err:
        raise ImageTooLarge(f"{path}: refused: the header declares more than {MAX_IMAGE_PIXELS} pixels ({err}); a "
                        f"decompression bomb, or an image too large to read whole (tile it first)") from None
    except Exception as err:  # PIL raises many types for broken headers
        raise DataError(f"{path}: not a readable image ({type(err).__name__})") from None
    return h, w


def to_float(arr: np.ndarray, path: str | Path) -> np.ndarray:
    """Scale any pixel type to float32 in [0, 1]."""
    if arr.dtype == np.uint8:
        return arr.astype(np.float32) * np.float32(1 / 255)
    if arr.dtype == np.uint16:
        return arr.astype(np.float32) * np.float32(1 / 65535)
    if np.issubdtype(arr.dtype, np.floating):
        out = arr.astype(np.float32)
        if not np.isfinite(out).all():
            raise DataError(f"{path}: image contains NaN or infinite values")
        lo, hi = float(out.min()), float(out.max())
        # Float images already in [0, 1] keep their values; others (e.g. raw intensities) are min-max scaled.
        if lo < 0 or hi > 1:
            out = (out - lo) / max(hi - lo, 1e-12)
        return out
    if np.issubdtype(arr.dtype, np.integer):
        info = np.iinfo(arr.dtype)
        return (arr.astype(np.float32) - info.min) / float(info.max - info.min)
    raise DataError(f"{path}: unsupported pixel type {arr.dtype}")


def read_image(path: str | Path, channels: int) -> np.ndarray:
    """float32 (H, W, channels) in [0, 1]."""
    arr = read_raw(path)
    if arr.ndim == 2:
        arr = arr[:, :, None]
    found = arr.shape[2]
    if channels in (1, 3) and found in (1, 3, 4):
        if found == 4:
            arr = arr[:, :, :3]  # alpha carries no signal for segmentation inputs here
        img = to_float(arr, path)
        if channels == 3 and img.shape[2] == 1:
            img = np.repeat(img, 3, axis=2)
        elif channels == 1 and img.shape[2] == 3:
            img = cv2.cvtColor(img, cv2.COLOR_RGB2GRAY)[:, :, None]
        return np.ascontiguousarray(img)
    if found != channels:
        raise DataError(f"{path}: {found}-channel image, data.channels is {channels}")
    return np.ascontiguousarray(to_float(arr, path))


def _binarize(arr: np.ndarray, path: Path) -> np.ndarray:
    """Binary mask from a single-channel mask image.

    Lossless files must hold exactly two values (0 and one foreground value: 1, 255, 65535, ...): anything else is
    probably a label map or a wrong file, so it is an error rather than a silent guess. JPEG masks carry compression
    noise around 0 and the maximum, so they are thresholded at half the type's range instead.
    """
    if path.suffix.lower() in LOSSY_EXTENSIONS:
        top = 255 if arr.dtype == np.uint8 else (np.iinfo(arr.dtype).max if arr.dtype.kind in "ui" else 1.0)
        return (arr > top / 2).astype(np.uint8)
    values = np.unique(arr)
    if len(values) > 2 or (len(values) == 2 and values[0] != 0) or (len(values) == 1 and values[0] != 0):
        shown = ", ".join(str(v) for v in values[:6]) + (" ..." if len(values) > 6 else "")
        raise DataError(f"{path}: binary mask expected (0 and one foreground value), found values {shown}")
    return (arr > 0).astype(np.uint8)


def read_mask(path: str | Path, mode: str, num_classes: int) -> np.ndarray:
    """uint8 (K, H, W) of 0/1.

    binary: one channel; multilabel: a K-channel image (each channel binary) or a label map is refused;
    multiclass: a label map with values 0 (background) .. K.
    """
    path = Path(path)
    arr = read_raw(path)
    if mode == "multiclass":
        if arr.ndim == 3:
            arr = arr[:, :, 0]
        if np.issubdtype(arr.dtype, np.floating) or arr.max() > num_classes:
            raise DataError(
                f"{path}: multiclass label map must hold integers 0..{num_classes}, max is {arr.max()}"
            )
        labels = arr.astype(np.int64)
        return np.stack([(labels == k + 1) for k in range(num_classes)]).astype(np.uint8)
    if mode == "multilabel" and num_classes > 1:
        if arr.ndim != 3 or arr.shape[2] < num_classes:
            raise DataError(f"{path}: multilabel mask needs {num_classes} channels, has shape {arr.shape}")
        return np.stack([_binarize(arr[:, :, k], path) for k in range(num_classes)])
    if arr.ndim == 3:
        # An RGB(A) mask where all channels agree is a gray mask saved in colour.
        if not (arr[:, :, :3] == arr[:, :, :1]).all():
            raise DataError(f"{path}: colour mask with differing channels; expected one channel")
        arr = arr[:, :, 0]
    return _binarize(arr, path)[None]
