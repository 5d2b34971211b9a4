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
# # A powered test of ULD against λ=0
#
# Gemma-3-270M fine-tuned on 2,000 gold SQuAD items (the teacher) → SmolLM2-135M-Instruct, 200 student items from 152 training articles, 10 epochs, λ=0 against ULD (λ=1.5, cached top-64 signal), paired seeds, every run scored on the same 3,000 dev questions from all 48 dev articles (`experiments/powered/`, `paper_tables/table_powered.py`). Pre-registered in `docs/studies/powered_plan.md`; the primary outcome is ULD − λ=0 on F1 with the seeds × questions interval. Cells without finished runs show `–`; the table says how many runs each has. The teacher did not meet the plan's peakedness check (first-token top-1 0.665 < 0.7; deviation 2 of the plan).
#
# **Whose numbers.** Figure `powered`: ours only (the study is not in the paper); the authors' +2.3 F1 (the claim under test) is the dotted line of panel (b).

# %%
from uld import reporting

nb = reporting.notebook_setup()  # headless plotting; prints the store it reads
STORE, finish = nb.store, nb.finish

# %%
plan = reporting.plan_table("powered", store_root=STORE)
print(plan.summary())
powered = plan.spec.collect(plan)
powered.runs

# %% [markdown]
# The table: per-setting scores, the primary contrast with both intervals (the seeds × questions one is the test), the teacher's margin and confidence, each run's best validation step, the students' diagnostics, and where the two arms' answers differ (question type, gold-answer length, answer shape; exploratory, uncorrected).

# %%
print(powered.markdown(store_root=STORE))

# %%
finish(plan.spec.figure(powered, metric="f1"), "powered")  # the table's own figure: each seed, and the interval
