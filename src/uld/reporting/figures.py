"""Where figures go and how they are written (PNG for reading, PDF for papers, atomically)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any, Sequence

from uld.io import replace
from uld.reporting.stats import seed_summary
from uld.reporting.text import METRIC_LABELS, SETTING_LABELS

__all__ = ["RESULTS_ENV", "FIGURES_ENV", "results_dir", "figures_dir", "save_figure", "settings_and_fractions_figure",
           "authors_bars"]

RESULTS_ENV = "ULD_RESULTS_DIR"
FIGURES_ENV = "ULD_FIGURES_DIR"


def results_dir() -> Path:
    """The store the notebooks read: ``$ULD_RESULTS_DIR`` or ``results``."""
    return Path(os.environ.get(RESULTS_ENV, "results"))


def figures_dir(store: str | os.PathLike | None = None) -> Path:
    """Where figures go: ``$ULD_FIGURES_DIR``, else ``<store>/figures``."""
    if os.environ.get(FIGURES_ENV):
        return Path(os.environ[FIGURES_ENV])
    return Path(store if store is not None else results_dir()) / "figures"


def save_figure(fig: Any, name: str, out_dir: str | os.PathLike | None = None,
                formats: Sequence[str] = ("png", "pdf")) -> list[Path]:
    """Save a matplotlib figure as ``<name>.<format>`` for each format (rendered aside, renamed into place)."""
    out = Path(out_dir) if out_dir is not None else figures_dir()
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for ext in formats:
        target = out / f"{name}.{ext}"
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=f".{ext}", dir=out)
        os.close(fd)
        try:
            # a PDF without its creation date: an unchanged figure re-renders to the same bytes
            meta = {"metadata": {"CreationDate": None}} if ext == "pdf" else {}
            fig.savefig(tmp, format=ext, dpi=150, bbox_inches="tight", **meta)
            replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        paths.append(target)
    return paths


def settings_and_fractions_figure(table: Any, metric: str = "f1") -> Any:
    """Two panels: (a) ``metric`` per setting on the full slice, mean ± std over seeds with each seed as
    a dot; (b) λ=0 and ULD against the training fraction. Empty cells are simply absent."""
    import matplotlib.pyplot as plt

    rows, fractions, contrast = table.setting_rows, table.fraction_rows, table.contrast
    runs = table.runs[table.runs["metric"] == metric]
    fig, (ax_a, ax_b) = plt.subplots(1, 2, figsize=(9, 3.4), gridspec_kw={"width_ratios": [1.3, 1]})
    label = METRIC_LABELS.get(metric, metric)
    colors = {"lambda0": "tab:blue", "uld": "tab:orange"}

    names = [r["label"] for r in rows]
    for x, row in enumerate(rows):
        s = seed_summary(runs[(runs["setting"] == row["setting"]) & (runs["train_fraction"] == 1.0)]["value"])
        if s.mean is None:
            continue
        color = colors.get(row["setting"], "tab:gray")
        ax_a.bar(x, s.mean, yerr=s.std or 0.0, color=color, alpha=0.6, capsize=4)
        vals = runs[(runs["setting"] == row["setting"]) & (runs["train_fraction"] == 1.0)]["value"]
        ax_a.scatter([x] * len(vals), vals, color="black", s=12, zorder=3)
    ax_a.set_xticks(range(len(names)), names, rotation=20, ha="right")
    ax_a.set_ylabel(label)
    ax_a.set_title("(a) full training slice" + ("" if not runs.empty else ": no runs yet"))
    if contrast is not None:
        ax_a.set_ylim(top=ax_a.get_ylim()[1] * 1.12)  # headroom for the contrast line
        ax_a.text(0.02, 0.97, table.contrast_line.split(" (")[0], transform=ax_a.transAxes, va="top", fontsize=8)

    for setting in ("lambda0", "uld"):
        pts = [(r["train_fraction"], r[setting]) for r in fractions if r[setting].mean is not None]
        if not pts:
            continue
        xs = [100 * f for f, _ in pts]
        ax_b.errorbar(xs, [s.mean for _, s in pts], yerr=[s.std or 0.0 for _, s in pts], marker="o", capsize=4,
                      color=colors[setting], label=SETTING_LABELS[setting])
        sub = runs[runs["setting"] == setting]
        ax_b.scatter(100 * sub["train_fraction"], sub["value"], color=colors[setting], s=10, alpha=0.5)
    ax_b.set_xlabel("% of the training slice")
    ax_b.set_ylabel(label)
    ax_b.set_xticks([100 * r["train_fraction"] for r in fractions])
    ax_b.set_title("(b) training-set fraction")
    if ax_b.get_legend_handles_labels()[0]:
        ax_b.legend(fontsize=8)
    fig.tight_layout()
    return fig


def authors_bars(frame: Any, y: str, ylabel: str, title: str) -> Any:
    """Bars of the authors' numbers per task (hue: student, one panel per teacher), for a figure whose own
    runs are not in the store yet: what they will be compared with. ``frame`` has task, student,
    teacher and ``y`` columns."""
    import seaborn as sns

    g = sns.catplot(data=frame, x="task", y=y, hue="student", col="teacher", kind="bar", height=3, aspect=1.4,
                    errorbar=None)
    g.set_axis_labels("", ylabel)
    g.figure.suptitle(title, y=1.04)
    return g.figure
