"""``segkit tune``: choose each class's post-processing on the ensemble's out-of-fold probabilities.

Greedy, in a fixed order, one step at a time; a step's choice is kept only if its gain over what the previous steps
gave passes the keep rule (``tune.min_gain``: by default a positive mean gain; a margin or a fold-by-fold rule on
request) — nnU-Net's rule, so a clean-up that does not help on OOF is never applied to the test set:

    baseline      p > 0.5, nothing else (the raw ensemble; p > t is the pipeline's rule, segkit.threshold)
    threshold     best of tune.thresholds
    min_area      best of tune.min_areas: components smaller than that are removed
    empty_rule    best (top threshold, N, bottom threshold): the class is empty if fewer than N pixels exceed top,
                  else it is binarised at bottom (the SIIM winners' triplet)
    fill_holes, opening, closing, dilation, erosion   (radius from tune.morph_radii)
    min_area_after_morphology   min_area searched again now that morphology changed the components
    keep_largest  only the largest component survives

Speed. The first three steps need no second look at the images: one streamed pass keeps, per image, class and
threshold, what the score depends on. Where the metric is a function of the confusion counts of an (image, class)
pair (dice, IoU, TGS, pixel accuracy: the metrics with a ``from_counts`` path in segkit.metrics), that is the
predicted pixel count and the true-positive count for every minimum area, from one component labelling per
threshold (the areas of the components and their overlaps with the truth give both for any minimum area). Object AP
is scored from the overlaps of predicted and true components, so a minimum area costs no relabelling either. The
empty rule then needs only each image's count of pixels above each top threshold, and the whole (top, N, bottom)
grid is a few matrix products. Morphology steps stream the images once per step, sharing each image's staged masks
and labellings among the candidates. Truth masks and probabilities stay in RAM between passes while they fit in a
fixed budget (CACHE_BYTES); beyond it they are streamed from disk again.

The CV score is the mean over images of the mean over classes of the per-(image, class) score — the Kaggle rule of
TGS, Severstal, SIIM and Clouds. The final parameters and the baseline are also scored exactly with the metric on
whole (K, H, W) images; those two numbers are ``cv`` and ``cv_baseline`` in tune.json.

Honest evidence. ``cv`` is in-sample: the parameters were chosen on the very OOF they are scored on, so it is
optimistic, the more so the more steps the search tries. ``cv_nested`` is the honest figure: for every fold k the
same search runs on the other folds' OOF alone and its choice scores fold k's images; the mean over all images
(each scored once, by a choice made without it) is what the tuned pipeline should score on unseen data. The
submission's parameters still come from the search on every fold. ``nested`` in tune.json holds each fold's choice
and score. The nested searches share the summary tables and a cache of candidate scores with the full one: on 4000
TGS masks in 5 folds the whole nested estimate doubles the time of the search alone (bench/tune.py).

Volume competitions add one step after these, on whole volumes: a 3D clean-up per class (the largest 3D
component, or a minimum volume), chosen by per-volume Dice with its own nested estimate (``volumes``).

Modules, one job each: ``stream`` (the OOF images, cached across passes), ``tables`` (the one-pass summary of the
first three steps), ``candidates`` (scoring parameter sets image by image), ``search`` (the keep rules, the greedy
steps, the nested searches and the final exact scores), ``volumes`` (the 3D clean-up step), ``plots`` (the curves)
and ``stage`` (``segkit tune``: the final ensemble's OOF and the fold file in, ``tune.json`` out). The metric is
the competition's metric object (``segkit.metrics.get_metric``); what it can count (confusion counts, objects)
decides the fast paths, not its name.
"""

from segkit.stages.tune.search import Greedy, KeepRule, final_scores, tune
from segkit.stages.tune.stage import run
from segkit.stages.tune.stream import OOFStream

__all__ = ["Greedy", "KeepRule", "OOFStream", "final_scores", "run", "tune"]
