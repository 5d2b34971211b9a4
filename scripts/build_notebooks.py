"""Write the analysis notebooks (analysis/*.ipynb) from one place, without outputs.

    .venv/bin/python scripts/build_notebooks.py          # rewrite analysis/*.ipynb
    .venv/bin/python scripts/build_notebooks.py --check  # exit 1 if a committed notebook differs

Every notebook reads the results store only (``uld.results`` / ``uld.reporting``; the store is
``$ULD_RESULTS_DIR``, default ``results``), plots with seaborn and saves PNG + PDF figures to
``$ULD_FIGURES_DIR`` (default ``<store>/figures``). The data preparation lives in ``uld.reporting``
(tested there); a notebook is the plotting and the reading of the plot.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "analysis"

SETUP = '''\
import matplotlib

matplotlib.use("Agg")  # headless: figures are saved, not shown
import matplotlib.pyplot as plt
import seaborn as sns

from uld import reporting, results, store

STORE = reporting.results_dir()
FIGURES = reporting.figures_dir(STORE)
FIXTURE = store.store_info(STORE).get("fixture", False)
sns.set_theme(context="paper", style="whitegrid")
print(f"store: {STORE}  figures: {FIGURES}  fixture: {FIXTURE}")


def finish(fig, name):
    """Label fixture figures as such, save PNG + PDF, close."""
    if FIXTURE:
        fig.suptitle("FIXTURE DATA: fake numbers", color="crimson", y=1.02)
    for path in reporting.save_figure(fig, name, FIGURES):
        print("saved", path)
    plt.close(fig)'''


def notebook(title: str, intro: str, cells: list[tuple[str, str]]) -> nbformat.NotebookNode:
    nb = new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.metadata["language_info"] = {"name": "python"}
    nb.cells.append(new_markdown_cell(f"# {title}\n\n{intro}"))
    nb.cells.append(new_code_cell(SETUP))
    for kind, text in cells:
        nb.cells.append(new_markdown_cell(text) if kind == "md" else new_code_cell(text))
    return nb


NOTEBOOKS = {
    "data_fraction": notebook(
        "F1 against the size of the training set",
        "λ=0 (cross-entropy on the teacher's answers) against ULD when the student sees the first 25, 50, 75 "
        "or 100% of the training part (`paper_tables/table_data_fraction.py`). Solid: ours; dashed: the authors'.",
        [
            ("code", 'df = results.load_results(STORE, source="both")\nfrac = reporting.fraction_frame(df, metric="f1")\nfrac'),
            (
                "code",
                '''\
if frac.empty:
    print("no run series that vary the training fraction in", STORE)
else:
    g = sns.relplot(
        data=frac, x="train_fraction", y="value", hue="setting", style="source", markers=True,
        col="panel", col_wrap=3, kind="line", height=3, aspect=1.2, facet_kws={"sharey": False},
    )
    g.set_titles("{col_name}")
    g.set_axis_labels("fraction of the training set", "F1")
    g.set(xticks=[0.25, 0.5, 0.75, 1.0])
    finish(g.figure, "data_fraction")''',
            ),
            ("md", "Gap between ULD and λ=0 at each fraction (positive: ULD is better)."),
            (
                "code",
                '''\
gap = frac.pivot_table(index=["source", "pair", "task", "train_fraction"], columns="setting", values="value")
if {"uld", "lambda0"} <= set(gap.columns):
    gap["uld - lambda0"] = gap["uld"] - gap["lambda0"]
gap''',
            ),
        ],
    ),
    "cost_ablation": notebook(
        "Cost ablation: closed-form ULD against optimal transport costs",
        "F1 of students trained with the closed-form ULD and with exact optimal transport between the two "
        "vocabularies under a uniform, Levenshtein or embedding ground cost (`paper_tables/table_cost_ablation.py`). "
        "The authors report the closed form only.",
        [
            ("code", 'df = results.load_results(STORE, source="both")\ncost = reporting.cost_frame(df, metric="f1")\ncost'),
            (
                "code",
                '''\
if cost.empty:
    print("no ULD-OT runs in", STORE)
else:
    g = sns.catplot(
        data=cost, x="cost", y="value", hue="source", col="panel", col_wrap=3, kind="bar",
        height=3, aspect=1.2, sharey=False, order=["closed form", "uniform", "levenshtein", "embedding"],
    )
    g.set_titles("{col_name}")
    g.set_axis_labels("", "F1")
    finish(g.figure, "cost_ablation")''',
            ),
        ],
    ),
    "student_size": notebook(
        "Student size",
        "Student few-shot, λ=0 and ULD against the student's parameter count, one teacher per series "
        "(`paper_tables/table_student_size.py`). Solid: ours; dashed: the authors'.",
        [
            ("code", 'df = results.load_results(STORE, source="both")\nsize = reporting.size_frame(df, metric="f1")\nsize'),
            (
                "code",
                '''\
if size.empty:
    print("no series with more than one student size in", STORE)
else:
    g = sns.relplot(
        data=size, x="params", y="value", hue="setting", style="source", markers=True,
        col="panel", col_wrap=3, kind="line", height=3, aspect=1.2, facet_kws={"sharey": False},
    )
    g.set_titles("{col_name}")
    g.set(xscale="log")
    g.set_axis_labels("student parameters", "F1")
    finish(g.figure, "student_size")''',
            ),
        ],
    ),
    "training_curves": notebook(
        "Training curves: cross-entropy and ULD terms, and overfitting of λ=0 against ULD",
        "Read from every run's `metrics.jsonl`. Validation cross-entropy per epoch shows when each run starts "
        "to overfit; the marked point is the checkpoint kept (lowest validation loss).",
        [
            (
                "code",
                '''\
logs = results.load_training_logs(STORE)
curves = reporting.curves_frame(logs, settings=("lambda0", "uld"))
curves = curves[curves["train_fraction"] == 1.0]
curves.groupby(["pair", "task", "setting", "split", "quantity"]).size()''',
            ),
            (
                "code",
                '''\
val = curves[(curves["split"] == "val") & (curves["quantity"] == "ce")]
if val.empty:
    print("no validation lines in", STORE)
else:
    g = sns.relplot(
        data=val, x="epoch", y="value", hue="setting", units="run_id", estimator=None,
        col="panel", col_wrap=3, kind="line", marker="o", height=3, aspect=1.2, facet_kws={"sharey": False},
    )
    g.set_titles("{col_name}")
    for panel, ax in g.axes_dict.items():
        best = val[(val["panel"] == panel) & val["best"]]
        ax.scatter(best["epoch"], best["value"], s=80, facecolors="none", edgecolors="black", zorder=3)
    g.set_axis_labels("epoch", "validation cross-entropy")
    finish(g.figure, "training_curves_val")''',
            ),
            (
                "code",
                '''\
train = curves[(curves["split"] == "train") & curves["quantity"].isin(["ce", "uld"])]
if train.empty:
    print("no training lines in", STORE)
else:
    g = sns.relplot(
        data=train, x="step", y="value", hue="setting", style="quantity", units="run_id", estimator=None,
        col="panel", col_wrap=3, kind="line", height=3, aspect=1.2, facet_kws={"sharey": False},
    )
    g.set_titles("{col_name}")
    g.set_axis_labels("optimizer step", "training loss term")
    finish(g.figure, "training_curves_train")''',
            ),
        ],
    ),
    "micro": notebook(
        "Micro-replication: ULD against λ=0 on real small models",
        "Gemma-3-270M teaching SmolLM2-135M-Instruct on 200 SQuAD items, 3 seeds per trained setting "
        "(`experiments/micro/`, `paper_tables/table_micro.py`). Left: every setting on the full slice, mean ± std "
        "over seeds with each seed as a dot; right: λ=0 and ULD on 25/50/100% of the slice. The interval is a "
        "paired bootstrap of ULD − λ=0 over the evaluation questions, seeds averaged per question. "
        "The study may also live in stores of its own next to the main one (`results/micro_<hardware>/`, e.g. "
        "the same grid run on a GPU); each is shown with the hardware its runs record.",
        [
            (
                "code",
                '''\
stores = [STORE] + sorted(d for d in STORE.glob("micro_*") if (d / "runs").is_dir())
tables = {}
for store in stores:
    plan = reporting.plan_table("micro", store_root=store)
    print(plan.summary())
    tables[store] = plan.spec.collect(plan)
tables[STORE].runs''',
            ),
            (
                "code",
                '''\
for store, micro in tables.items():
    print(micro.markdown(store_root=store))''',
            ),
            (
                "code",
                '''\
for store, micro in tables.items():
    finish(reporting.settings_and_fractions_figure(micro, metric="f1"), "micro" if store == STORE else store.name)''',
            ),
        ],
    ),
    "paper_vs_ours": notebook(
        "Ours against the authors', cell by cell",
        "Every table cell where both numbers exist: our score against the authors' (`uld.reporting.paired`). "
        "Points on the diagonal reproduce the paper. Cells the authors' files get wrong are listed separately.",
        [
            (
                "code",
                '''\
df = results.load_results(STORE, source="both")
pairs = reporting.paired(df, metrics=["f1", "rougeL", "bertscore_f1"])
pairs["metric"] = pairs["metric"].map(reporting.METRIC_LABELS)
pairs''',
            ),
            (
                "code",
                '''\
clean = pairs[pairs["flag"].isna()]
if clean.empty:
    print("no cell with both numbers in", STORE)
else:
    g = sns.relplot(
        data=clean, x="authors", y="ours", hue="setting", style="task", col="metric", kind="scatter",
        height=3.2, s=50, facet_kws={"sharex": False, "sharey": False},
    )
    for ax in g.axes.flat:
        lo = min(ax.get_xlim()[0], ax.get_ylim()[0])
        hi = max(ax.get_xlim()[1], ax.get_ylim()[1])
        ax.plot([lo, hi], [lo, hi], color="grey", linestyle="--", linewidth=1)
    finish(g.figure, "paper_vs_ours")''',
            ),
            ("md", "Summary of ours − authors per metric, and the cells whose authors' number is flagged as defective."),
            ("code", 'clean.groupby("metric")["diff"].describe()'),
            ("code", 'pairs[pairs["flag"].notna()]'),
        ],
    ),
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if analysis/ differs from what this script writes")
    args = parser.parse_args(argv)
    OUT.mkdir(exist_ok=True)
    stale = []
    for name, nb in NOTEBOOKS.items():
        for i, cell in enumerate(nb.cells):
            cell["id"] = f"{name}-{i}"  # stable ids: rebuilding gives byte-identical files
        nbformat.validate(nb)
        path = OUT / f"{name}.ipynb"
        text = nbformat.writes(nb) + "\n"
        if args.check:
            if not path.exists() or path.read_text() != text:
                stale.append(path)
            continue
        path.write_text(text)
        print(f"wrote {path.relative_to(REPO)}")
    if stale:
        print("out of date (run scripts/build_notebooks.py):", *map(str, stale), sep="\n  ")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
