# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # F1 against the size of the training set
#
# λ=0 (cross-entropy on the teacher's answers) against ULD when the student sees part of its training set (`paper_tables/table_data_fraction.py`; ours so far: the micro-replication's 25/50/100 %, `experiments/micro/micro_fraction.yaml`).
#
# **Whose numbers.** Figure `data_fraction`: each panel is one series, titled "ours: …" (our runs, read from the store and from the stores of the same grid run on other hardware, e.g. `results/micro_h100/`; solid lines) or "authors: …" (the paper's numbers, `results/reference/`; dashed lines). Our committed fraction runs are the micro-replication's (Gemma-3-270M → SmolLM2-135M-Instruct on 200 SQuAD items, three seeds per point); the authors' are 7B teachers and a Pythia-410m student on the paper's training sets. Different scale and pair: compare the shapes of the curves, not their heights.

# %%
import pandas as pd
import seaborn as sns

from uld import reporting, results

nb = reporting.notebook_setup()  # headless plotting; prints the store it reads
STORE, finish = nb.store, nb.finish

# %%
df = pd.concat([results.load_results(STORE, source="both"), *(results.load_results(s) for s in nb.other_stores)],
               ignore_index=True)
frac = reporting.fraction_frame(df, metric="f1")
frac

# %%
if frac.empty:
    print("no run series that vary the training fraction in", STORE)
else:
    panels = sorted(frac["panel"].unique(), key=lambda p: not p.startswith("ours"))  # ours first
    g = sns.relplot(
        data=frac, x="train_fraction", y="value", hue="setting", style="source", style_order=["ours", "authors"],
        markers=True, col="panel", col_order=panels, col_wrap=reporting.panel_columns(len(panels)), kind="line",
        height=3, aspect=1.2, facet_kws={"sharey": False},
    )
    g.set_titles("{col_name}")
    g.set_axis_labels("fraction of the training set", "F1")
    g.set(xticks=[0.25, 0.5, 0.75, 1.0])
    finish(g.figure, "data_fraction")

# %% [markdown]
# Gap between ULD and λ=0 at each fraction (positive: ULD is better).

# %%
gap = frac.pivot_table(index=["source", "store", "pair", "task", "train_fraction"], columns="setting", values="value")
if {"uld", "lambda0"} <= set(gap.columns):
    gap["uld - lambda0"] = gap["uld"] - gap["lambda0"]
gap
