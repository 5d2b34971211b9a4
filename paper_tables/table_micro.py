"""Micro-replication: Gemma-3-270M -> SmolLM2-135M-Instruct on 200 SQuAD items, 3 seeds, CPU.

Usage (from the repository root, offline)::

    export ULD_MODELS_DIR=~/.cache/small-models ULD_DATA_DIR=../shared/data
    python paper_tables/table_micro.py                  # run what is missing (several CPU hours), then the table
    python paper_tables/table_micro.py --report-only    # only read the store

The grid is declared by experiments/micro/micro_*.yaml (one grid for every preset). Output:
<store>/tables/table_micro.{md,tex} (mean ± std over seeds, paired bootstrap interval of ULD − λ=0)
and table_micro.cells.csv naming the runs behind every number. Same as `uld table micro`.
"""

from __future__ import annotations

import sys

from uld import reporting

TABLE = "micro"


def main(argv: list[str] | None = None) -> int:
    return reporting.table_script(TABLE, argv, __doc__.splitlines()[0])


if __name__ == "__main__":
    sys.exit(main())
