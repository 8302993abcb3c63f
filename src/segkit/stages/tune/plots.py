"""The tuning curves as pictures: score against threshold and against minimum area, one PNG per class and search."""

from __future__ import annotations

from pathlib import Path

from segkit.artifacts import atomic
from segkit.artifacts.layout import TunePaths


def plot_curves(curves: dict, paths: TunePaths, metric_name: str) -> list[Path]:
    """score vs threshold and score vs min area, one PNG per class and search."""
    import matplotlib  # here, not at the top: the search is used without plots (ablation), and pyplot costs 0.5 s

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # after the backend is chosen

    written = []
    for cls, per in curves.items():
        if "threshold" in per:
            fig, ax = plt.subplots(figsize=(5, 3.2), dpi=100)
            ax.plot(per["threshold"]["x"], per["threshold"]["score"], marker="o", ms=3, label="min area 0")
            extra = per.get("threshold_at_min_area")
            if extra:
                ax.plot(extra["x"], extra["score"], marker="o", ms=3, label=f"min area {extra['min_area']}")
            chosen = per.get("chosen", {})
            if "threshold" in chosen:
                ax.axvline(chosen["threshold"], color="gray", ls=":", label=f"chosen {chosen['threshold']:.2f}")
            ax.set(xlabel="probability threshold", ylabel=f"OOF {metric_name}", title=f"{cls}: threshold")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
            written.append(_save(fig, paths.plot("threshold", cls)))
        if "min_area" in per:
            fig, ax = plt.subplots(figsize=(5, 3.2), dpi=100)
            xs = per["min_area"]["x"]
            ax.plot(range(len(xs)), per["min_area"]["score"], marker="o", ms=3)
            ax.set_xticks(range(len(xs)), [str(x) for x in xs])
            ax.set(xlabel="minimum component area (px)", ylabel=f"OOF {metric_name}",
                   title=f"{cls}: min area at p>{per['min_area']['threshold']:.2f}")
            ax.grid(alpha=0.3)
            written.append(_save(fig, paths.plot("min_area", cls)))
    return written


def _save(fig, path: Path) -> Path:
    import matplotlib.pyplot as plt  # already imported by plot_curves: a dictionary look-up

    fig.tight_layout()
    with atomic.atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return path


__all__ = ["plot_curves"]
