"""2.5D stacks: which volume and slice index each image is, and which images make up its input.

An image of a 2.5D competition is one slice of a volume; the network sees it with its neighbours at
``index +- j * stride`` (j = 1..context) as extra channels, in index order, so that it can tell structures that
run across slices from ones that do not. Past a volume's first or last slice the neighbours are mirrored
(index -1 is index 1) or repeated (index -1 is index 0), ``data.context_ends``. Where a volume and index come
from: a regex over the id with the named groups ``volume`` (optional: without it all images are one volume) and
``index``, or two columns of ``data.extra_csv``. Volumes are the groups of the folds, so no volume is split across
two folds.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import pandas as pd

from segkit.config.schema import DataConfig
from segkit.errors import ConfigError, DataError


@dataclass(frozen=True)
class Position:
    volume: str
    index: int


def positions(cfg: DataConfig, ids: list[str], extra: pd.DataFrame | None, where: str) -> dict[str, Position]:
    """id -> (volume, index) for ``ids``; an id the spec cannot place is an error naming it and ``where``."""
    spec = cfg.slices
    out: dict[str, Position] = {}
    if spec.pattern:
        pattern = re.compile(spec.pattern)
        for image_id in ids:
            m = pattern.fullmatch(image_id)
            if m is None:
                raise DataError(f"{where}: id {image_id!r} does not match data.slices.pattern {spec.pattern!r}")
            out[image_id] = Position(m.groupdict().get("volume") or "", _index(m.group("index"), image_id, where))
        return out
    if extra is None:
        raise ConfigError("data.slices.index_column: needs data.extra_csv")
    for key in ("index_column", "volume_column"):
        column = getattr(spec, key)
        if column is not None and column not in extra.columns:
            raise ConfigError(f"data.slices.{key}: column {column!r} not in data.extra_csv ({list(extra.columns)})")
    for image_id in ids:
        if image_id not in extra.index:
            raise DataError(f"{cfg.extra_csv}: no row for id {image_id!r} (needed for its slice index)")
        row = extra.loc[image_id]
        volume = str(row[spec.volume_column]) if spec.volume_column else ""
        out[image_id] = Position(volume, _index(row[spec.index_column], image_id, where))
    return out


def _index(value, image_id: str, where: str) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        raise DataError(f"{where}: id {image_id!r} has slice index {value!r}, not a whole number") from None


class Stacks:
    """The slices of each volume of one split, and the ids that make up an image's input."""

    def __init__(self, cfg: DataConfig, where_of: dict[str, Position], where: str):
        self.context, self.stride, self.ends = cfg.context, cfg.context_stride, cfg.context_ends
        self.where_of = where_of
        self.volumes: dict[str, dict[int, str]] = {}
        for image_id, pos in where_of.items():
            slices = self.volumes.setdefault(pos.volume, {})
            if pos.index in slices:
                raise DataError(f"{where}: ids {slices[pos.index]!r} and {image_id!r} are both slice {pos.index} "
                                f"of volume {pos.volume!r}")
            slices[pos.index] = image_id
        self.where = where

    def neighbours(self, image_id: str) -> list[str]:
        """The 2 * context + 1 ids of ``image_id``'s input, lowest index first, ``image_id`` in the middle."""
        pos = self.where_of[image_id]
        slices = self.volumes[pos.volume]
        first, last = min(slices), max(slices)
        out = []
        for j in range(-self.context, self.context + 1):
            i = self._inside(pos.index + j * self.stride, first, last)
            if i not in slices:
                raise DataError(f"{self.where}: volume {pos.volume!r} has no slice {i} (needed beside slice "
                                f"{pos.index}, id {image_id!r}): a slice is missing from the stack")
            out.append(slices[i])
        return out

    def _inside(self, i: int, first: int, last: int) -> int:
        if first <= i <= last:
            return i
        if self.ends == "repeat" or first == last:
            return min(max(i, first), last)
        span = last - first
        offset = (i - first) % (2 * span)  # mirror: first .. last .. first, the end slices not repeated
        return first + (offset if offset <= span else 2 * span - offset)
