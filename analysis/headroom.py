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
# # When does ULD help? Teacher headroom, confidence, controls and dose
#
# Gemma-3-270M (few-shot, and fine-tuned on gold answers of a disjoint SQuAD slice) teaching SmolLM2-135M-Instruct on 200 SQuAD items; each arm's ULD runs against the λ=0 runs of the same teacher (`experiments/headroom/`, `paper_tables/table_headroom.py`). The arms test four explanations of ULD trailing λ=0 with a weak teacher: too little teacher headroom (H1: a stronger teacher), a mismatched end of answer (H2: the teacher's EOS left unpaired), the top-k approximation of the signal (H3: k=16,384), and too strong a dose (H4: λ=0.1, 0.5, a per-token reduction), plus a sharper signal (T=0.5, 0.25). An arm without finished runs shows `–`; the table says how many runs each cell has.

# %%
from uld import reporting

nb = reporting.notebook_setup()  # headless plotting; prints the store it reads
STORE, finish = nb.store, nb.finish

# %%
plan = reporting.plan_table("headroom", store_root=STORE)
print(plan.summary())
headroom = plan.spec.collect(plan)
headroom.runs

# %%
print(headroom.markdown(store_root=STORE))

# %%
finish(reporting.arms_figure(headroom), "headroom")
