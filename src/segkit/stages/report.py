"""``segkit report``: ``runs/<experiment>/report/`` — a markdown summary of the run and its plots.

Sections, each written from whatever artifact exists (a missing one leaves a note, never an error):

- training: per model x fold, from ``<model>/fold<k>/metrics.csv`` (best epoch by the competition metric, or by
  validation loss where the metric is not logged), and the training curves of every fold;
- ensemble: the final ensemble's ``cv.csv`` and the method chosen (``choice.json``);
- tuning: each step of ``tune.json`` with its CV and whether it was kept, the chosen parameters, and the
  threshold / min-area curves the tune stage drew;
- final CV: tuned, raw ensemble, plain pipeline, and the submission file;
- evaluation: every metric of the tuned predictions per split and class, from ``segkit evaluate``'s table;
- objects (instance competitions): object AP at each IoU threshold, objects true against predicted per image, the
  split and merged objects, and OOF images with every object's outline;
- examples: OOF predictions against the truth on the best, median and worst images by the tuned per-image score.

The report reads artifacts only (through ``segkit.artifacts.layout``) and scores with the competition's metric object.
It is a unit of work (``segkit.artifacts.freshness``): rewritten only when something it reads has changed.
"""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

from segkit.artifacts import atomic
from segkit.artifacts.freshness import Unit, fingerprints
from segkit.artifacts.layout import ReportPaths
from segkit.artifacts.probs import ProbStore, manifest
from segkit.config import Config
from segkit.data import Competition
from segkit.data.folds import fold_of, load_folds
from segkit.data.instances import contour
from segkit.ensemble import chosen
from segkit.errors import SegkitError
from segkit.metrics import get_metric
from segkit.oof import score_frame
from segkit.postprocess.instances import decode
from segkit.postprocess.masks import postprocess
from segkit.postprocess.tuned import Tuned, default_params

EXAMPLES = ("best", "median", "worst")


def _plt():
    import matplotlib  # here, not at the top: pyplot costs 0.5 s, and a report with nothing to plot needs none

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # after the backend is chosen

    return plt


def _fmt(value) -> str:
    if isinstance(value, (float, np.floating)):
        return "" if math.isnan(value) else f"{value:.4f}"
    return str(value)


def md_table(frame: pd.DataFrame) -> str:
    """A pipe table (pandas' to_markdown needs an extra package)."""
    cols = [str(c) for c in frame.columns]
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    for row in frame.itertuples(index=False):
        lines.append("| " + " | ".join(_fmt(v).replace("|", "\\|") for v in row) + " |")
    return "\n".join(lines)


def _save(fig, path: Path) -> Path:
    plt = _plt()  # already imported: a dictionary look-up
    fig.tight_layout()
    with atomic.atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return path


# -------------------------------------------------------------------------------------------------------- training


def _monitor(frame: pd.DataFrame, cfg: Config) -> tuple[str, bool] | None:
    """The column that ranks epochs and whether higher is better."""
    for col in ("score", cfg.metric, "dice", "iou"):  # training logs the competition metric as "score"
        if col in frame.columns and pd.to_numeric(frame[col], errors="coerce").notna().any():
            return col, True
    if "val_loss" in frame.columns:
        return "val_loss", False
    return None


def training_section(cfg: Config, out: ReportPaths) -> tuple[list[str], list[Path]]:
    lines = ["## Training", ""]
    rows, plots, plotted = [], [], []
    for model in cfg.models:
        curves = {}
        for fold, folder in cfg.layout.model(model.name).folds():
            path = folder.metrics
            if not path.exists():
                continue
            try:
                frame = pd.read_csv(path)
            except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError):
                lines.append(f"- {path}: unreadable, skipped")
                continue
            if frame.empty:
                continue
            curves[fold] = frame
            mon = _monitor(frame, cfg)
            row = {"model": model.name, "fold": fold, "epochs": len(frame)}
            if mon:
                col, higher = mon
                values = pd.to_numeric(frame[col], errors="coerce")
                best = values.idxmax() if higher else values.idxmin()
                row["best epoch"] = frame["epoch"].iloc[best] if "epoch" in frame.columns else best + 1
                shown = f"{col} ({cfg.metric})" if col == "score" else col
                row[f"best {shown}"] = float(values.iloc[best])
                if "val_loss" in frame.columns and col != "val_loss":
                    row["val_loss at best"] = float(frame["val_loss"].iloc[best])
            rows.append(row)
        if curves:
            plots.append(_plot_training(model.name, curves, cfg, out))
            plotted.append(model.name)
    if not rows:
        lines.append("_No training metrics found (`<model>/fold<k>/metrics.csv`)._")
        return lines + [""], plots
    table = pd.DataFrame(rows)
    parts = []
    for model, part in table.groupby("model", sort=False):  # each model's folds, then their mean
        parts.append(part)
        if len(part) > 1:
            mean = {c: part[c].mean() if c.startswith(("best ", "val_loss")) and c != "best epoch" else ""
                    for c in table.columns}
            mean.update(model=model, fold="mean", epochs="")
            parts.append(pd.DataFrame([mean]))
    table = pd.concat(parts, ignore_index=True).astype(object).where(lambda f: f.notna(), "")
    lines += [md_table(table), ""]
    lines += [f"![training curves of {name}]({p.name})" for name, p in zip(plotted, plots)] + [""]
    return lines, plots


def _plot_training(model: str, curves: dict[int, pd.DataFrame], cfg: Config, out: ReportPaths) -> Path:
    plt = _plt()
    metric_cols = [c for c in (cfg.metric, "dice", "iou") if any(c in f.columns for f in curves.values())]
    metric_cols = list(dict.fromkeys(metric_cols))[:1]
    n = 1 + len(metric_cols)
    fig, axes = plt.subplots(1, n, figsize=(5 * n, 3.4), dpi=100, squeeze=False)
    for n_fold, (fold, frame) in enumerate(curves.items()):
        color = f"C{n_fold % 10}"  # one colour per fold; dashed = train, solid = validation
        x = frame["epoch"] if "epoch" in frame.columns else np.arange(1, len(frame) + 1)
        for col, style in (("train_loss", "--"), ("val_loss", "-")):
            if col in frame.columns:
                axes[0, 0].plot(x, frame[col], style, color=color, label=f"fold {fold} {col.split('_')[0]}")
        for ax, col in zip(axes[0, 1:], metric_cols):
            if col in frame.columns:
                ax.plot(x, frame[col], marker="o", ms=3, color=color, label=f"fold {fold}")
                ax.set(title=col, xlabel="epoch")
    axes[0, 0].set(title=f"{model}: loss", xlabel="epoch")
    for ax in axes[0]:
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=7)
    return _save(fig, out.plot(f"training_{model}"))


# -------------------------------------------------------------------------------------------------------- ensemble


def ensemble_section(cfg: Config) -> list[str]:
    lines = ["## Ensemble", ""]
    ensemble = cfg.layout.final_ensemble
    cv_path = ensemble.cv
    if cv_path.exists():
        try:
            lines += [md_table(pd.read_csv(cv_path).fillna("")), ""]
        except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError):
            lines.append(f"_{cv_path} is unreadable._")
    else:
        lines.append(f"_No ensemble CV table (`{cv_path}`)._")
    if ensemble.choice.exists():
        try:
            choice = chosen.read(ensemble.choice).choice
            shown = ", ".join(f"{k}: {_fmt(v)}" for k, v in choice.items() if not isinstance(v, (dict, list)))
            lines.append(f"Chosen: {shown}")
        except SegkitError as err:
            lines.append(f"_{err}._")
    return lines + [""]


# ---------------------------------------------------------------------------------------------------------- tuning


def tuning_section(tuned: dict | None, out: ReportPaths, refused: str | None = None) -> tuple[list[str], list[Path]]:
    lines = ["## Post-processing (tuned on the ensemble OOF)", ""]
    if refused is not None:
        return lines + [f"_tune.json not shown: {refused}._", ""], []
    if tuned is None:
        return lines + ["_No tune.json (run `segkit tune`)._", ""], []
    rows = []
    for step in tuned.get("steps", []):
        if step.get("step") == "baseline":
            rows.append({"step": "baseline", "choice": step.get("params", "p>0.50"), "CV": step.get("cv"),
                         "kept": ""})
            continue
        choices = "; ".join(f"{c}: {v['choice']}" if len(step["classes"]) > 1 else v["choice"]
                            for c, v in step.get("classes", {}).items())
        kept = ", ".join(c for c, v in step.get("classes", {}).items() if v.get("kept"))
        rows.append({"step": step.get("step"), "choice": choices, "CV": step.get("cv"),
                     "kept": ("yes" if len(step["classes"]) == 1 else kept) if kept else "no"})
    if rows:
        lines += [md_table(pd.DataFrame(rows)), ""]
    for cls, text in tuned.get("summary", {}).items():
        lines.append(f"- **{cls}**: {text}")
    if tuned.get("keep_rule"):
        lines.append(f"- keep rule (`tune.min_gain`): {tuned['keep_rule']}")
    nested = tuned.get("nested") or {}
    if nested:
        lines += ["", "Nested estimate: each fold scored with what the same search chose on the other folds.", "",
                  md_table(pd.DataFrame([{"fold": f, "images": v["images"], "CV nested": v["cv_nested"],
                                          "CV in-sample": v["cv"], "chosen on the other folds":
                                          "; ".join(v["summary"].values())} for f, v in nested.items()]))]
    plots = []
    for drawn in map(Path, tuned.get("plots", [])):  # the curves as the tune stage drew them
        if drawn.exists():
            copy = out.plot(drawn.stem)
            with atomic.atomic_path(copy) as tmp:
                shutil.copyfile(drawn, tmp)
            plots.append(copy)
    if plots:
        lines += [""] + [f"![{p.stem}]({p.name})" for p in plots]
    return lines + [""], plots


def final_section(cfg: Config, tuned: dict | None) -> list[str]:
    lines = ["## Final CV", ""]
    rows = []
    if tuned:
        base = tuned.get("baseline", {})
        if base.get("plain_pipeline") is not None:
            rows.append({"pipeline": f"plain: {base.get('plain_model')}, raw OOF, p>0.5", "CV": base["plain_pipeline"]})
        rows.append({"pipeline": "ensemble OOF, p>0.5", "CV": tuned.get("cv_baseline")})
        if tuned.get("cv_nested") is not None:
            rows.append({"pipeline": "ensemble OOF + tuned post-processing, nested (each fold scored with what "
                                     "tuning chose on the other folds)", "CV": tuned["cv_nested"]})
        rows.append({"pipeline": "ensemble OOF + tuned post-processing, in-sample (chosen on the same OOF)",
                     "CV": tuned.get("cv")})
        lines += [f"Metric: `{tuned.get('metric', cfg.metric)}` over {tuned.get('n_images', '?')} OOF images.", "",
                  md_table(pd.DataFrame(rows)), ""]
    else:
        lines.append("_No tuned CV yet._")
    sub = cfg.layout.submission
    if sub.exists():
        with open(sub, "rb") as f:
            n_rows = max(sum(1 for _ in f) - 1, 0)
        lines.append(f"Submission: `{sub}` ({n_rows} rows).")
    else:
        lines.append(f"_No submission at `{sub}` yet._")
    return lines + [""]


# ------------------------------------------------------------------------------------------------------ evaluation


def evaluation_section(cfg: Config) -> list[str]:
    """``segkit evaluate``'s table (metrics.csv), one pipe table per split."""
    lines = ["## Evaluation (every metric, tuned post-processing)", ""]
    path = cfg.layout.evaluate.metrics
    if not path.exists():
        return lines + [f"_No evaluation table (`{path}`; run `segkit evaluate`)._", ""]
    try:
        table = pd.read_csv(path, dtype={"split": str, "class": str, "metric": str, "best": str})
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError):
        return lines + [f"_{path} is unreadable._", ""]
    wanted = ["split", "class", "metric", "best", "mean", "std", "median", "n"]
    if not set(wanted) <= set(table.columns) or table.empty:
        return lines + [f"_{path} has no evaluation rows._", ""]
    lines += ["Per image and class, then mean, sample std and median over the images where the value is defined "
              "(`n`); distances in pixels. `best`: which way is better (`0`: the signed RVD, whose mean is a bias).",
              ""]
    for split, part in table.groupby("split", sort=False):
        shown = part[wanted[1:]] if part["class"].nunique() > 1 else part[wanted[2:]]
        lines += [f"**{split}**", "", md_table(shown.reset_index(drop=True)), ""]
    return lines


def objects_section(cfg: Config, tuned: Tuned | None, out: ReportPaths) -> tuple[list[str], list[Path]]:
    """Instance competitions: object AP at each IoU threshold, true against predicted objects per image, the split
    and merged objects (``segkit evaluate``'s objects_<split>.csv), and the best, median and worst OOF images with
    every object's outline."""
    if cfg.data.instances is None:
        return [], []
    lines = ["## Objects", ""]
    frames = {split: pd.read_csv(cfg.layout.evaluate.objects(split), dtype={"id": str})
              for split in ("oof", "holdout") if cfg.layout.evaluate.objects(split).exists()}
    if not frames:
        return lines + [f"_No object scores (`{cfg.layout.evaluate.objects('oof')}`; run `segkit evaluate`)._", ""], []
    thresholds = [c for c in next(iter(frames.values())).columns if c.startswith("ap") and c != "ap"]
    table = pd.DataFrame([{"split": split, "images": len(f), "AP": f["ap"].mean(),
                           **{f"@{int(c[2:]) / 100:.2f}": f[c].mean() for c in thresholds},
                           "true / image": f["true_objects"].mean(), "pred / image": f["pred_objects"].mean(),
                           "split objects": int(f["split"].sum()), "merged objects": int(f["merged"].sum())}
                          for split, f in frames.items()])
    lines += ["Object AP per image (the competition's precision TP / (TP + FP + FN) at each IoU threshold, then "
              "averaged), OOF with each fold's nested decoder. Split: true objects cut into two or more predicted "
              "ones; merged: predicted objects holding two or more true ones.", "", md_table(table), ""]
    plt = _plt()
    fig, (curve, counts) = plt.subplots(1, 2, figsize=(10, 4), dpi=100)
    for split, f in frames.items():
        curve.plot([int(c[2:]) / 100 for c in thresholds], [f[c].mean() for c in thresholds], marker="o", label=split)
        counts.scatter(f["true_objects"], f["pred_objects"], s=8, alpha=0.6, label=split)
    top = max(float(f[["true_objects", "pred_objects"]].to_numpy().max()) for f in frames.values()) + 1
    counts.plot([0, top], [0, top], color="gray", lw=0.8)
    curve.set(xlabel="IoU threshold", ylabel="precision", title="object AP by IoU threshold")
    counts.set(xlabel="true objects", ylabel="predicted objects", title="objects per image")
    curve.legend()
    plots = [_save(fig, out.plot("objects"))]
    lines += [f"![objects]({plots[0].name})", ""]
    folder = cfg.layout.final_ensemble.oof
    if "oof" in frames and tuned and ProbStore.is_complete(folder):
        scores = frames["oof"].rename(columns={"ap": "score"})[["id", "score"]]
        picks = pick_examples(scores, True)
        plots.append(_plot_objects(cfg, tuned, ProbStore(folder), picks, out))
        lines += ["Rows: " + "; ".join(f"{label} `{i}` (AP {v:.3f})" for label, i, v in picks) + ". Left: true "
                  "objects' outlines (green); right: the decoded objects' (red).", "",
                  f"![object examples]({plots[-1].name})", ""]
    return lines, plots


def _plot_objects(cfg: Config, tuned: Tuned, store, picks, out: ReportPaths) -> Path:
    plt = _plt()
    comp = Competition(cfg.data, seed=cfg.seed)
    fold = fold_of(load_folds(cfg)) if cfg.layout.folds_file.exists() else None
    decoder_of = tuned.choice(fold).decoder  # drawn as tune chose them, whatever the fold file is now
    fig, axes = plt.subplots(len(picks), 2, figsize=(7, 3.3 * len(picks)), dpi=100, squeeze=False)
    for row, (label, image_id, score) in enumerate(picks):
        image = _picture(cfg, comp.read_image(image_id))
        base = np.dstack([image] * 3) if image.ndim == 2 else image
        for col, (labels, colour) in enumerate([(comp.instance_map(image_id), (0.1, 0.9, 0.1)),
                                                (decode(np.asarray(store[image_id]), decoder_of(image_id)),
                                                 (0.95, 0.1, 0.1))]):
            overlay = np.clip(base, 0, 1).copy()
            overlay[contour(labels, 1)] = colour
            axes[row, col].imshow(overlay)
            axes[row, col].set_title(f"{label}: {image_id}, {int(labels.max())} objects"
                                     + (f" (AP {score:.3f})" if col else ""), fontsize=9)
            axes[row, col].axis("off")
    return _save(fig, out.plot("object_examples"))


# -------------------------------------------------------------------------------------------------------- examples


def _oof_scores(cfg: Config, tuned: Tuned | None) -> pd.DataFrame | None:
    """Per-image tuned scores: tune's oof_scores.csv, or scored now from the final ensemble's OOF store."""
    path = cfg.layout.tune.scores
    if path.exists():
        try:
            frame = pd.read_csv(path, dtype={"id": str})
            if {"id", "score"} <= set(frame.columns):
                return frame
        except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError):
            pass
    folder = cfg.layout.final_ensemble.oof
    if not ProbStore.is_complete(folder):
        return None
    return score_frame(ProbStore(folder), Competition(cfg.data, seed=cfg.seed).read_mask,
                       get_metric(cfg.metric, key="metric"), _params(cfg, tuned), cfg.data.mode == "multiclass")


def _params(cfg: Config, tuned: Tuned | None) -> list:
    return tuned.params if tuned else default_params(cfg.data.classes)


def pick_examples(scores: pd.DataFrame, higher_is_better: bool = True) -> list[tuple[str, str, float]]:
    """(label, id, score) for the best, median and worst image. Images where truth and prediction are both empty
    are skipped when others exist: a correct empty prediction says little about the model."""
    frame = scores
    if {"truth_px", "pred_px"} <= set(frame.columns):
        busy = frame[(frame["truth_px"] > 0) | (frame["pred_px"] > 0)]
        if len(busy):
            frame = busy
    ranked = frame.sort_values("score", ascending=not higher_is_better, kind="stable").reset_index(drop=True)
    picks = {"best": 0, "median": len(ranked) // 2, "worst": len(ranked) - 1}
    return [(label, str(ranked["id"].iloc[i]), float(ranked["score"].iloc[i])) for label, i in picks.items()]


def score_by_size(scores: pd.DataFrame, bins: int = 5, higher_is_better: bool = True) -> pd.DataFrame:
    """Per-image scores grouped by true mask size: empty images, then ``bins`` quantile bins of the non-empty
    ones. ``CV lost`` is what each group costs the mean score against a perfect 1 (the groups' losses add up to
    1 - the mean, the CV of a per-image metric), which says where the points go: small masks, large ones, or
    false positives on empty images."""
    truth = scores["truth_px"].to_numpy()
    score = scores["score"].to_numpy(dtype=float)
    labels, group = ["empty"], np.zeros(len(truth), int)  # group 0: empty images
    busy = truth > 0
    if busy.any():
        edges = np.unique(np.quantile(truth[busy], np.linspace(0, 1, bins + 1)).round().astype(int))
        # Bin i holds edges[i] <= px < edges[i + 1]; the last one also holds the largest mask.
        group[busy] = 1 + np.clip(np.searchsorted(edges, truth[busy], side="right") - 1, 0, max(len(edges) - 2, 0))
        tops = [edges[i + 1] - 1 for i in range(len(edges) - 2)] + [edges[-1]]
        labels += [f"{lo}-{hi} px" for lo, hi in zip(edges, tops)]
    rows = []
    for g, name in enumerate(labels):
        part = score[group == g]
        if not len(part):
            continue
        row = {"true mask": name, "images": len(part), "mean score": part.mean()}
        if higher_is_better:
            row["CV lost"] = (1.0 - part).sum() / len(scores)
        rows.append(row)
    return pd.DataFrame(rows)


def size_section(scores: pd.DataFrame | None, higher_is_better: bool) -> list[str]:
    lines = ["## Score by mask size", ""]
    if scores is None or scores.empty or "truth_px" not in scores:
        return lines + ["_No per-image OOF scores._", ""]
    lines += ["Tuned OOF scores per image, grouped by the size of the true mask (all classes' pixels).", "",
              md_table(score_by_size(scores, higher_is_better=higher_is_better)), ""]
    return lines


def examples_section(cfg: Config, scores: pd.DataFrame | None, higher: bool,
                     tuned: Tuned | None, out: ReportPaths) -> tuple[list[str], list[Path]]:
    lines = ["## OOF examples", ""]
    folder = cfg.layout.final_ensemble.oof
    if not ProbStore.is_complete(folder):
        return lines + ["_No ensemble OOF store: no examples._", ""], []
    if scores is None or scores.empty:
        return lines + ["_No per-image OOF scores._", ""], []
    picks = pick_examples(scores, higher)
    path = _plot_examples(cfg, tuned, ProbStore(folder), picks, out)
    lines.append("Rows: " + "; ".join(f"{label} `{i}` ({s:.3f})" for label, i, s in picks) +
                 ". Green: truth outline; red: prediction outline; error map: white TP, red FP, green FN.")
    return lines + ["", f"![OOF examples]({path.name})", ""], [path]


def _outline(mask: np.ndarray) -> np.ndarray:
    m = mask.astype(np.uint8)
    return (m - cv2.erode(m, np.ones((3, 3), np.uint8), borderType=cv2.BORDER_CONSTANT, borderValue=0)) > 0


def _picture(cfg: Config, image: np.ndarray) -> np.ndarray:
    """What an overlay is drawn on: an RGB image as it is, a 2.5D stack's own slice (its middle channels), the
    first channel of anything else."""
    if cfg.data.context:
        c, k = cfg.data.channels, cfg.data.context
        image = image[:, :, k * c:(k + 1) * c]
    return image if image.shape[2] == 3 else image[:, :, 0]


def _plot_examples(cfg: Config, tuned: Tuned | None, store, picks, out: ReportPaths) -> Path:
    plt = _plt()
    comp = Competition(cfg.data, seed=cfg.seed)
    params = _params(cfg, tuned)
    fig, axes = plt.subplots(len(picks), 3, figsize=(9, 3.1 * len(picks)), dpi=100, squeeze=False)
    for row, (label, image_id, score) in enumerate(picks):
        probs = np.asarray(store[image_id])
        truth = comp.read_mask(image_id).astype(bool).any(0)
        pred = postprocess(probs, params, exclusive=cfg.data.mode == "multiclass").astype(bool).any(0)
        image = _picture(cfg, comp.read_image(image_id))
        overlay = np.dstack([image] * 3) if image.ndim == 2 else image.copy()
        overlay[_outline(truth)] = (0.1, 0.9, 0.1)
        overlay[_outline(pred)] = (0.95, 0.1, 0.1)
        errors = np.zeros(truth.shape + (3,), np.float32)
        errors[truth & pred] = 1.0
        errors[pred & ~truth] = (0.95, 0.1, 0.1)
        errors[truth & ~pred] = (0.1, 0.9, 0.1)
        axes[row, 0].imshow(np.clip(overlay, 0, 1))
        axes[row, 0].set_title(f"{label}: {image_id} ({score:.3f})", fontsize=9)
        axes[row, 1].imshow(probs.max(0), cmap="magma", vmin=0, vmax=255)
        axes[row, 1].set_title("probability", fontsize=9)
        axes[row, 2].imshow(errors)
        axes[row, 2].set_title("errors", fontsize=9)
        for ax in axes[row]:
            ax.axis("off")
    return _save(fig, out.plot("examples"))


# ------------------------------------------------------------------------------------------------------- the stage


def report_unit(cfg: Config) -> Unit:
    """The report as a unit of work: rewritten when anything it reads changed."""
    layout = cfg.layout
    ensemble = layout.final_ensemble
    read = [f.metrics for m in cfg.models for _, f in layout.model(m.name).folds()]
    read += [ensemble.cv, ensemble.choice, manifest(ensemble.oof), layout.tune.json, layout.tune.scores,
             layout.submission, layout.evaluate.metrics, layout.evaluate.objects("oof"),
             layout.evaluate.objects("holdout")]
    inputs = {"experiment": cfg.experiment, "competition": cfg.competition, "metric": cfg.metric,
              "models": [m.name for m in cfg.models], "data": cfg.data.model_dump(mode="json"),
              "read": fingerprints(read)}
    return Unit(f"report: {layout.report.dir}", layout.report.stamp, [layout.report.markdown], inputs)


def run(cfg: Config) -> int:
    out = cfg.layout.report
    unit = report_unit(cfg)
    if unit.skip():
        return 0
    with unit.writing():
        try:
            tuned, refused = Tuned.read_if_any(cfg.layout.tune.json, cfg.data.classes), None
        except SegkitError as err:  # the report shows what there is: an unreadable tune.json is said, not fatal
            tuned, refused = None, str(err)
        record = tuned.record if tuned else None  # what the tuning sections show
        lines = [f"# Report: {cfg.experiment}", "",
                 f"Competition `{cfg.competition}`, metric `{cfg.metric}`, models: "
                 f"{', '.join(m.name for m in cfg.models) or 'none'}.", ""]
        plots: list[Path] = []
        scores = _oof_scores(cfg, tuned)  # per image, for the size table and the examples
        higher = tuned.higher_is_better if tuned else True
        for section in (lambda: training_section(cfg, out), lambda: (ensemble_section(cfg), []),
                        lambda: tuning_section(record, out, refused), lambda: (final_section(cfg, record), []),
                        lambda: (evaluation_section(cfg), []),
                        lambda: objects_section(cfg, tuned, out),
                        lambda: (size_section(scores, higher), []),
                        lambda: examples_section(cfg, scores, higher, tuned, out)):
            part, made = section()
            lines += part
            plots += made
        atomic.write_text(out.markdown, "\n".join(lines).rstrip() + "\n")
    print(f"report: {out.markdown} ({len(plots)} plots)")
    return 0
