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
# # Ours against the authors', cell by cell
#
# Every table cell where both numbers exist: our score against the authors' (`uld.reporting.paired`). Points on the diagonal reproduce the paper. Cells the authors' files get wrong are listed separately.
#
# **Whose numbers.** Figure `paper_vs_ours`: each point is one of our runs' cell (y) against the authors' number for that cell (x). While the store holds no paper-scale run of ours (the committed store holds none), the figure falls back to the authors' ULD − λ=0 per cell and its title says so: every bar in it is then the authors'.

# %%
import seaborn as sns

from uld import reporting, results

nb = reporting.notebook_setup()  # headless plotting; prints the store it reads
STORE, finish = nb.store, nb.finish

# %%
df = results.load_results(STORE, source="both")
pairs = reporting.paired(df, metrics=["f1", "rougeL", "bertscore_f1"])
pairs["metric"] = pairs["metric"].map(reporting.METRIC_LABELS)
pairs

# %%
clean = pairs[pairs["flag"].isna()]
if clean.empty:
    # nothing of ours at paper scale yet: show what there is to reproduce, the paper's ULD gain per cell
    print("no cell with both numbers in", STORE, "- showing the authors' ULD − λ=0 per cell")
    authors = df[(df["source"] == "authors") & (df["metric"] == "f1") & (df["train_fraction"] == 1.0)
                 & df["setting"].isin(["lambda0", "uld"])]
    wide = authors.pivot_table(index=["task", "teacher", "student"], columns="setting", values="value").dropna()
    gain = (wide["uld"] - wide["lambda0"]).rename("gain").reset_index()
    finish(reporting.authors_bars(gain, "gain", "ULD − λ=0 (F1, authors)",
                                  "No paper-scale run in this store yet: the authors' ULD gain to reproduce"), "paper_vs_ours")
else:
    g = sns.relplot(
        data=clean, x="authors", y="ours", hue="setting", style="task", col="metric", kind="scatter",
        height=3.2, s=50, facet_kws={"sharex": False, "sharey": False},
    )
    for ax in g.axes.flat:
        lo = min(ax.get_xlim()[0], ax.get_ylim()[0])
        hi = max(ax.get_xlim()[1], ax.get_ylim()[1])
        ax.plot([lo, hi], [lo, hi], color="grey", linestyle="--", linewidth=1)
    finish(g.figure, "paper_vs_ours")

# %% [markdown]
# Summary of ours − authors per metric, and the cells whose authors' number is flagged as defective.

# %%
clean.groupby("metric")["diff"].describe()

# %%
pairs[pairs["flag"].notna()]
