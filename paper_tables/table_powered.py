"""A powered test of ULD against λ=0: strong teacher, 5 paired seeds, 3,000 sampled SQuAD dev questions.

Usage (from the repository root, offline)::

    export ULD_MODELS_DIR=~/.cache/small-models ULD_DATA_DIR=../shared/data
    python paper_tables/table_powered.py                  # run what is missing (resumable), diagnose, then the table
    python paper_tables/table_powered.py --report-only    # only read the store

Pre-registered in docs/studies/powered_plan.md (design, primary outcome, analysis, minimum detectable
effect); the grid is declared by experiments/powered/powered_*.yaml. The primary outcome is the ULD − λ=0
line: F1 on the same 3,000 questions, with the seeds × questions interval beside the question-only one.
Output: <store>/tables/table_powered.{md,tex,cells.csv} and <store>/figures/table_powered.{png,pdf}.
Same as `uld table powered`.
"""

from __future__ import annotations

import sys
from functools import partial

from uld.reporting import (Arm, ArmRows, BreakdownRows, Contrast, DiagnosticRows, RunRows, SeedTable, SettingRows,
                           paired_seeds_figure)

MAIN = "powered_2_main"
PAPER_GAIN = 2.3  # the paper's ULD − λ=0 on extractive QA (F1): the claim the plan tests, drawn in the figure
ARMS = (Arm("strong teacher (fine-tuned), 10 epochs", uld=MAIN, lambda0=MAIN, teacher="powered_1_teacher_eval"),)

TABLE = SeedTable(
    name="powered",
    title="Powered test: Gemma-3-270M (fine-tuned) → SmolLM2-135M-Instruct on SQuAD, λ=0 against ULD",
    grid=("powered/powered_*.yaml",),
    metrics=("f1", "em", "rougeL"),
    caption=("Pre-registered in docs/studies/powered_plan.md. Students trained in bf16 for 10 epochs (best "
             "validation checkpoint), evaluated in fp32, greedy; λ=1.5, cached top-64 teacher signal."),
    panels=(
        SettingRows(settings=("sft-gold", "teacher", "lambda0", "uld")),
        Contrast(a="uld", b="lambda0"),
        ArmRows(arms=ARMS),
        DiagnosticRows(arms=ARMS),
        RunRows(settings=("lambda0", "uld")),  # each run's best validation step (the plan's check 2, for all)
        BreakdownRows(uld=MAIN, lambda0=MAIN),  # first word, length, question type (exploratory)
    ),
    figure=partial(paired_seeds_figure, claim=(PAPER_GAIN, f"paper: +{PAPER_GAIN}")),
    label="powered",
    diagnose=True,
)


def main(argv: list[str] | None = None) -> int:
    from uld.tables import table_script  # building launches the pipeline; reading TABLE does not need it

    return table_script(TABLE, argv, __doc__.splitlines()[0])


if __name__ == "__main__":
    sys.exit(main())
