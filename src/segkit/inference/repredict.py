"""Out-of-fold re-prediction: each fold's validation images predicted by that fold's own checkpoints, with the
TTA of the test predictions, into one store (``<run_dir>/<model>/oof_tta`` or another folder). Each fold's part of
the store is a unit of work of its own (a killed run resumes; ``--fold K`` re-predicts one part); the store is
complete once every part is in. The predict stage and the ablation both make stores this way."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import pandas as pd

from segkit.artifacts.freshness import Unit, kept
from segkit.artifacts.layout import part_stamp
from segkit.artifacts.probs import ProbStore, ProbWriter, image_file, manifest
from segkit.compute.distributed import World, barrier_if_many
from segkit.config import Config
from segkit.config.schema import ModelConfig
from segkit.data import Competition
from segkit.data.folds import fold_numbers
from segkit.inference.engine import Predictor
from segkit.inference.outputs import Outputs, prepare_store, store_inputs
from segkit.models.checkpoint import fold_checkpoints


def oof_part_unit(cfg: Config, model: str, folder: Path, k: int, ids: list[str]) -> Unit:
    """Fold k's part of an OOF re-prediction store: its images, decided by that fold's checkpoints and the
    prediction settings. Its completion marker is the store's manifest, which the store gets once every part is
    in."""
    return Unit(f"predict: models[{model}] fold {k} OOF re-prediction", part_stamp(folder, k),
                [image_file(folder, i) for i in ids],
                store_inputs(cfg, {k: fold_checkpoints(cfg, model, k)}, "oof_tta"), marker=manifest(folder))


def predict_oof(cfg: Config, comp: Competition, model_cfg: ModelConfig, folds: pd.DataFrame, device,
                world: World, folder: Optional[Path] = None, finish: bool = True) -> None:
    """Each fold's validation ids (of the ``folds`` table) re-predicted by that fold's checkpoints, into
    ``<run_dir>/<model>/oof_tta`` or ``folder``. Every fold is its own unit; with ``finish`` the store gets its
    manifest (is complete) once every fold of the table is in, so pass the whole table then."""
    folder = Path(folder or cfg.layout.model(model_cfg.name).oof_tta)
    parts = []
    for k in fold_numbers(folds):
        ids = folds.loc[folds["fold"] == k, "id"].tolist()
        parts.append((k, ids, oof_part_unit(cfg, model_cfg.name, folder, k, ids)))
    all_ids = folds["id"].tolist()

    def complete() -> bool:
        return ProbStore.is_complete(folder) and ProbStore(folder).ids == all_ids

    if complete() and all(unit.fresh() for *_, unit in parts):
        print(kept(f"predict: models[{model_cfg.name}] OOF re-prediction ({folder})"))
        return
    for k, ids, unit in parts:
        if unit.skip():
            continue
        prepare_store(unit, folder, world.is_main, images=list(unit.outputs))
        barrier_if_many(world)
        writer = ProbWriter(folder, list(cfg.data.classes))
        predictor = Predictor(cfg, [fold_checkpoints(cfg, model_cfg.name, k)], device)
        predictor.predict(comp, ids, "train", Outputs(writer), world,
                          desc=f"{model_cfg.name} fold {k} OOF re-prediction")
        del predictor
        barrier_if_many(world)  # every rank's images of this part are in before the part is stamped done
        if world.is_main:
            unit.done()
    if finish and world.is_main and not complete():
        ProbWriter(folder, list(cfg.data.classes)).finish(all_ids)


__all__ = ["oof_part_unit", "predict_oof"]
