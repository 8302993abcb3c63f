"""Inference from a bundle (``segkit package``): a competition's hidden test images to a checked submission,
offline, inside a time budget. A bundle's ``infer.py`` calls ``main``.

Steps, each the pipeline's own code on the bundle's files:

1. the frozen config, pointed at ``--test`` (the images; a volume competition's NIfTI test cases) and ``--sample``
   (the sample submission; a volume competition may have none: rows per slice); every sample id must have an image
   there, of the channel count the networks were trained on;
2. **the plan**: each model's speed measured on the first test images (one TTA view, every fold), then, for the
   number of test images, as many views per model as fit ``--time-budget``: the least weighted model loses views
   first, down to one, and where the ensemble stays defined without it (the averages) it is dropped next; the
   heaviest model always stays. A budget that cannot hold one view of what must stay is an error before any work;
   the plan is re-made before each model from the time actually left, so a slow start costs views, not the
   submission. ``--dry-run`` prints the plan for ``--images N`` and stops;
3. each model's test store as ``segkit predict`` makes it (folds averaged, quantised), with the bundle's runtime;
4. the ensemble's test store, from the method and exact state the ensemble stage chose (``segkit.ensemble.restore``);
5. the submission as ``segkit submit`` writes it (tuned post-processing, rows of the sample), checked before it
   replaces ``--out``; for volumes, with ``--volumes DIR``, each test case's label volume (3D clean-up applied).

On a GPU the networks run under autocast (``--amp``, default ``auto``: bf16 where the GPU has it, fp16 on a T4);
on a CPU, in the config's ``predict.amp``. With several devices (``--devices cuda:0,cuda:1``; by default every GPU
there is) the test images are split between one process per device, each writing its own images' files of the
store, and the main process completes it: the same store, and so the same submission, as one device writes.

With the eager runtime, float32 weights and the full TTA on the CPU, the file is byte for byte ``segkit submit``'s
for the same images. Work goes to ``--work`` (default: beside ``--out``); a killed run started again with the same
``--work`` resumes.
"""

from __future__ import annotations

import argparse
import re
import shutil
import sys
import time
from pathlib import Path
from typing import Optional

import yaml

from segkit.artifacts import atomic
from segkit.artifacts.freshness import Unit, fingerprints
from segkit.artifacts.probs import ProbStore, ProbWriter, manifest
from segkit.bundle.files import CHOICE, CONFIG, EXTRA, STATE, TUNE, Bundle, work_dir, work_paths
from segkit.compute.device import resolve_device
from segkit.compute.distributed import World
from segkit.config import Config
from segkit.data import Competition
from segkit.ensemble import chosen, is_subsettable, restore, write_store
from segkit.ensemble.base import Setup
from segkit.ensemble.sources import TestSource
from segkit.errors import ConfigError, DataError, SegkitError
from segkit.inference.engine import Predictor
from segkit.inference.outputs import Collected, Outputs, prepare_store
from segkit.inference.runtimes import loader
from segkit.inference.tta import views_for
from segkit.metrics import get_metric
from segkit.models import dims_of
from segkit.postprocess.tuned import Tuned
from segkit.submission.build import Submission, final_masks, volume_files, write_volumes

# The share of the budget the plan spends on networks: the rest is for reading, ensembling, post-processing and
# writing, and for the error of a speed measured on a few images.
SAFETY = 0.85
MEASURE_IMAGES = 4


class BudgetError(SegkitError):
    """The time budget cannot hold one view of the models that must stay."""


def parse_budget(text: Optional[str]) -> Optional[float]:
    """'8h', '90m', '1h30m', '3600' or '3600s' -> seconds (None: no budget)."""
    if text is None:
        return None
    parts = re.fullmatch(r"\s*(?:(\d+(?:\.\d+)?)h)?\s*(?:(\d+(?:\.\d+)?)m)?\s*(?:(\d+(?:\.\d+)?)s?)?\s*", text)
    if not parts or not any(parts.groups()):
        raise ConfigError(f"--time-budget: {text!r} is not a duration like 8h, 90m, 1h30m or 3600s")
    h, m, s = (float(g or 0) for g in parts.groups())
    return h * 3600 + m * 60 + s


# --------------------------------------------------------------------------------------------------------- plan


def plan_views(order: list[str], seconds: dict[str, float], n_images: int, budget: Optional[float],
               full: dict[str, int], droppable: bool) -> dict[str, int]:
    """TTA views per model (0: dropped) that fit ``budget`` seconds for ``n_images``; ``seconds[m]`` is model m's
    time per image and view, ``full[m]`` its TTA's views, ``order`` the models heaviest first."""
    views = {m: full[m] for m in order}
    if budget is None:
        return views

    def cost() -> float:
        return n_images * sum(seconds[m] * v for m, v in views.items())

    for m in reversed(order):
        while cost() > budget and views[m] > 1:
            views[m] -= 1
    if droppable:
        for m in reversed(order[1:]):
            if cost() <= budget:
                break
            views[m] = 0
    if cost() > budget:
        need = n_images * sum(seconds[m] for m, v in views.items() if v)
        raise BudgetError(f"--time-budget: the {budget:.0f} s it leaves the networks ({SAFETY:.0%} of the time left) "
                          f"cannot hold one TTA view of "
                          f"{', '.join(m for m, v in views.items() if v)} for {n_images} images: that takes about "
                          f"{need:.0f} s")
    return views


def describe(views: dict[str, int], seconds: dict[str, float], n_images: int, full: dict[str, int]) -> str:
    rows = []
    for m, v in views.items():
        took = f"~{n_images * seconds[m] * v:.0f} s" if v else "dropped"
        rows.append(f"  {m}: {v} of {full[m]} TTA views, {seconds[m]:.3f} s per image and view, {took}")
    total = n_images * sum(seconds[m] * v for m, v in views.items())
    return "\n".join(rows + [f"  networks in all: ~{total:.0f} s for {n_images} images"])


# ------------------------------------------------------------------------------------------------------ the run


class Offline:
    def __init__(self, bundle: Bundle, args: argparse.Namespace):
        self.bundle = bundle
        self.args = args
        self.runtime = args.runtime or bundle.runtime
        if self.runtime != bundle.runtime:
            raise ConfigError(f"--runtime {self.runtime}: this bundle carries {bundle.runtime} model files "
                              f"(`segkit package --models {self.runtime}` makes one that carries those)")
        self.work = Path(args.work) if args.work else work_dir(Path(args.out))
        self.chosen = chosen.read(bundle.path(CHOICE), bundle.path(STATE), "package the bundle again")
        self.choice = self.chosen.choice
        self.devices = devices(args.devices, args.device)
        self.device = self.devices[0]
        self.cfg = self._config()
        self.comp = Competition(self.cfg.data, seed=self.cfg.seed)
        self.ids = self.comp.test_ids
        self.loader = loader(self.runtime)
        # every model's TTA views: predict.tta's, or predict.tta_3d's for a 3D network
        self.full = {m.name: len(views_for(self.cfg.predict.tta_of(dims_of(m)))) for m in self.cfg.models}

    def _config(self) -> Config:
        tree = yaml.safe_load(self.bundle.path(CONFIG).read_text())
        data = tree["data"]
        test = Path(self.args.test).resolve()
        if not test.is_dir():
            raise DataError(f"--test: not a folder: {test}")
        sample = Path(self.args.sample).resolve() if self.args.sample else None
        if sample is None and (data.get("sample_submission") or not data.get("volumes")):
            raise DataError("--sample: this competition's submission follows its sample submission; give the file")
        if sample is not None and not sample.is_file():
            raise DataError(f"--sample: no such file: {sample}")
        if self.args.volumes and not data.get("volumes"):
            raise DataError("--volumes: this competition's images are not volumes (the bundle's data.volumes is unset)")
        # The competition's folder is --test; train data is absent, and no image is held out of it.
        data.update(root=str(test), sample_submission=str(sample) if sample else None, holdout_fraction=0.0,
                    holdout_list=None, extra_csv=str(self.bundle.path(EXTRA)) if data.get("extra_csv") else None)
        if data.get("volumes"):  # the test cases' NIfTI files; rows per slice of them, or the sample's
            data["volumes"]["test_images"] = "."
        else:
            data["test_images"] = "."
        tree["paths"] = work_paths(self.work)
        tree["device"] = str(self.device)  # where it runs now, not where it trained
        if self.args.amp or self.device.type == "cuda":  # a GPU's own precision; a CPU's is the experiment's
            tree["predict"]["amp"] = self.args.amp or "auto"
        try:
            return Config.model_validate(tree)
        except Exception as err:  # noqa: BLE001 - pydantic's error, said as a bundle error
            raise DataError(f"{self.bundle.path(CONFIG)}: not a config this segkit reads: {err}") from None

    # -------------------------------------------------------------------------------------------- checks
    def check_test(self) -> None:
        """Every sample id has an image of the channel count the networks take (the first one read to see)."""
        if not self.ids:
            raise DataError(f"--test: no test images in {self.args.test}")
        for image_id in self.ids if self.cfg.data.volumes is None else ():  # a volume's slices: its file was read
            self.comp.image_path(image_id, "test")
        first = self.ids[0]
        image = self.comp.read_image(first, "test")
        want = self.cfg.data.input_channels
        if image.shape[2] != want:
            raise DataError(f"{self.comp.image_path(first, 'test')}: {image.shape[2]} channel(s); the networks take "
                            f"{want}")

    def groups(self, name: str) -> list[list[Path]]:
        model = next(m for m in self.bundle.models if m.name == name)
        return [[self.bundle.path(f) for f in files] for _, files in sorted(model.folds.items())]

    # ----------------------------------------------------------------------------------------------- plan
    def measure(self, name: str) -> float:
        """Seconds per image and TTA view of model ``name`` (every fold), on the first test images."""
        predictor = Predictor(self.cfg, self.groups(name), self.device, self.loader, max_views=1)
        ids = self.ids[:MEASURE_IMAGES]
        if predictor.volumetric:  # a 3D network predicts whole cases: the first case's slices, each a share of it
            volumes, test = self.comp.volume_set("test"), set(self.ids)
            ids = [i for i in volumes.slices_of(volumes.case_of(ids[0])) if i in test]
        # The probabilities are kept in memory and thrown away.
        predictor.predict(self.comp, ids[:1], "test", Collected())  # warm-up
        began = time.perf_counter()
        predictor.predict(self.comp, ids, "test", Collected())
        return (time.perf_counter() - began) / len(ids)

    @property
    def droppable(self) -> bool:
        """Whether the ensemble stays defined without its lighter models (a time budget may drop them)."""
        return is_subsettable(self.choice["method"])

    # ------------------------------------------------------------------------------------------ predict
    def predict(self, name: str, views: int) -> None:
        folder = self.cfg.layout.model(name).test
        groups = self.groups(name)
        unit = Unit(f"infer: models[{name}] test", self.cfg.layout.model(name).test_stamp, [manifest(folder)],
                    {"runtime": self.runtime, "views": views, "files": [fingerprints(g) for g in groups],
                     "ids": self.ids, "device": str(self.device)})
        if unit.skip():
            return
        prepare_store(unit, folder, is_main=True)
        writer = ProbWriter(folder, list(self.cfg.data.classes))
        label = f"{name} ({views} TTA views, {self.runtime})"
        if len(self.devices) == 1:
            self.predict_share(name, views, World())
        else:  # one process per device, each predicting its share of the ids into the store
            import torch.multiprocessing as mp  # here: only several devices need processes

            print(f"infer: {label} on {', '.join(map(str, self.devices))}", flush=True)
            names = [str(d) for d in self.devices]
            mp.start_processes(_share, args=(str(self.bundle.root), vars(self.args), names, name, views),
                               nprocs=len(names), start_method="spawn")
        unit.done()
        writer.finish(self.ids)

    def predict_share(self, name: str, views: int, world: World) -> None:
        """This process's share of the test ids (all of them in a world of one) into model ``name``'s store."""
        writer = ProbWriter(self.cfg.layout.model(name).test, list(self.cfg.data.classes))
        predictor = Predictor(self.cfg, self.groups(name), self.device, self.loader, max_views=views)
        predictor.predict(self.comp, self.ids, "test", Outputs(writer, [None] * len(predictor.groups)), world=world,
                          desc=f"{name} ({views} TTA views, {self.runtime}, {self.device})")

    def ensemble(self, kept: list[str]) -> ProbStore:
        cfg = self.cfg
        classes = list(cfg.data.classes)
        setup = Setup(models=kept, classes=classes, mode=cfg.data.mode, folds=sorted(self.bundle.models[0].folds),
                      metric=get_metric(cfg.metric, key="metric"), seed=cfg.seed, options=cfg.ensemble,
                      extra=self.comp.extra, n_oof=0)
        method = restore(setup, self.choice, self.chosen.state["state"])
        folder = cfg.layout.ensemble.test
        sources = [TestSource(cfg.layout, m, self.ids, classes) for m in kept]
        write_store(folder, classes, self.ids, None, sources, method)
        return ProbStore(folder)

    def replan(self, todo: list[str], views: dict[str, int], seconds: dict[str, float], n: int, left: float) -> None:
        """Fit the views of the models ``todo`` (the heaviest already done) to the ``left`` seconds. Past the
        budget, the least that still gives a submission: the averages drop the rest, the others keep one view."""
        todo = [x for x in todo if views[x]]
        if not todo:
            return
        try:
            again = plan_views(todo, seconds, n, max(left, 0.0) * SAFETY, self.full, self.droppable)
        except BudgetError:
            again = {x: 0 if self.droppable else 1 for x in todo}
        if again != {x: views[x] for x in todo}:
            print(f"infer: re-planned with {left:.0f} s left:\n{describe(again, seconds, n, self.full)}", flush=True)
        views.update(again)

    def run(self) -> int:
        args = self.args
        began = time.perf_counter()
        budget = parse_budget(args.time_budget)
        self.check_test()
        order = [m.name for m in self.bundle.models]
        measure = budget is not None or args.dry_run  # without a budget no plan needs the speeds
        # Measured on the device it will run on; several devices share the images, and so the time.
        seconds = {m: self.measure(m) / len(self.devices) if measure else 0.0 for m in order}
        n = args.images if args.dry_run and args.images else len(self.ids)
        left = None if budget is None else budget - (time.perf_counter() - began)
        views = plan_views(order, seconds, n, None if left is None else left * SAFETY, self.full, self.droppable)
        print(f"infer: plan ({self.runtime} on {self.device}, budget "
              f"{'none' if budget is None else f'{budget:.0f} s'}):\n{describe(views, seconds, n, self.full)}",
              flush=True)
        if args.dry_run:
            return 0
        for i, m in enumerate(order):
            if budget is not None and i:  # the plan again, for the models still to run, from the time left
                self.replan(order[i:], views, seconds, n, budget - (time.perf_counter() - began))
            if views[m]:
                self.predict(m, views[m])
        kept = [m for m in self.choice["models"] if views[m]]  # in the order the ensemble was fitted on
        store = self.ensemble(kept)
        tuned = Tuned.read(self.bundle.path(TUNE), self.cfg.data.classes, "missing from the bundle")
        built = Submission(self.cfg, self.comp, store, tuned)
        target = Path(args.out)
        target.parent.mkdir(parents=True, exist_ok=True)
        with atomic.atomic_path(target) as tmp:
            built.write(tmp, target)
        if self.cfg.data.volumes is not None and args.volumes:  # the label volumes, as `segkit submit` writes them
            files = {case: Path(args.volumes) / path.name for case, path in volume_files(self.cfg, self.comp).items()}
            write_volumes(final_masks(self.cfg, self.comp, store, tuned), files)
            print(f"infer: wrote {len(files)} label volumes (NIfTI, the source's affine) -> {args.volumes}")
        if not args.keep_work:
            shutil.rmtree(self.work, ignore_errors=True)
        print(f"infer: wrote {target} ({len(built.frame)} rows, {len(self.ids)} images) in "
              f"{time.perf_counter() - began:.0f} s; models {', '.join(f'{m} x{views[m]}' for m in kept)}")
        return 0


def devices(listed: Optional[str], device: Optional[str]) -> list:
    """The devices predictions run on: ``--devices`` as given, else every GPU there is where ``--device`` is auto
    or cuda, else the one device ``--device`` names."""
    import torch  # here: the device list needs it

    if listed:
        return [resolve_device(d.strip(), key="--devices") for d in listed.split(",") if d.strip()]
    name = (device or "auto").lower()
    if name in ("auto", "cuda") and torch.cuda.is_available() and torch.cuda.device_count() > 1:
        return [torch.device("cuda", i) for i in range(torch.cuda.device_count())]
    return [resolve_device(name, key="--device")]


def _share(rank: int, root: str, args: dict, names: list[str], model: str, views: int) -> None:
    """Device ``names[rank]``'s process: its share of model ``model``'s test images."""
    mine = argparse.Namespace(**{**args, "devices": None, "device": names[rank]})
    world = World(rank=rank, size=len(names), local_rank=rank)
    Offline(Bundle.read(Path(root)), mine).predict_share(model, views, world)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="infer.py", description="a segkit bundle's submission, offline")
    p.add_argument("--test", required=True, help="folder of the test images, as the competition gives it")
    p.add_argument("--sample", default=None, help="the competition's sample_submission.csv (a volume competition "
                   "without one: rows per slice of the test cases)")
    p.add_argument("--volumes", default=None, help="a volume competition: write each test case's label volume here")
    p.add_argument("--out", default="submission.csv")
    p.add_argument("--time-budget", default=None, help="e.g. 8h, 90m, 1h30m: TTA views and models are fitted to it")
    p.add_argument("--runtime", default=None, choices=["eager", "torchscript", "onnx"],
                   help="default: the bundle's (its model files)")
    p.add_argument("--device", default=None, help="auto | cpu | cuda (default: auto)")
    p.add_argument("--devices", default=None,
                   help="several devices, one process each, e.g. cuda:0,cuda:1 (default: every GPU there is)")
    p.add_argument("--amp", default=None, choices=["auto", "none", "bf16", "fp16"],
                   help="autocast precision (default: auto on a GPU: bf16 where it has it, else fp16; on a CPU the "
                   "experiment's predict.amp)")
    p.add_argument("--work", default=None, help="folder for the probability stores (default: beside --out)")
    p.add_argument("--keep-work", action="store_true", help="keep --work after the submission is written")
    p.add_argument("--dry-run", action="store_true", help="measure, print the plan, write nothing")
    p.add_argument("--images", type=int, default=None, help="with --dry-run: plan for this many test images")
    return p


def main(argv: Optional[list[str]] = None, bundle: Optional[Path] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return Offline(Bundle.read(Path(bundle or Path.cwd())), args).run()
    except SegkitError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


__all__ = ["BudgetError", "main", "parse_budget", "plan_views"]
