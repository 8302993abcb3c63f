"""``segkit submit``: the tuned post-processing applied to the ensemble's test probabilities, written in exactly the
rows, order, id format and columns of the competition's sample submission, and validated before it replaces any
earlier submission.

The csv is written to a temporary file beside the target and checked there (every sample id once, no extra id,
every RLE well-formed and inside its image); only a valid file is renamed into place, so a failed or interrupted
run never leaves a broken submission where a good one was. RLEs follow ``data.rle`` (pixel order, SIIM-style
relative starts; in relative form an empty mask is written ``-1``, as SIIM's sample does).

With ``data.holdout_fraction`` the "test" images are labelled train images: the holdout's truth is written in the
same format to ``runs/<experiment>/holdout_truth.csv`` so ``segkit score`` can score the submission.

The probabilities are those of the experiment's final ensemble (the last pseudo-labelling round's, if any). The
submission is a unit of work (``segkit.artifacts.freshness``): skipped while tune.json, the ensemble's test store, the
sample submission and the RLE settings are those it was made from.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from segkit.artifacts import atomic
from segkit.artifacts.freshness import Unit, fingerprint
from segkit.artifacts.probs import manifest
from segkit.commands import final_store
from segkit.config import Config
from segkit.data import Competition
from segkit.postprocess.tuned import Tuned
from segkit.submission.build import Submission, final_masks, holdout_truth, instance_truth, volume_files, write_volumes


def submit_unit(cfg: Config, holdout: bool, volumes: dict[str, Path] | None = None) -> Unit:
    """The submission as a unit of work: the csv (and the holdout's truth), decided by the tuning, the ensemble's
    test probabilities, the sample submission and the RLE format."""
    layout = cfg.layout
    sample = cfg.data.path("sample_submission") if cfg.data.sample_submission else None
    inputs = {"tune": fingerprint(layout.tune.json), "test": fingerprint(manifest(layout.final_ensemble.test)),
              "sample": fingerprint(sample) if sample else None, "rle": cfg.data.rle.model_dump(),
              "mode": cfg.data.mode, "classes": cfg.data.classes,
              "holdout": [cfg.data.holdout_fraction, cfg.data.holdout_list],
              "metric": cfg.metric if holdout else None}
    outputs = ([layout.holdout_truth] if holdout else []) + [layout.submission] + list((volumes or {}).values())
    return Unit(f"submit: {layout.submission}", layout.stamp("submit"), outputs, inputs)


def run(cfg: Config) -> int:
    layout = cfg.layout
    # Read before the freshness check, so that a bad tune.json fails even where the submission is up to date.
    tuned = Tuned.read(layout.tune.json, cfg.data.classes, f"run `segkit tune --config {cfg.source or 'CFG'}` first")
    store = final_store(cfg, "test")
    comp = Competition(cfg.data, seed=cfg.seed)
    volumes = volume_files(cfg, comp)
    unit = submit_unit(cfg, bool(comp.holdout_ids), volumes)
    if unit.skip():
        return 0
    built = Submission(cfg, comp, store, tuned)
    objects = built.objects
    target = layout.submission
    with atomic.atomic_path(target) as tmp:
        report = built.write(tmp, target)
        unit.begin()
        if comp.holdout_ids:
            atomic.write_csv(layout.holdout_truth, instance_truth(cfg, comp) if objects else holdout_truth(cfg, comp))
        write_volumes(final_masks(cfg, comp, store, tuned), volumes)
    unit.done()

    n_images = len({r.image_id for r in comp.sample_rows})
    print(f"submit: wrote {target} ({len(built.frame)} rows, {n_images} images; validated against the sample)")
    if objects:
        print(f"submit: {report.notes[-1]}; decoder {built.decoder.describe()}")
    if volumes:
        print(f"submit: wrote {len(volumes)} label volumes (NIfTI, the source's affine) -> {layout.submission_volumes}")
    print(f"submit: tuned OOF {tuned.scored_as(tuned.metric or cfg.metric)} CV {tuned.cv_text()} (raw "
          f"ensemble OOF p>0.5: {tuned.cv_baseline:.4f})")
    if comp.holdout_ids:
        print(f"submit: holdout {'object AP' if objects else cfg.metric} {np.mean(built.holdout_scores):.4f} on "
              f"{len(built.holdout_scores)} images "
              f"(truth in {layout.holdout_truth})")
    return 0
