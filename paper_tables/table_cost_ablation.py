"""Cost ablation: closed-form ULD vs optimal transport with uniform / Levenshtein / embedding ground cost.

Usage (from the repository root)::

    python paper_tables/table_cost_ablation.py                  # run what is missing, then write the table
    python paper_tables/table_cost_ablation.py --report-only    # only read the store
    python paper_tables/table_cost_ablation.py --preset small   # the CPU grid (small models, small slices)

The grid is declared by experiments/cost_ablation/<preset>_*.yaml. Output: <store>/tables/table_cost_ablation[_small].{md,tex}
and a .cells.csv naming the run behind every number. The table's grid and shape are declared here (TABLE). Same as `uld table cost_ablation`.
"""

from __future__ import annotations

import sys

from uld.reporting import ComparisonTable

TABLE = ComparisonTable(
    name="cost_ablation",
    title="Cost ablation: closed-form ULD vs optimal transport with uniform / Levenshtein / embedding cost",
    grid=("cost_ablation/{preset}_*.yaml",),
    metrics=("f1", "rougeL", "bertscore_f1"),
    layout="sorted",
    label_columns=("task", "teacher", "student", "setting", "ot_cost"),
    caption="Not in the paper: the authors' column has numbers for the closed-form ULD only.",
)


def main(argv: list[str] | None = None) -> int:
    from uld.tables import table_script  # building launches the pipeline; reading TABLE does not need it

    return table_script(TABLE, argv, __doc__.splitlines()[0])


if __name__ == "__main__":
    sys.exit(main())
