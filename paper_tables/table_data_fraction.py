"""Dataset size: Pythia-410m from Llama-2-7b-chat on 25/50/75/100% of SQuAD and FairytaleQA, lambda=0 vs ULD.

Usage (from the repository root)::

    python paper_tables/table_data_fraction.py                  # run what is missing, then write the table
    python paper_tables/table_data_fraction.py --report-only    # only read the store
    python paper_tables/table_data_fraction.py --preset small   # the CPU grid (small models, small slices)

The grid is declared by experiments/data_fraction/<preset>_*.yaml. Output: <store>/tables/table_data_fraction[_small].{md,tex}
and a .cells.csv naming the run behind every number. The table's grid and shape are declared here (TABLE). Same as `uld table data_fraction`.
"""

from __future__ import annotations

import sys

from uld.reporting import ComparisonTable

TABLE = ComparisonTable(
    name="data_fraction",
    title="Training-set fraction: Pythia-410m distilled from Llama-2-7b-chat",
    grid=("data_fraction/{preset}_*.yaml",),
    metrics=("f1", "rougeL", "bertscore_f1"),
    layout="sorted",
    label_columns=("task", "teacher", "student", "setting", "train_fraction"),
    caption="The first 25/50/75/100% of the training part; validation hold-out unchanged.",
)


def main(argv: list[str] | None = None) -> int:
    from uld.tables import table_script  # building launches the pipeline; reading TABLE does not need it

    return table_script(TABLE, argv, __doc__.splitlines()[0])


if __name__ == "__main__":
    sys.exit(main())
