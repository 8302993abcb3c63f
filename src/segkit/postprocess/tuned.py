"""``tune.json``: what the tune stage chose, and the one module that writes it, reads it and applies it.

The file records the search for people (its steps, curves, CVs, timings: ``Tuned.record``) and, for the pipeline,
what is applied to probabilities, read here strictly and typed:

- ``classes``: the slice-wise parameters of each class (``segkit.postprocess.masks.ClassParams``), chosen on every
  OOF image: what the submission applies;
- ``nested``: per fold, what the same search chose without that fold: what the fold's OOF images are scored with,
  so an OOF score never uses a choice made on the image it scores (keyed by the fold file in ``folds_file``);
- ``volume_cleanup``: a volume competition's per-class threshold and 3D clean-up (``segkit.postprocess.volumes``),
  chosen on every fold and nested;
- ``instances``: an instance competition's decoder (``segkit.postprocess.instances``), chosen on every fold and
  nested.

``Tuned.choice(fold)`` gives an image's parameters (its fold's nested choice, or the full one), and ``FinalMasks`` the
masks of a store's images as the submission writes them (whole volumes cleaned in 3D where the volume step chose
anything). Submit, evaluate, report, the ablation, the offline bundle and package all read the file through
``Tuned.read``; ``write`` is the tune stage's. The file carries ``version``: a file of another version is refused with
the remedy (tune again), never half-read.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence, TypeVar

import numpy as np

from segkit.artifacts import atomic
from segkit.artifacts.freshness import fingerprint
from segkit.data.volume_readers import cut
from segkit.errors import DataError
from segkit.postprocess.instances import DecodeParams
from segkit.postprocess.masks import ClassParams, params_list, postprocess
from segkit.postprocess.volumes import VolumeParams, case_masks, clean_volume, volume_params

VERSION = 1
T = TypeVar("T")


@dataclass
class SearchResult:
    """What the post-processing search returns: ``record``, the JSON tune.json records (and the stage completes);
    ``per_image``, each OOF image's scores (the tune stage's ``oof_scores.csv``); ``nested_params``, each image's
    parameters of its nested score (None without folds)."""

    record: dict
    per_image: dict
    nested_params: Optional[list[list[ClassParams]]] = None


def write(path: Path, record: Mapping[str, Any], classes: Sequence[str]) -> "Tuned":
    """Write ``record`` as tune.json (atomically), with this module's version; it is parsed first, so a file this
    module would refuse is never written. Returns it as read."""
    record = {"version": VERSION, **{k: v for k, v in record.items() if k != "version"}}
    text = atomic.dumps(record)
    tuned = Tuned.parse(Path(path), json.loads(text), classes)
    atomic.write_text(path, text + "\n")  # as atomic.write_json writes it
    return tuned


@dataclass
class Tuned:
    """tune.json, parsed: the applied parameters typed, the rest of the record as it was written."""

    path: Path
    classes: list[str]
    params: list[ClassParams]
    record: dict
    nested: dict[int, list[ClassParams]] = field(default_factory=dict)
    folds_file: Optional[list] = None
    cleanup: list[VolumeParams] = field(default_factory=list)
    cleanup_nested: dict[int, list[VolumeParams]] = field(default_factory=dict)
    decoder: Optional[DecodeParams] = None
    decoder_nested: dict[int, DecodeParams] = field(default_factory=dict)

    # ------------------------------------------------------------------------------------------------ reading
    @classmethod
    def read(cls, path: Path, classes: Sequence[str], remedy: str = "run `segkit tune` first") -> "Tuned":
        """tune.json, checked: a missing file says ``remedy``; a malformed one names the file and the key."""
        return cls.parse(Path(path), atomic.read_json(path, remedy), classes)

    @classmethod
    def read_if_any(cls, path: Path, classes: Sequence[str]) -> Optional["Tuned"]:
        """tune.json, or None where there is none yet; a file there that cannot be read is still an error."""
        return cls.read(path, classes) if Path(path).exists() else None

    @classmethod
    def parse(cls, path: Path, record: Any, classes: Sequence[str]) -> "Tuned":
        try:
            return cls._parse(path, record, list(classes))
        except (AttributeError, TypeError, ValueError) as err:  # a value of the wrong kind, e.g. edited by hand
            raise DataError(f"{path}: malformed ({err})") from None

    @classmethod
    def _parse(cls, path: Path, record: Any, classes: list[str]) -> "Tuned":
        where = str(path)
        if not isinstance(record, dict) or not isinstance(record.get("classes"), dict):
            raise DataError(f"{where}: no 'classes' mapping of post-processing parameters")
        if record.get("version") != VERSION:
            raise DataError(f"{where}: version {record.get('version')!r}, this segkit reads version {VERSION}; "
                            f"run `segkit tune` again")
        tuned = cls(path, classes, params_list(record["classes"], classes, where=where), record,
                    folds_file=record.get("folds_file"))
        nested = record.get("nested") or {}
        tuned.nested = {int(f): params_list(_key(v, "classes", f"{where} nested.{f}"), classes,
                                            where=f"{where} nested fold {f}") for f, v in nested.items()}
        volume = record.get("volume_cleanup") or {}
        tuned.cleanup = _volume(volume.get("classes"), classes, f"{where} volume_cleanup.classes")
        tuned.cleanup_nested = {int(f): _volume(v, classes, f"{where} volume_cleanup.nested.{f}")
                                for f, v in (volume.get("nested") or {}).items()}
        objects = record.get("instances") or {}
        if objects:
            tuned.decoder = DecodeParams.from_json(_key(objects, "params", f"{where} instances"),
                                                   f"{where}: instances.params")
            tuned.decoder_nested = {int(f): DecodeParams.from_json(v, f"{where}: instances.nested.{f}")
                                    for f, v in (objects.get("nested") or {}).items()}
        return tuned

    # ------------------------------------------------------------------------------------------- the figures
    @property
    def metric(self) -> Optional[str]:
        return self.record.get("metric")

    @property
    def higher_is_better(self) -> bool:
        return bool(self.record.get("higher_is_better", True))

    @property
    def cv_baseline(self) -> float:
        return float(self.record.get("cv_baseline", float("nan")))

    def cv_text(self) -> str:
        """The tuned CV as every log and report quotes it: the nested estimate first (each fold scored with what
        tuning chose on the other folds), the in-sample figure (chosen on the same OOF) beside it."""
        return cv_text(self.record)

    def scored_as(self, metric: str) -> str:
        """The name of what ``cv_text`` quotes: the config's metric, or object AP for an instance competition."""
        return "object AP" if self.record.get("instances") else metric

    def per_image_nested(self) -> dict[str, float]:
        """An instance competition's nested object AP per OOF image tune scored (id -> AP), where it kept them."""
        objects = self.record.get("instances") or {}
        return dict(zip(objects.get("ids") or [], objects.get("per_image_nested") or []))

    # ------------------------------------------------------------------------------------------- applying
    def choice(self, fold: Optional[Mapping[str, int]] = None, folds_file: Optional[Path] = None) -> "Choice":
        """What each image is post-processed with: with ``fold`` (id -> fold of the fold file ``folds_file``), an
        OOF image gets its fold's nested choice; without, every image gets the full choice (the submission's)."""
        if fold is not None and self.nested and folds_file is not None and self.folds_file is not None \
                and self.folds_file != fingerprint(folds_file):
            raise DataError(f"{self.path}: its nested choices were made on another fold file than {folds_file}; "
                            f"run `segkit tune` again")
        return Choice(self, fold)


class Choice:
    """The parameters of each image: its fold's nested choice (OOF images, with a fold map), or the full one."""

    def __init__(self, tuned: Tuned, fold: Optional[Mapping[str, int]]):
        self.tuned = tuned
        self.fold = fold
        nested = fold is not None and bool(tuned.nested)
        self.text = ("nested: each fold's images with what tuning chose on the other folds" if nested else
                     "in-sample: chosen on every fold (no nested estimate in tune.json)")

    def params(self, image_id: str) -> list[ClassParams]:
        """The slice-wise parameters. A nested choice is strict: an OOF image of a fold tune made no choice for is
        an error (the fold file changed), never silently scored in-sample."""
        if self.fold is None or not self.tuned.nested:
            return self.tuned.params
        k = self.fold.get(image_id)
        if k not in self.tuned.nested:
            raise DataError(f"{self.tuned.path}: no nested choice for fold {k} of OOF image {image_id!r}; run "
                            f"`segkit tune` again")
        return self.tuned.nested[k]

    def cleanup(self, image_id: str) -> list[VolumeParams]:
        """The volume step's choice for the volume of ``image_id`` (its first slice stands for it). The volume
        step skips folds with too few volumes, whose volumes then take the full choice."""
        return self._nested(self.tuned.cleanup_nested, self.tuned.cleanup, image_id)

    def decoder(self, image_id: str) -> DecodeParams:
        """The instance decoder (a fold the decoder search left out takes the full choice)."""
        if self.tuned.decoder is None:
            raise DataError(f"{self.tuned.path}: no instance decoder chosen (tune ran without data.instances?); run "
                            f"`segkit tune`")
        return self._nested(self.tuned.decoder_nested, self.tuned.decoder, image_id)

    def _nested(self, nested: Mapping[int, T], full: T, image_id: str) -> T:
        if self.fold is None or not nested:
            return full
        return nested.get(self.fold.get(image_id), full)


class FinalMasks:
    """The submitted masks of a store's images: each post-processed with the full choice, and, in a volume
    competition whose volume step chose anything (a threshold, a 3D clean-up), made from its whole volume
    (computed once a volume, one in memory)."""

    def __init__(self, tuned: Tuned, store, exclusive: bool, volumes=None):
        self.store, self.params, self.exclusive = store, tuned.params, exclusive
        cleanup = tuned.cleanup
        self.cleanup = cleanup if any(p.changes for p in cleanup) else None
        self.volumes = volumes
        self._case, self._masks = None, None  # the case last made whole, and its masks

    def __call__(self, image_id: str) -> np.ndarray:
        if self.volumes is None or self.cleanup is None:
            return postprocess(np.asarray(self.store[image_id]), self.params, exclusive=self.exclusive)
        where = self.volumes.positions[image_id]
        if where.volume != self._case:
            self._case, self._masks = None, None  # the last case's volume goes before the next one is made
            self._masks = self.volume(where.volume)
            self._case = where.volume
        return np.ascontiguousarray(cut(self._masks, 1 + self.volumes.axis, where.index))

    def volume(self, case: str) -> np.ndarray:
        """(K, X, Y, Z) masks of a case: its slices post-processed (at the volume step's thresholds, where it chose
        any) and cleaned in 3D as tuned."""
        cleanup = self.cleanup or ()
        return clean_volume(case_masks(self.volumes, case, self.store.__getitem__, lambda _: self.params,
                                       self.exclusive, cleanup), cleanup)


def cv_text(record: Mapping[str, Any]) -> str:
    """The tuned CV of a tune record (tune.json, or the search's record before it is written)."""
    if record.get("instances"):  # an instance competition's CV is that of its decoded objects
        return cv_text(record["instances"])
    nested, cv = record.get("cv_nested"), record.get("cv", float("nan"))
    if nested is None:
        return f"{cv:.4f} in-sample (chosen on the same OOF; no folds for a nested estimate)"
    return f"{nested:.4f} nested, {cv:.4f} in-sample"


def _key(mapping: Any, key: str, where: str) -> Any:
    if not isinstance(mapping, Mapping) or key not in mapping:
        raise DataError(f"{where}: no {key!r}")
    return mapping[key]


def _volume(saved: Any, classes: list[str], where: str) -> list[VolumeParams]:
    try:
        return volume_params(saved, classes)
    except TypeError as err:
        raise DataError(f"{where}: malformed volume parameters ({err})") from None


def default_params(classes: Sequence[str]) -> list[ClassParams]:
    """The untuned parameters (p > 0.5, nothing else) of every class: what is shown where nothing is tuned."""
    return [ClassParams() for _ in classes]


__all__ = ["VERSION", "Choice", "FinalMasks", "SearchResult", "Tuned", "cv_text", "default_params", "write"]
