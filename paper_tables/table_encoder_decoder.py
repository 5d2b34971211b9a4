"""Encoder-decoder student: mT0-base distilled from both teachers, lambda=0 vs ULD.

Usage (from the repository root)::

    python paper_tables/table_encoder_decoder.py                  # run what is missing, then write the table
    python paper_tables/table_encoder_decoder.py --report-only    # only read the store
    python paper_tables/table_encoder_decoder.py --preset small   # the CPU grid (small models, small slices)

The grid is declared by experiments/encoder_decoder/<preset>_*.yaml. Output: <store>/tables/table_encoder_decoder[_small].{md,tex}
and a .cells.csv naming the run behind every number. The table's grid and shape are declared here (TABLE). Same as `uld table encoder_decoder`.
"""

from __future__ import annotations

import sys

from uld.reporting import ComparisonTable

TABLE = ComparisonTable(
    name="encoder_decoder",
    title="Encoder-decoder student: mT0-base",
    grid=("encoder_decoder/{preset}_*.yaml",),
    metrics=("f1", "rougeL", "bertscore_f1"),
    layout="sorted",
    label_columns=("task", "teacher", "student", "setting"),
)


def main(argv: list[str] | None = None) -> int:
    from uld.tables import table_script  # building launches the pipeline; reading TABLE does not need it

    return table_script(TABLE, argv, __doc__.splitlines()[0])


if __name__ == "__main__":
    sys.exit(main())
