"""Micro-replication: Gemma-3-270M -> SmolLM2-135M-Instruct on 200 SQuAD items, 3 seeds.

Usage (from the repository root, offline)::

    export ULD_MODELS_DIR=~/.cache/small-models ULD_DATA_DIR=../shared/data
    python paper_tables/table_micro.py                  # run what is missing (~8 h on a 2-core CPU, ~11 min on an H100), then the table
    python paper_tables/table_micro.py --report-only    # only read the store

The grid is declared by experiments/micro/micro_*.yaml (one grid for every preset). Output:
<store>/tables/table_micro.{md,tex} (mean ± std over seeds, paired bootstrap interval of ULD − λ=0),
table_micro.cells.csv naming the runs behind every number, and <store>/figures/table_micro.{png,pdf}.
Same as `uld table micro`.
"""

from __future__ import annotations

import sys

from uld import reporting

TABLE = "micro"


def main(argv: list[str] | None = None) -> int:
    return reporting.table_script(TABLE, argv, __doc__.splitlines()[0])


if __name__ == "__main__":
    sys.exit(main())
