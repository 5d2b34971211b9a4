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
# # Micro-replication: ULD against λ=0 on real small models
#
# Gemma-3-270M teaching SmolLM2-135M-Instruct on 200 SQuAD items, 3 seeds per trained setting (`experiments/micro/`, `paper_tables/table_micro.py`). Left: every setting on the full slice, mean ± std over seeds with each seed as a dot; right: λ=0 and ULD on 25/50/100% of the slice. The interval is a paired bootstrap of ULD − λ=0 over the evaluation questions, seeds averaged per question. The study may also live in stores of its own next to the main one (`results/micro_<hardware>/`, e.g. the same grid run on a GPU); each is shown with the hardware its runs record.
#
# **Whose numbers.** Figures `micro` (the main store) and one per other store (`micro_h100`, …): ours only; the authors ran nothing at this scale, and their 7B-teacher numbers are not comparable.

# %%
from uld import reporting

nb = reporting.notebook_setup()  # headless plotting; prints the store it reads
STORE, finish = nb.store, nb.finish

# %%
stores = [STORE, *nb.other_stores]  # the main store, then the same grid run on other hardware (micro_*)
tables = {}
for store in stores:
    plan = reporting.plan_table("micro", store_root=store)
    print(plan.summary())
    tables[store] = plan.spec.collect(plan)
tables[STORE].runs

# %%
for store, micro in tables.items():
    print(micro.markdown(store_root=store))

# %%
for store, micro in tables.items():
    finish(reporting.settings_and_fractions_figure(micro, metric="f1"), "micro" if store == STORE else store.name)
