"""Rehearsal of the paper grids: every cell, end to end, a few steps, on tiny models of the real architectures.

``uld rehearse`` runs every grid point of the five paper tables (main, student size, data fraction,
encoder-decoder, cost ablation) through the whole pipeline (teacher answers, cached signal, training,
evaluation) and renders each table from the result. Everything the paper grid decides is the paper's:
prompts, shots, titles, chat templates, context lengths, batch sizes, precision, learning rates,
the encoder-decoder path. Only the sizes shrink (:data:`OVERRIDES`: a few training items and test
questions, a few new tokens, two optimizer steps), and the models are tiny random ones of the paper's
architectures (Llama, Mistral, GPT-NeoX, OPT, Bloom, mT5, and a BERT for the embedding cost) with the
real tokenizers where ``../shared/tokenizers`` has them (:func:`uld.testing.build_paper_models`).

A cell passes when its run finished and its number is in its table. Numbers mean nothing: the
rehearsal checks that a paper-scale launch would run every cell, before GPU hours are spent on it.
"""

from __future__ import annotations

import csv
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

from uld.models import MODELS_DIR_ENV
from uld.reporting.spec import load_spec
from uld.tables import build_table
from uld.testing import build_paper_models

log = logging.getLogger(__name__)

__all__ = ["PAPER_TABLES", "OVERRIDES", "RehearsalReport", "rehearse"]

PAPER_TABLES = ("main", "student_size", "data_fraction", "encoder_decoder", "cost_ablation")
OVERRIDES = [
    "data.train_size=10", "data.test_size=3", "generation.max_new_tokens=4", "generation.top_k_signal=8",
    "generation.batch_size=4", "training.max_steps=2", "evaluation.max_new_tokens=4", "evaluation.batch_size=4",
]


@dataclass
class RehearsalReport:
    cells: dict[str, int] = field(default_factory=dict)  # table -> grid points
    missing: list[tuple[str, str, str]] = field(default_factory=list)  # (table, run id, why)

    @property
    def ok(self) -> bool:
        return not self.missing

    def format(self) -> str:
        total = sum(self.cells.values())
        lines = [f"rehearsal: {total - len(self.missing)} of {total} grid points reached their tables"]
        lines += [f"  {t}: {n} points" for t, n in self.cells.items()]
        lines += [f"  MISSING {t} {r}: {why}" for t, r, why in self.missing]
        return "\n".join(lines)


def _table_runs(csv_path: Path) -> set[str]:
    """Run ids that have a number in a written comparison table."""
    with csv_path.open() as fh:
        return {r for row in csv.DictReader(fh) if row.get("ours") for r in row["run_ids"].split()}


def rehearse(store: str | os.PathLike, *, tables: Sequence[str] = PAPER_TABLES, models_dir: Optional[str | os.PathLike] = None,
             data_dir: Optional[str | os.PathLike] = None) -> RehearsalReport:
    """Run and render every table of ``tables`` into the store ``store``; report the cells that did not make it."""
    store = Path(store)
    models = build_paper_models(Path(models_dir) if models_dir else store / "models")
    os.environ[MODELS_DIR_ENV] = str(models)
    overrides = list(OVERRIDES) + ([f"data.dir={data_dir}"] if data_dir else [])
    report = RehearsalReport()
    for name in tables:
        built = build_table(load_spec(name), preset="paper", store_root=store, overrides=overrides)
        report.cells[name] = len(built.plan.points)
        failed = dict(built.launch.failed) if built.launch else {}
        shown = _table_runs(built.paths["csv"])
        for point in built.plan.points:
            if point.run.id not in shown:
                report.missing.append((name, point.run.id, failed.get(point.run.id, "finished but not in the table")))
        log.info("%s: %d points, %d missing", name, len(built.plan.points), sum(1 for t, _, _ in report.missing if t == name))
    return report
