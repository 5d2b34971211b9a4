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
# # Cost ablation: closed-form ULD against optimal transport costs
#
# F1 of students trained with the closed-form ULD and with exact optimal transport between the two vocabularies under a uniform, Levenshtein or embedding ground cost (`paper_tables/table_cost_ablation.py`). The authors report the closed form only.
#
# **Whose numbers.** Figure `cost_ablation`: bars coloured by source, ours (our closed-form ULD and ULD-OT runs) beside the authors' where both exist. While the store holds no ULD-OT run of ours (the committed store holds none), the figure falls back to the authors' closed-form ULD F1 and its title says so: every bar in it is then the authors'.

# %%
import seaborn as sns

from uld import reporting, results

nb = reporting.notebook_setup()  # headless plotting; prints the store it reads
STORE, finish = nb.store, nb.finish

# %%
df = results.load_results(STORE, source="both")
cost = reporting.cost_frame(df, metric="f1")
cost

# %%
if cost.empty:
    # nothing to compare yet: show the closed-form numbers the costs will be set against
    print("no ULD-OT runs in", STORE, "- showing the authors' closed-form ULD F1")
    authors = df[(df["source"] == "authors") & (df["setting"] == "uld") & (df["metric"] == "f1")
                 & (df["train_fraction"] == 1.0)]
    finish(reporting.authors_bars(authors, "value", "F1 (authors, closed-form ULD)",
                                  "No ULD-OT run in this store yet: the authors' closed-form ULD"), "cost_ablation")
else:
    g = sns.catplot(
        data=cost, x="cost", y="value", hue="source", col="panel", col_wrap=3, kind="bar",
        height=3, aspect=1.2, sharey=False, order=["closed form", "uniform", "levenshtein", "embedding"],
    )
    g.set_titles("{col_name}")
    g.set_axis_labels("", "F1")
    finish(g.figure, "cost_ablation")
