"""Reporting: tables, statistics, frames and figures, read from the results store (nothing is computed here).

Read in this order: :mod:`~uld.reporting.spec` (what a table declares, how its grid maps to run
folders), :mod:`~uld.reporting.compare` (paper tables: ours beside the authors'),
:mod:`~uld.reporting.seeds` (studies of our runs: seed statistics, paired intervals), :mod:`~uld.reporting.stats`,
:mod:`~uld.reporting.frames` (what the notebooks plot), :mod:`~uld.reporting.figures`. Building a table
end to end (running what is missing) is :mod:`uld.tables`, one layer up.
"""

from uld.reporting.arms import Arm, ArmRows, DiagnosticRows, RunRows, arms_figure
from uld.reporting.breakdown import Breakdown, BreakdownRows, contrast_breakdown
from uld.reporting.compare import KEY_FIELDS, Comparison, ComparisonTable, cell_key
from uld.reporting.figures import (FIGURES_ENV, RESULTS_ENV, authors_bars, figures_dir, paired_seeds_figure, results_dir,
                                  save_figure, settings_and_fractions_figure)
from uld.reporting.notebook import Notebook, panel_columns, setup as notebook_setup
from uld.reporting.frames import STUDENT_PARAMS, cost_frame, curves_frame, fraction_frame, paired, size_frame
from uld.reporting.seeds import Contrast, FractionRows, SeedResult, SeedTable, SettingRows, contrast_text, run_hardware
from uld.reporting.spec import EXPERIMENTS_DIR, PRESETS, GridPoint, TablePlan, TableSpec, load_spec, plan_table, table_names
from uld.reporting.stats import (
    BOOTSTRAP_RESAMPLES,
    BOOTSTRAP_SEED,
    BootstrapCI,
    SeedQuestionCI,
    SeedSummary,
    VarianceComponents,
    minimum_detectable_effect,
    paired_bootstrap_ci,
    paired_contrast,
    planned_half_width,
    question_scores,
    seed_paired_contrast,
    seed_question_ci,
    seed_summary,
    variance_components,
)
from uld.reporting.text import METRIC_LABELS, MISSING, SETTING_LABELS

__all__ = [
    "Arm", "ArmRows", "DiagnosticRows", "RunRows", "arms_figure", "Breakdown", "BreakdownRows", "contrast_breakdown",
    "TableSpec", "ComparisonTable", "SeedTable", "SettingRows", "Contrast", "FractionRows", "Comparison", "SeedResult",
    "GridPoint", "TablePlan", "plan_table", "load_spec", "table_names", "PRESETS", "EXPERIMENTS_DIR", "KEY_FIELDS", "cell_key",
    "SeedSummary", "seed_summary", "BootstrapCI", "paired_bootstrap_ci", "question_scores", "paired_contrast",
    "BOOTSTRAP_RESAMPLES", "BOOTSTRAP_SEED", "contrast_text", "run_hardware",
    "SeedQuestionCI", "VarianceComponents", "seed_question_ci", "seed_paired_contrast", "variance_components",
    "planned_half_width", "minimum_detectable_effect",
    "paired", "fraction_frame", "size_frame", "cost_frame", "curves_frame", "STUDENT_PARAMS",
    "results_dir", "figures_dir", "save_figure", "settings_and_fractions_figure", "paired_seeds_figure", "authors_bars", "RESULTS_ENV", "FIGURES_ENV",
    "METRIC_LABELS", "SETTING_LABELS", "MISSING", "Notebook", "notebook_setup", "panel_columns",
]
