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
           "paired_seeds_figure", "authors_bars"]

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


def paired_seeds_figure(table: Any, metric: str = "f1", a: str = "uld", b: str = "lambda0",
                        claim: tuple[float, str] | None = None) -> Any:
    """Two panels for a study of ``a`` against ``b`` on paired seeds (full training slice): (a) each seed's
    ``metric`` under both settings, joined by a line per seed; (b) each seed's ``a − b``, then their mean
    with the table's seeds + questions 95% interval (thick) beside the questions-only one (thin, hollow).
    Dashed: no difference; dotted: ``claim`` = (value, label), an effect under test (e.g. a paper's gain).
    A seed missing either setting is left out; without two paired seeds panel (b) says so."""
    import matplotlib.pyplot as plt

    runs = table.runs
    runs = runs[(runs["metric"] == metric) & (runs["train_fraction"] == 1.0) & runs["setting"].isin([a, b])]
    wide = runs.pivot_table(index="seed", columns="setting", values="value", aggfunc="mean")
    wide = wide.dropna() if {a, b} <= set(wide.columns) else wide.iloc[0:0]
    seeds = [int(s) for s in wide.index]
    label, la, lb = METRIC_LABELS.get(metric, metric), SETTING_LABELS.get(a, a), SETTING_LABELS.get(b, b)
    fig, (ax_a, ax_b) = plt.subplots(1, 2, figsize=(9.5, 3.8), gridspec_kw={"width_ratios": [1, 1.4]})
    colours = {s: plt.cm.tab10(i % 10) for i, s in enumerate(seeds)}

    for s in seeds:
        ax_a.plot([0, 1], [wide.loc[s, b], wide.loc[s, a]], marker="o", color=colours[s], label=f"seed {s}")
    if seeds:
        for x, setting in ((0, b), (1, a)):  # the mean over paired seeds, as a short black bar
            ax_a.hlines(wide[setting].mean(), x - 0.12, x + 0.12, color="black", linewidth=2.5, zorder=3)
        ax_a.legend(fontsize=7, frameon=False)
    ax_a.set_xticks([0, 1], [lb, la])
    ax_a.set_xlim(-0.4, 1.4)
    ax_a.set_ylabel(label)
    ax_a.set_title("(a) each seed, both settings" + ("" if seeds else ": no paired seeds yet"))

    diffs = (wide[a] - wide[b]) if seeds else []
    xs = list(range(1, len(seeds) + 1))
    ax_b.scatter(xs, list(diffs), color=[colours[s] for s in seeds], zorder=3)
    seed_ci, ci = table.seed_contrast, table.contrast
    ticks, names = xs, [f"seed {s}" for s in seeds]
    if seed_ci is not None:
        x = len(xs) + 1
        ax_b.errorbar(x, seed_ci.diff, yerr=[[seed_ci.diff - seed_ci.low], [seed_ci.high - seed_ci.diff]], fmt="o",
                      color="black", capsize=5, linewidth=2.5)
        ticks, names = ticks + [x], names + ["mean\nseeds +\nquestions"]
    if ci is not None:
        x = len(xs) + (2 if seed_ci is not None else 1)
        ax_b.errorbar(x, ci.diff, yerr=[[ci.diff - ci.low], [ci.high - ci.diff]], fmt="o", color="grey", mfc="white",
                      capsize=3, linewidth=1)
        ticks, names = ticks + [x], names + ["mean\nquestions\nonly"]
    ax_b.axhline(0.0, color="grey", linewidth=1, linestyle="--")
    if claim is not None:
        low, high = ax_b.get_ylim()
        pad = 0.08 * (max(high, claim[0]) - min(low, claim[0]))  # room for the claim's label inside the axes
        ax_b.set_ylim(min(low, claim[0] - pad), max(high, claim[0] + pad))
        ax_b.axhline(claim[0], color="tab:red", linewidth=1, linestyle=":")
        ax_b.text(0.99, claim[0], claim[1], transform=ax_b.get_yaxis_transform(), ha="right", va="bottom",
                  fontsize=7, color="tab:red")
    ax_b.set_xticks(ticks, names, fontsize=7)
    ax_b.set_xlim(0.4, max(ticks, default=1) + 0.6)
    ax_b.set_ylabel(f"{la} − {lb} ({label}, 95% CI)")
    ax_b.set_title(f"(b) {la} − {lb}" + ("" if len(seeds) >= 2 else ": fewer than 2 paired seeds"))
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
