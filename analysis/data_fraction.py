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
# λ=0 (cross-entropy on the teacher's answers) against ULD when the student sees the first 25, 50, 75 or 100% of the training part (`paper_tables/table_data_fraction.py`). Solid: ours; dashed: the authors'.

# %%
import seaborn as sns

from uld import reporting, results

nb = reporting.notebook_setup()  # headless plotting; prints the store it reads
STORE, finish = nb.store, nb.finish

# %%
df = results.load_results(STORE, source="both")
frac = reporting.fraction_frame(df, metric="f1")
frac

# %%
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
    finish(g.figure, "data_fraction")

# %% [markdown]
# Gap between ULD and λ=0 at each fraction (positive: ULD is better).

# %%
gap = frac.pivot_table(index=["source", "pair", "task", "train_fraction"], columns="setting", values="value")
if {"uld", "lambda0"} <= set(gap.columns):
    gap["uld - lambda0"] = gap["uld"] - gap["lambda0"]
gap
