"""Micro-replication: Gemma-3-270M -> SmolLM2-135M-Instruct on 200 SQuAD items, 3 seeds.

Usage (from the repository root, offline)::

    export ULD_MODELS_DIR=~/.cache/small-models ULD_DATA_DIR=../shared/data
    python paper_tables/table_micro.py                  # run what is missing (~8 h on a 2-core CPU, ~11 min on an H100), then the table
    python paper_tables/table_micro.py --report-only    # only read the store

The grid is declared by experiments/micro/micro_*.yaml (one grid for every preset). Output:
<store>/tables/table_micro.{md,tex} (mean ± std over seeds, paired bootstrap interval of ULD − λ=0),
table_micro.cells.csv naming the runs behind every number, and <store>/figures/table_micro.{png,pdf}.
The table's grid and shape are declared here (TABLE). Same as `uld table micro`.
"""

from __future__ import annotations

import sys

from uld.reporting import Contrast, FractionRows, SeedTable, SettingRows, settings_and_fractions_figure

TABLE = SeedTable(
    name="micro",
    title="Micro-replication: Gemma-3-270M → SmolLM2-135M-Instruct on SQuAD",
    grid=("micro/micro_*.yaml",),  # one grid for every preset
    metrics=("f1", "em", "rougeL"),
    caption="Real pretrained models with different tokenizers; not comparable to the paper's 7B-teacher numbers.",
    panels=(
        SettingRows(settings=("teacher", "student-few-shot", "sft-gold", "lambda0", "uld")),
        Contrast(a="uld", b="lambda0"),
        FractionRows(a="uld", b="lambda0"),
    ),
    figure=settings_and_fractions_figure,
    label="micro",
)


def main(argv: list[str] | None = None) -> int:
    from uld.tables import table_script  # building launches the pipeline; reading TABLE does not need it

    return table_script(TABLE, argv, __doc__.splitlines()[0])


if __name__ == "__main__":
    sys.exit(main())
