"""Table 1: five tasks x teachers Llama-2-7b-chat / Mistral-7B-Instruct x students OPT-350m / Pythia-410m / Bloomz-560m.

Usage (from the repository root)::

    python paper_tables/table_main.py                  # run what is missing, then write the table
    python paper_tables/table_main.py --report-only    # only read the store
    python paper_tables/table_main.py --preset small   # the CPU grid (small models, small slices)

The grid is declared by experiments/main/<preset>_*.yaml. Output: <store>/tables/table_main[_small].{md,tex}
and a .cells.csv naming the run behind every number. The table's grid and shape are declared here (TABLE). Same as `uld table main`.
"""

from __future__ import annotations

import sys

from uld.reporting import ComparisonTable

TABLE = ComparisonTable(
    name="main",
    title="Main results: five tasks, two teachers, three decoder students",
    grid=("main/{preset}_*.yaml",),
    metrics=("f1", "rougeL", "bertscore_f1"),
    layout="blocks",
    label_columns=("task", "teacher", "student", "setting"),
    caption="Teacher few-shot, student few-shot, λ=0 (cross-entropy on the teacher's answers) and ULD (λ=1.5).",
)


def main(argv: list[str] | None = None) -> int:
    from uld.tables import table_script  # building launches the pipeline; reading TABLE does not need it

    return table_script(TABLE, argv, __doc__.splitlines()[0])


if __name__ == "__main__":
    sys.exit(main())
