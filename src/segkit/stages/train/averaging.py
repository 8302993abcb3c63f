"""Weight averaging of one fold's run (``train.average``): SWA (Izmailov et al., 2018, "Averaging Weights Leads to
Wider Optima and Better Generalization") and greedy model soups (Wortsman et al., 2022, "Model soups").

The ingredients are the fold's weights (the EMA weights when EMA is on) at the end of each epoch of the window —
the last ``average.window`` of the epochs, at least two — or at the end of each LR cycle (``average.at: cycles``).
Training saves each as ``ingredient<e>.pt`` as it passes it, so a fold killed mid-window resumes with them.

- ``swa``: the mean of every ingredient; then BatchNorm's running statistics are measured again by one pass over
  the fold's training batches, since the mean of several networks' statistics is not the statistics of the mean
  network (torch's ``swa_utils.update_bn`` does the same; written here because segkit's batches are dicts).
- ``soup``: greedy. The candidates (the ingredients and the best epoch's weights) go by their validation score,
  best first; each is added to the soup when the mean with it does not score worse on the fold's validation images.
  BatchNorm statistics are averaged with the weights, as the paper does: recomputing them for every candidate would
  cost a training pass each. The soup's score is measured on the very images that chose it: in-sample, and said so
  in summary.json (``average.in_sample``). Beside it, the honest figure (``average.cross_fit``, image models): the
  soup and the best single candidate each chosen on one half of the validation images and scored on the other,
  both ways round — whether souping beats picking the best epoch, with neither choice seeing its scored images.

At the end the best epoch's weights move to ``best_epoch.pt`` and ``best.pt`` becomes the average: the OOF store,
predict, export and the bundle use the average without knowing. ``summary.json`` keeps both validation figures.
The steps are ordered so that a run killed at any point redoes the average from the same files.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from typing import Optional

import torch
from torch import nn

from segkit.artifacts import atomic
from segkit.artifacts.layout import FoldPaths
from segkit.compute.device import autocast, to_device
from segkit.config.schema import TrainConfig
from segkit.errors import SegkitError
from segkit.models import checkpoint
from segkit.optim import cycle_end_epochs


@dataclass(frozen=True)
class Averaging:
    """What a fold averages: the method and the epochs whose weights are its ingredients."""

    method: str
    epochs: tuple[int, ...]

    @staticmethod
    def of(tcfg: TrainConfig) -> Optional["Averaging"]:
        """The fold's averaging, for its final number of epochs (after ``train.minutes``), or None."""
        if tcfg.average is None:
            return None
        epochs = tcfg.average.ingredient_epochs(tcfg.epochs, cycle_end_epochs(tcfg))
        return Averaging(tcfg.average.method, tuple(e for e in epochs if e >= 1))

    def keeps(self, epoch: int) -> bool:
        """Whether ``epoch``'s weights are an ingredient."""
        return epoch in self.epochs

    def validates(self, epoch: int) -> bool:
        """A soup ranks its ingredients by their validation scores: each ingredient epoch is validated."""
        return self.method == "soup" and self.keeps(epoch)


@torch.no_grad()
def recompute_batchnorm(model: nn.Module, loader, device: torch.device, amp: str, channels_last: bool) -> int:
    """Running statistics of every BatchNorm layer measured afresh over ``loader`` (a cumulative mean: momentum
    None); returns the number of layers (0: nothing to do, e.g. instance or group norm only)."""
    layers = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not layers:
        return 0
    momenta = [m.momentum for m in layers]
    for m in layers:
        m.reset_running_stats()
        m.momentum = None
    was_training = model.training
    model.train()
    for batch in loader:
        batch = to_device(batch, device, channels_last)
        with autocast(device, amp):
            model(batch["image"])
    for m, momentum in zip(layers, momenta):
        m.momentum = momentum
    model.train(was_training)
    return len(layers)


def _worse(value: float, than: float, mode: str) -> bool:
    return value < than if mode == "max" else value > than


def _loaded(model: nn.Module, payload: dict) -> nn.Module:
    model.load_state_dict(payload["model"])
    return model


class Soup:
    """A greedy soup over named candidate checkpoints. ``evaluate(payload, part)`` scores weights on the fold's
    validation images (``part`` None) or on one of two halves of them (0, 1); results are remembered, so each set
    of ingredients is scored once per part."""

    def __init__(self, candidates: dict[str, dict], monitor: str, mode: str, evaluate):
        self.candidates, self.monitor, self.mode, self.evaluate = candidates, monitor, mode, evaluate
        # each candidate's own score on every validation image was recorded when its epoch was validated
        self.scored: dict[tuple, dict] = {((n,), None): dict(p["scores"]) for n, p in candidates.items()}

    def mean(self, names: list[str]) -> dict:
        if len(names) == 1:
            return self.candidates[names[0]]
        return checkpoint.average([self.candidates[n] for n in names], list(names))

    def score(self, names: list[str], part: Optional[int] = None) -> dict:
        key = (tuple(sorted(names)), part)
        if key not in self.scored:
            self.scored[key] = self.evaluate(self.mean(names), part)
        return self.scored[key]

    def greedy(self, part: Optional[int] = None) -> tuple[list[str], dict]:
        """Candidates by their own score on ``part``, best first; each kept when the soup with it does not score
        worse on ``part``."""
        ranked = sorted(self.candidates, key=lambda n: self.score([n], part)[self.monitor],
                        reverse=self.mode == "max")
        names, row = [ranked[0]], self.score([ranked[0]], part)
        for name in ranked[1:]:
            trial = self.score(names + [name], part)
            if not _worse(trial[self.monitor], row[self.monitor], self.mode):
                names, row = names + [name], trial
        return names, row

    def cross_fit(self) -> dict:
        """The honest figures: the soup, and the best single candidate, each chosen on one half of the validation
        images and scored on the other, both ways; the mean of the two halves' scores."""
        out = {}
        for what in ("soup", "best_single"):
            values = []
            for choose, held in ((0, 1), (1, 0)):
                names, _ = self.greedy(choose)
                if what == "best_single":
                    names = names[:1]
                values.append(self.score(names, held)[self.monitor])
            out[what] = sum(values) / 2
        return out


def average_fold(averaging: Averaging, paths: FoldPaths, model: nn.Module, validation, loss_fn, data,
                 tcfg: TrainConfig, device: torch.device, monitor: str, monitor_mode: str, is_main: bool,
                 where: str, halves: Optional[tuple] = None) -> dict:
    """Make the fold's average and write it as best.pt (the best epoch's weights kept as best_epoch.pt); returns
    what summary.json records of it. ``halves``: the validation of two halves of the fold's validation images,
    for a soup's honest (cross-fitted) figure."""
    if is_main and not paths.best_epoch.exists():
        # copied, not moved: until the average is written, best.pt must stay the fold's best weights
        with atomic.atomic_path(paths.best_epoch) as tmp:
            shutil.copyfile(paths.best, tmp)
    best = checkpoint.load(paths.best_epoch if paths.best_epoch.exists() else paths.best)
    missing = [e for e in averaging.epochs if not paths.ingredient(e).exists()]
    if missing:
        raise SegkitError(f"{where}: the weights of epoch(s) {missing} to average are missing from {paths.dir}; "
                          f"delete the folder to train this fold afresh")
    ingredients = {f"epoch {e}": checkpoint.load(paths.ingredient(e)) for e in averaging.epochs}

    def evaluate(payload: dict, part: Optional[int] = None) -> dict:
        """Scores of ``payload``'s weights on the fold's validation images, or on half ``part`` of them."""
        on = validation if part is None else halves[part]
        return on.evaluate(_loaded(model, payload), loss_fn, device, tcfg.amp)

    extra = {}
    if averaging.method == "swa":
        names = list(ingredients)
        mean = checkpoint.average(list(ingredients.values()), names)
        model.load_state_dict(mean["model"])
        if recompute_batchnorm(model, data.loader(tcfg.epochs + 1), device, tcfg.amp, tcfg.channels_last):
            mean["model"] = {k: v.detach().cpu() for k, v in model.state_dict().items()}
        row = evaluate(mean)
    else:
        candidates = {f"best epoch {best['epoch']}": best, **{n: p for n, p in ingredients.items()
                                                               if p["epoch"] != best["epoch"]}}
        soup = Soup(candidates, monitor, monitor_mode, evaluate)
        names, row = soup.greedy()
        mean = soup.mean(names)
        if halves is not None:
            extra["cross_fit"] = soup.cross_fit()
    scores = {k: row[k] for k in ("val_loss", "dice", "iou", "score")}
    payload = {**mean, "scores": scores, "epoch": max(p["epoch"] for p in ingredients.values()),
               "averaged": names, "average": averaging.method}
    if is_main:
        checkpoint.save(paths.best, payload)
    print(f"{where}: {averaging.method} of {len(names)} ({', '.join(names)}): {monitor} {row[monitor]:.4f}, "
          f"best single epoch {best['scores'][monitor]:.4f}", flush=True)
    return {"method": averaging.method, "ingredients": names, "best_epoch": best["epoch"],
            "best_epoch_scores": best["scores"], "scores": scores, "in_sample": averaging.method == "soup", **extra}


def remove_ingredients(paths: FoldPaths) -> None:
    """Once the fold is done: the average is in best.pt, the ingredients are no longer needed."""
    for p in paths.ingredients().values():
        p.unlink(missing_ok=True)
