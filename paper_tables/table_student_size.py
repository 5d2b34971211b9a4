"""Student size: Pythia 160m / 410m / 1b distilled from Llama-2-7b-chat, few-shot vs lambda=0 vs ULD.

Usage (from the repository root)::

    python paper_tables/table_student_size.py                  # run what is missing, then write the table
    python paper_tables/table_student_size.py --report-only    # only read the store
    python paper_tables/table_student_size.py --preset small   # the CPU grid (small models, small slices)

The grid is declared by experiments/student_size/<preset>_*.yaml. Output: <store>/tables/table_student_size[_small].{md,tex}
and a .cells.csv naming the run behind every number. The table's grid and shape are declared here (TABLE). Same as `uld table student_size`.
"""

from __future__ import annotations

import sys

from uld.reporting import ComparisonTable

TABLE = ComparisonTable(
    name="student_size",
    title="Student size: Pythia 160m / 410m / 1b distilled from Llama-2-7b-chat",
    grid=("student_size/{preset}_*.yaml",),
    metrics=("f1", "rougeL", "bertscore_f1"),
    layout="blocks",
    label_columns=("task", "teacher", "student", "setting"),
)


def main(argv: list[str] | None = None) -> int:
    from uld.tables import table_script  # building launches the pipeline; reading TABLE does not need it

    return table_script(TABLE, argv, __doc__.splitlines()[0])


if __name__ == "__main__":
    sys.exit(main())
