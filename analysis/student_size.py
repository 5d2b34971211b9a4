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
# # Student size
#
# Student few-shot, λ=0 and ULD against the student's parameter count, one teacher per series (`paper_tables/table_student_size.py`). Solid: ours; dashed: the authors'.
#
# **Whose numbers.** Figure `student_size`: solid lines are ours, dashed lines the authors' (the legend's `source`). The committed store has no run of ours that varies the student size (our trained students are all SmolLM2-135M-Instruct), so every line of the committed figure is the authors'.

# %%
import seaborn as sns

from uld import reporting, results

nb = reporting.notebook_setup()  # headless plotting; prints the store it reads
STORE, finish = nb.store, nb.finish

# %%
df = results.load_results(STORE, source="both")
size = reporting.size_frame(df, metric="f1")
size

# %%
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
    finish(g.figure, "student_size")
