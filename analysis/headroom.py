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
# Gemma-3-270M (few-shot, and fine-tuned on gold answers of a disjoint SQuAD slice) teaching SmolLM2-135M-Instruct on 200 SQuAD items; each arm's ULD runs against the λ=0 runs of the same teacher (`experiments/headroom/`, `paper_tables/table_headroom.py`). The hypotheses: (H1) ULD helps only with a peaked teacher better than the λ=0 student (the fine-tuned teacher; the signal sharpened to T=0.5 and 0.25 separates peakedness from quality); (H2) the harm grows with ULD's effective weight (λ=0.1, 0.5, the per-token reduction); (H3) the top-k cache and the teacher's EOS pairing do not matter (k=16,384; the EOS left unpaired); (H4) the gain needs long training (a one-seed pilot at 6 epochs instead of 2; the N=1,000 regime is not in this grid). An arm without finished runs shows `–`; the table says how many runs each cell has.
#
# **Whose numbers.** Figure `headroom`: ours only (the study is not in the paper); the authors' numbers are not drawn.

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
