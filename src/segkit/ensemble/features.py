"""Features for the LightGBM stacker, computed from the models' probabilities of one image.

Per pixel, for class k: every model's probability, their mean and spread (disagreement between models marks the
pixels an ensemble gets wrong), local means of the mean probability in boxes of a few sizes (context: a lone
confident pixel in an empty neighbourhood is usually noise), the pixel's relative position (TGS salt sits low in
the image), and the mean probability of the other classes. Per image (repeated on every pixel): each model's and
the mean's maximum, mean and area above 0.5, the image-level "non-empty" probability when that classifier is on,
and the competition's extra per-image columns (e.g. TGS depth).
"""

from __future__ import annotations

import cv2
import numpy as np
import pandas as pd

STATS = ("max", "mean", "area")


def image_stats(p: np.ndarray) -> np.ndarray:
    """(K, 3 * (M + 1)) float32: max, mean and area share above 0.5 of each model's and the mean's class map.

    ``p``: float (M, K, H, W).
    """
    series = np.concatenate([p, p.mean(0, keepdims=True)])  # (M + 1, K, H, W)
    flat = series.reshape(*series.shape[:2], -1)
    stats = np.stack([flat.max(-1), flat.mean(-1), (flat > 0.5).mean(-1)], axis=-1)  # (M + 1, K, 3)
    return stats.transpose(1, 0, 2).reshape(p.shape[1], -1).astype(np.float32)


def image_stat_names(models: list[str]) -> list[str]:
    return [f"{m}:{s}" for m in [*models, "mean"] for s in STATS]


def extra_columns(extra: pd.DataFrame | None) -> list[str]:
    """The numeric per-image columns usable as features."""
    if extra is None:
        return []
    return [c for c in extra.columns if pd.api.types.is_numeric_dtype(extra[c])]


def extra_values(extra: pd.DataFrame | None, columns: list[str], image_id: str) -> np.ndarray:
    """Those columns for one image; NaN (which LightGBM treats as missing) where the csv has no row for it."""
    if not columns:
        return np.zeros(0, dtype=np.float32)
    if image_id not in extra.index:
        return np.full(len(columns), np.nan, dtype=np.float32)
    return extra.loc[image_id, columns].to_numpy(dtype=np.float32)


def pixel_feature_names(models: list[str], n_classes: int, scales: list[int]) -> list[str]:
    names = [f"p:{m}" for m in models] + ["p:mean", "p:std"]
    names += [f"local{s}:mean" for s in scales]
    names += ["pos:y", "pos:x"]
    names += [f"other{j}:mean" for j in range(n_classes - 1)]
    return names


def pixel_features(p: np.ndarray, k: int, scales: list[int], image_row: np.ndarray,
                   index: np.ndarray | None = None) -> np.ndarray:
    """(n, F) float32 features of class ``k`` for the pixels at flat ``index`` (all pixels when None).

    ``p``: float (M, K, H, W); ``image_row``: the per-image values appended to every pixel.
    """
    m_count, k_count, h, w = p.shape
    mean_all = p.mean(0)  # (K, H, W)
    mean = np.ascontiguousarray(mean_all[k], dtype=np.float32)

    def take(a: np.ndarray) -> np.ndarray:
        flat = a.reshape(-1)
        return flat if index is None else flat[index]

    cols = [take(p[m, k]) for m in range(m_count)]
    cols += [take(mean), take(p[:, k].std(0))]
    for s in scales:
        cols.append(take(cv2.blur(mean, (int(s), int(s)), borderType=cv2.BORDER_REFLECT)))
    yy = (np.arange(h, dtype=np.float32) + 0.5) / h
    xx = (np.arange(w, dtype=np.float32) + 0.5) / w
    cols.append(take(np.broadcast_to(yy[:, None], (h, w))))
    cols.append(take(np.broadcast_to(xx[None, :], (h, w))))
    cols += [take(mean_all[j]) for j in range(k_count) if j != k]
    n = len(cols[0])
    out = np.empty((n, len(cols) + len(image_row)), dtype=np.float32)
    for i, c in enumerate(cols):
        out[:, i] = c
    out[:, len(cols):] = image_row[None, :]
    return out
