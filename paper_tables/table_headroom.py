"""When does ULD help? Teacher headroom, teacher confidence, controls and dose, on real small models.

Usage (from the repository root, offline)::

    export ULD_MODELS_DIR=~/.cache/small-models ULD_DATA_DIR=../shared/data
    python paper_tables/table_headroom.py                  # run what is missing (resumable), diagnose, then the table
    python paper_tables/table_headroom.py --report-only    # only read the store

The grid is declared by experiments/headroom/headroom_*.yaml (and the original teacher's few-shot run of
experiments/micro/micro_teacher.yaml). Each arm's ULD runs are compared with the λ=0 runs of the same
teacher (paired bootstrap over the 500 dev questions, and the seeds × questions interval with runs paired
by seed); the teacher's margin over the λ=0 student and the
top-1 probability of its cached signal say how much a student could learn from its distributions.
Output: <store>/tables/table_headroom.{md,tex,cells.csv} and <store>/figures/table_headroom.{png,pdf}.
Same as `uld table headroom`.
"""

from __future__ import annotations

import sys

from uld.reporting import Arm, ArmRows, DiagnosticRows, SeedTable, SettingRows, arms_figure

BASE, ORIGINAL = "headroom_2_baseline", "micro_teacher"
ARMS = (
    Arm("original teacher", uld=BASE, lambda0=BASE, teacher=ORIGINAL),
    Arm("strong teacher (fine-tuned)", uld="headroom_1_strong", lambda0="headroom_1_strong",
        teacher="headroom_1_strong_teacher_eval"),
    Arm("teacher EOS not paired", uld="headroom_3_control_eos", lambda0=BASE, teacher=ORIGINAL),
    Arm("near-exact loss (k=16,384)", uld="headroom_3_control_exact", lambda0=BASE, teacher=ORIGINAL),
    Arm("λ=0.1", uld="headroom_4_dose", lambda0=BASE, teacher=ORIGINAL, where=(("lam", 0.1),)),
    Arm("λ=0.5", uld="headroom_4_dose", lambda0=BASE, teacher=ORIGINAL, where=(("lam", 0.5),)),
    Arm("per-token reduction", uld="headroom_4_dose_token", lambda0=BASE, teacher=ORIGINAL),
    Arm("signal at T=0.5", uld="headroom_5_sharp_T0.5", lambda0=BASE, teacher=ORIGINAL),
    Arm("signal at T=0.25", uld="headroom_5_sharp_T0.25", lambda0=BASE, teacher=ORIGINAL),
    Arm("6 epochs (pilot, 1 seed)", uld="headroom_6_long_pilot", lambda0="headroom_6_long_pilot", teacher=ORIGINAL),
)

TABLE = SeedTable(
    name="headroom",
    title="When does ULD help? Gemma-3-270M → SmolLM2-135M-Instruct on SQuAD, by arm",
    grid=("micro/micro_teacher.yaml", "headroom/headroom_*.yaml"),
    metrics=("f1", "em", "rougeL"),
    caption="Students trained in bf16 (evaluation in fp32, greedy); λ=1.5 with the per-sample reduction unless the arm says otherwise.",
    panels=(
        SettingRows(settings=("sft-gold",)),  # the fine-tuned teacher, scored with the zero-shot student prompt
        ArmRows(arms=ARMS),
        DiagnosticRows(arms=ARMS),
    ),
    figure=arms_figure,
    label="headroom",
    diagnose=True,
)


def main(argv: list[str] | None = None) -> int:
    from uld.tables import table_script  # building launches the pipeline; reading TABLE does not need it

    return table_script(TABLE, argv, __doc__.splitlines()[0])


if __name__ == "__main__":
    sys.exit(main())
