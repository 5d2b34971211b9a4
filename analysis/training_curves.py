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
# # Training curves: cross-entropy and ULD terms, and overfitting of λ=0 against ULD
#
# Read from every run's `metrics.jsonl`. Validation cross-entropy per epoch shows when each run starts to overfit; the marked point is the checkpoint kept (lowest validation loss).
#
# **Whose numbers.** Figures `training_curves_val` and `training_curves_train`: ours only, every line one of our runs' `metrics.jsonl` (in the committed store: the micro-replication's fp32 runs and the headroom study's bf16 runs of the same pair, drawn in one panel); nothing of the authors' is drawn.

# %%
import seaborn as sns

from uld import reporting, results

nb = reporting.notebook_setup()  # headless plotting; prints the store it reads
STORE, finish = nb.store, nb.finish

# %%
logs = results.load_training_logs(STORE)
curves = reporting.curves_frame(logs, settings=("lambda0", "uld"))
curves = curves[curves["train_fraction"] == 1.0]
curves.groupby(["pair", "task", "setting", "split", "quantity"]).size()

# %%
val = curves[(curves["split"] == "val") & (curves["quantity"] == "ce")]
if val.empty:
    print("no validation lines in", STORE)
else:
    g = sns.relplot(
        data=val, x="epoch", y="value", hue="setting", hue_order=["lambda0", "uld"], units="run_id", estimator=None,
        col="panel", col_wrap=reporting.panel_columns(val["panel"].nunique()), kind="line", marker="o", height=3,
        aspect=1.2, facet_kws={"sharey": False},
    )
    g.set_titles("{col_name}")
    for panel, ax in g.axes_dict.items():
        best = val[(val["panel"] == panel) & val["best"]]
        ax.scatter(best["epoch"], best["value"], s=80, facecolors="none", edgecolors="black", zorder=3)
    g.set_axis_labels("epoch", "validation cross-entropy")
    finish(g.figure, "training_curves_val")

# %%
train = curves[(curves["split"] == "train") & curves["quantity"].isin(["ce", "uld"])]
if train.empty:
    print("no training lines in", STORE)
else:
    g = sns.relplot(
        data=train, x="step", y="value", hue="setting", hue_order=["lambda0", "uld"], style="quantity", units="run_id",
        estimator=None,
        col="panel", col_wrap=reporting.panel_columns(train["panel"].nunique()), kind="line", height=3, aspect=1.2,
        facet_kws={"sharey": False},
    )
    g.set_titles("{col_name}")
    g.set_axis_labels("optimizer step", "training loss term")
    finish(g.figure, "training_curves_train")
