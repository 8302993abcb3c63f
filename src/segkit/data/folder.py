"""Files of a competition's folders: ids resolved to image files (``ImageFolder``), csv files read as strings
(``read_csv``)."""

from __future__ import annotations

import csv
from pathlib import Path

import pandas as pd

from segkit.data import imageio
from segkit.errors import ConfigError, DataError


def read_csv(path: Path, columns: list[str] | tuple[str, ...] = ()) -> pd.DataFrame:
    """A csv as strings (ids stay ids: no '007' -> 7), with a clear error for encoding or missing columns."""
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False, encoding="utf-8")
    except UnicodeDecodeError as err:
        raise DataError(f"{path}: not UTF-8 text (byte {err.start})") from None
    except pd.errors.EmptyDataError:
        raise DataError(f"{path}: empty csv") from None
    except (pd.errors.ParserError, csv.Error) as err:
        raise DataError(f"{path}: malformed csv: {str(err).splitlines()[0]}") from None
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise DataError(f"{path}: missing column(s) {missing}; has {list(frame.columns)}")
    return frame


class ImageFolder:
    """Resolves ids to files of one folder, indexing it once. With ``suffixes`` (one file a channel) an image
    ``<id>`` is the files ``<id><suffix>.<ext>``, and ``find`` gives its first channel's."""

    def __init__(self, folder: Path, key: str, suffixes: list[str] | None = None):
        if not folder.is_dir():
            raise ConfigError(f"{key}: not a folder: {folder}")
        self.folder = folder
        self.suffixes = suffixes
        self.by_name: dict[str, Path] = {}
        self.by_stem: dict[str, Path] = {}
        for p in sorted(folder.iterdir()):
            if p.suffix.lower() in imageio.IMAGE_EXTENSIONS and not p.name.startswith("."):
                self.by_name[p.name] = p
                if p.stem in self.by_stem:
                    other = self.by_stem[p.stem].name
                    raise DataError(f"{folder}: two images share the id {p.stem!r} ({other}, {p.name})")
                self.by_stem[p.stem] = p

    def ids(self) -> list[str]:
        if self.suffixes:
            first = self.suffixes[0]
            return [stem[: -len(first)] for stem in self.by_stem if stem.endswith(first)]
        return list(self.by_stem)

    def find(self, image_id: str) -> Path | None:
        if self.suffixes:
            return self.by_stem.get(image_id + self.suffixes[0])
        return self.by_name.get(image_id) or self.by_stem.get(image_id)

    def channel_files(self, image_id: str) -> list[Path]:
        """The files of ``image_id``'s channels, in the order of the suffixes."""
        paths = []
        for suffix in self.suffixes:
            path = self.by_stem.get(image_id + suffix)
            if path is None:
                raise DataError(f"{self.folder}: image {image_id!r} has no channel file {image_id}{suffix}.*")
            paths.append(path)
        return paths


__all__ = ["ImageFolder", "read_csv"]
