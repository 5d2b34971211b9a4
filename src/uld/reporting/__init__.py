"""Paper tables and the frames behind the analysis plots.

A table is declared by a :class:`TableSpec`: the experiment YAMLs of its study
(``experiments/<study>/<preset>_*.yaml``, grids expanded with :func:`uld.config.expand_grid`), which
metrics it shows and how its rows are laid out. Building a table is a short pipeline::

    plan = plan_table("main", preset="paper", store_root="results")   # grid point -> run folder
    launch_missing(plan)                                              # uld.pipeline.run_experiment
    table = collect_table(plan)                                       # authors | ours | diff per cell
    write_table(table, "results/tables")                              # markdown, LaTeX, cells CSV

:func:`build_table` does all four (``uld table NAME`` and the ``paper_tables/`` scripts call it or its
parts). A grid point's folder is ``<store>/runs/<run_id(point)>``, so every number in a table leads to
the run that produced it; ``<table>.cells.csv`` lists the run ids of every cell.

Cells are keyed by what was measured (task, teacher, student, setting, training fraction, OT cost),
the same key the authors' rows get from :func:`uld.results.load_reference`, so "authors" and "ours"
meet in one row. A cell with no number reads "–".
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Optional, Sequence

from uld.config import ExperimentConfig, expand_grid, load_config
from uld.errors import ConfigError
from uld.io import atomic_write_text, repo_root
from uld.reporting.figures import FIGURES_ENV, RESULTS_ENV, figures_dir, results_dir, save_figure
from uld.reference import load_reference
from uld.results import SETTINGS, describe_config, load_results
from uld.store import RunFolder, find_run, store_info

log = logging.getLogger(__name__)

__all__ = [
    "TableSpec",
    "GridPoint",
    "TablePlan",
    "Table",
    "BuiltTable",
    "TABLES",
    "table_names",
    "get_table",
    "experiment_files",
    "plan_table",
    "launch_missing",
    "collect_table",
    "render_markdown",
    "render_latex",
    "write_table",
    "build_table",
    "table_arg_parser",
    "parse_table_args",
    "LaunchReport",
    "cell_key",
    "paired",
    "fraction_frame",
    "size_frame",
    "cost_frame",
    "curves_frame",
    "results_dir",
    "figures_dir",
    "save_figure",
    "MISSING",
    "METRIC_LABELS",
    "STUDENT_PARAMS",
    "SeedSummary",
    "seed_summary",
    "BootstrapCI",
    "paired_bootstrap_ci",
    "question_scores",
    "paired_contrast",
    "MicroTable",
    "collect_micro",
    "render_micro_markdown",
    "render_micro_latex",
    "write_micro",
    "micro_figure",
]

EXPERIMENTS_DIR = repo_root() / "experiments"
MISSING = "–"  # en dash: a cell with no number
PRESETS = ("paper", "small")

METRIC_LABELS = {
    "f1": "F1",
    "em": "EM",
    "rouge1": "ROUGE-1",
    "rouge2": "ROUGE-2",
    "rougeL": "ROUGE-L",
    "rougeLsum": "ROUGE-Lsum",
    "bertscore_f1": "BERTScore",
    "bertscore_precision": "BERTScore P",
    "bertscore_recall": "BERTScore R",
}
SETTING_LABELS = {
    "teacher": "teacher (few-shot)",
    "student-few-shot": "student few-shot",
    "student-zero-shot": "student zero-shot",
    "lambda0": "λ=0",
    "uld": "ULD",
    "uld-ot": "ULD-OT",
    "sft-gold": "SFT (gold)",
    "kd-kl": "KD-KL",
}
_SETTING_ORDER = ["teacher", "student-few-shot", "student-zero-shot", "sft-gold", "lambda0", "kd-kl", "uld", "uld-ot"]
_TASK_ORDER = ["squad", "qed", "fairytaleqa", "pubmedqa", "dialogsum"]
_COST_ORDER = [None, "uniform", "levenshtein", "embedding"]

# Parameter counts (approximate, from the model cards) for the student-size plots.
STUDENT_PARAMS = {
    "pythia-160m": 160e6,
    "pythia-410m": 410e6,
    "pythia-1b": 1.0e9,
    "opt-350m": 350e6,
    "bloomz-560m": 560e6,
    "mt0-base": 580e6,
    "smollm2-135m-instruct": 135e6,
    "gemma-3-270m": 270e6,
    "qwen2.5-0.5b-instruct": 494e6,
}

KEY_FIELDS = ("task", "teacher", "student", "setting", "train_fraction", "ot_cost")


def _none(v: Any) -> Any:
    """NaN / None / "" -> None (pandas turns missing strings into NaN)."""
    if v is None:
        return None
    if isinstance(v, float) and math.isnan(v):
        return None
    if v == "":
        return None
    return v


def cell_key(row: Any) -> tuple:
    """The identity of a table cell: ``(task, teacher, student, setting, train_fraction, ot_cost)``.

    ``row`` is a mapping (a DataFrame row, or :func:`uld.results.describe_config`'s output).
    """
    frac = _none(row["train_fraction"])
    return (
        row["task"],
        _none(row["teacher"]),
        _none(row["student"]),
        row["setting"],
        round(float(frac if frac is not None else 1.0), 4),
        _none(row["ot_cost"]),
    )


# --------------------------------------------------------------------------------------------------
# Declarations
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TableSpec:
    """One paper table: where its grid is declared and how it is shown."""

    name: str  # registry key and file stem: results/tables/table_<name>[_<preset>].md
    title: str
    study: str  # experiments/<study>/<preset>_*.yaml declare the grid
    metrics: tuple[str, ...]
    layout: str  # "blocks": teacher block with few-shot / λ=0 / ULD rows; "sorted": one row per key
    label_columns: tuple[str, ...]  # shown before the metric columns
    caption: str = ""
    # a study with a single grid: this glob under experiments/<study>/ declares it for every preset
    grid_files: Optional[str] = None


TABLES: dict[str, TableSpec] = {
    spec.name: spec
    for spec in (
        TableSpec(
            name="main",
            title="Main results: five tasks, two teachers, three decoder students",
            study="main",
            metrics=("f1", "rougeL", "bertscore_f1"),
            layout="blocks",
            label_columns=("task", "teacher", "student", "setting"),
            caption="Teacher few-shot, student few-shot, λ=0 (cross-entropy on the teacher's answers) and ULD (λ=1.5).",
        ),
        TableSpec(
            name="student_size",
            title="Student size: Pythia 160m / 410m / 1b distilled from Llama-2-7b-chat",
            study="student_size",
            metrics=("f1", "rougeL", "bertscore_f1"),
            layout="blocks",
            label_columns=("task", "teacher", "student", "setting"),
        ),
        TableSpec(
            name="data_fraction",
            title="Training-set fraction: Pythia-410m distilled from Llama-2-7b-chat",
            study="data_fraction",
            metrics=("f1", "rougeL", "bertscore_f1"),
            layout="sorted",
            label_columns=("task", "teacher", "student", "setting", "train_fraction"),
            caption="The first 25/50/75/100% of the training part; validation hold-out unchanged.",
        ),
        TableSpec(
            name="encoder_decoder",
            title="Encoder-decoder student: mT0-base",
            study="encoder_decoder",
            metrics=("f1", "rougeL", "bertscore_f1"),
            layout="sorted",
            label_columns=("task", "teacher", "student", "setting"),
        ),
        TableSpec(
            name="cost_ablation",
            title="Cost ablation: closed-form ULD vs optimal transport with uniform / Levenshtein / embedding cost",
            study="cost_ablation",
            metrics=("f1", "rougeL", "bertscore_f1"),
            layout="sorted",
            label_columns=("task", "teacher", "student", "setting", "ot_cost"),
            caption="Not in the paper: the authors' column has numbers for the closed-form ULD only.",
        ),
        TableSpec(
            name="micro",
            title="Micro-replication: Gemma-3-270M → SmolLM2-135M-Instruct on SQuAD",
            study="micro",
            metrics=("f1", "em", "rougeL"),
            layout="micro",  # built by collect_micro / write_micro (seed statistics, paired bootstrap)
            label_columns=("setting",),
            caption="Real pretrained models with different tokenizers; not comparable to the paper's 7B-teacher numbers.",
            grid_files="micro_*.yaml",
        ),
    )
}


def table_names() -> list[str]:
    return list(TABLES)


def get_table(name: str | TableSpec) -> TableSpec:
    if isinstance(name, TableSpec):
        return name
    key = name.removeprefix("table_")
    if key not in TABLES:
        raise ConfigError(f"unknown table {name!r}; known tables: {', '.join(TABLES)}")
    return TABLES[key]


def experiment_files(spec: TableSpec | str, preset: str = "paper", experiments_dir: str | os.PathLike | None = None) -> list[Path]:
    """The YAMLs declaring a table's grid: ``experiments/<study>/<preset>_*.yaml`` (sorted), or the
    spec's ``grid_files`` glob for a study with one grid."""
    spec = get_table(spec)
    if preset not in PRESETS:
        raise ValueError(f"preset must be one of {PRESETS}, got {preset!r}")
    folder = Path(experiments_dir or EXPERIMENTS_DIR) / spec.study
    files = sorted(folder.glob(spec.grid_files or f"{preset}_*.yaml"))
    if not files:
        raise FileNotFoundError(f"no {preset}_*.yaml in {folder}: table {spec.name!r} has no {preset} grid")
    return files


# --------------------------------------------------------------------------------------------------
# Plan: grid point -> run folder
# --------------------------------------------------------------------------------------------------


@dataclass
class GridPoint:
    """One run a table needs: its config, the YAML declaring it, its folder and its cell key."""

    cfg: ExperimentConfig
    source: Path
    run: RunFolder
    info: dict[str, Any]

    @property
    def key(self) -> tuple:
        return cell_key(self.info)

    @property
    def complete(self) -> bool:
        return self.run.is_complete


@dataclass
class TablePlan:
    spec: TableSpec
    preset: str
    store_root: Path
    points: list[GridPoint]

    def missing(self) -> list[GridPoint]:
        return [p for p in self.points if not p.complete]

    def summary(self) -> str:
        done = sum(p.complete for p in self.points)
        return (
            f"table {self.spec.name} ({self.preset}): {len(self.points)} grid points, "
            f"{done} with results, {len(self.points) - done} missing (store {self.store_root})"
        )


def plan_table(
    name: str | TableSpec,
    *,
    preset: str = "paper",
    store_root: str | os.PathLike = "results",
    experiments_dir: str | os.PathLike | None = None,
) -> TablePlan:
    """Expand the table's YAMLs into grid points and locate each point's run folder in the store.

    Points declared by several YAMLs (or studies) with the same config share one run id and are
    listed once.
    """
    spec = get_table(name)
    store_root = Path(store_root)
    points: list[GridPoint] = []
    seen: set[str] = set()
    for path in experiment_files(spec, preset, experiments_dir):
        cfg = load_config(path)
        for point in expand_grid(cfg):
            point.output_dir = str(store_root)
            run = find_run(point, store_root)
            if run.id in seen:
                continue
            seen.add(run.id)
            points.append(GridPoint(cfg=point, source=path, run=run, info=describe_config(point)))
    return TablePlan(spec=spec, preset=preset, store_root=store_root, points=points)


@dataclass
class LaunchReport:
    launched: list[str] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)  # (run id, error)


def launch_missing(
    plan: TablePlan,
    *,
    force: bool = False,
    runner: Optional[Callable[..., Any]] = None,
) -> LaunchReport:
    """Run every grid point without results (``force``: every point) through the pipeline.

    ``runner`` defaults to :func:`uld.pipeline.run_experiment`, imported here so that reporting
    (``--report-only``) works without the training stack. A failing point is recorded and the
    others still run; the table then shows "–" for it.
    """
    if runner is None:
        from uld.pipeline import run_experiment  # temporary: moves to the launch layer

        # the table is the report: per-experiment study reports would overwrite each other when several
        # grid files of a table share one experiment name
        def runner(cfg: Any, force: bool = False) -> Any:
            return run_experiment(cfg, force=force, report=False)
    report = LaunchReport()
    todo = plan.points if force else plan.missing()
    for i, point in enumerate(todo, 1):
        log.info("[%d/%d] %s (%s)", i, len(todo), point.run.id, point.source.name)
        try:
            folders = runner(point.cfg, force=force) or []
        except Exception as exc:  # keep going: one broken point should not cost the other runs
            log.exception("run %s failed", point.run.id)
            report.failed.append((point.run.id, f"{type(exc).__name__}: {exc}"))
            continue
        produced = {Path(f.path).name for f in folders}
        if produced and point.run.id not in produced:
            log.warning("pipeline wrote %s, the table expects %s: run ids disagree", sorted(produced), point.run.id)
        if point.run.is_complete:
            report.launched.append(point.run.id)
        else:
            report.failed.append((point.run.id, f"no scores.json in {point.run.path} after the run"))
    return report


# --------------------------------------------------------------------------------------------------
# Table contents
# --------------------------------------------------------------------------------------------------


@dataclass
class Table:
    """Rows of a built table: ``cells`` is long (one row per table row x metric), ``rows`` the layout."""

    spec: TableSpec
    preset: str
    cells: Any  # DataFrame: KEY_FIELDS, labels, metric, authors, ours, diff, ours_std, n_runs, run_ids, authors_run_id, flag
    rows: list[tuple[tuple, dict[str, Any]]]  # (cell key, display labels) in display order
    notes: list[str] = field(default_factory=list)
    n_points: int = 0
    n_complete: int = 0

    def value(self, key: tuple, metric: str, column: str = "ours") -> Optional[float]:
        """One number of the table (``column`` in authors / ours / diff); None for a "–" cell."""
        for rec in self.cells.to_dict("records"):
            if rec["key"] == key and rec["metric"] == metric:
                return _none(rec[column])
        raise KeyError(f"no row {key} / {metric} in table {self.spec.name}")


def _order(values: Iterable[Any], reference: Sequence[Any]) -> list[Any]:
    uniq = list(dict.fromkeys(values))
    return sorted(uniq, key=lambda v: (reference.index(v) if v in reference else len(reference), str(v)))


def _layout(spec: TableSpec, keys: list[tuple]) -> list[tuple[tuple, dict[str, Any]]]:
    """Display order and labels for the plan's cell keys.

    "blocks" (Table 1 style): per task and teacher, the teacher row, then per student its few-shot,
    λ=0 and ULD rows. A student few-shot cell does not depend on the teacher, so it appears in every
    teacher block, as in the paper.
    """
    present = set(keys)
    tasks = _order((k[0] for k in keys), _TASK_ORDER)
    out: list[tuple[tuple, dict[str, Any]]] = []

    def labels(k: tuple, teacher: Any = None) -> dict[str, Any]:
        task, t, s, setting, frac, cost = k
        return {
            "task": task,
            "teacher": teacher if teacher is not None else t,
            "student": s,
            "setting": SETTING_LABELS.get(setting, setting),
            "train_fraction": frac,
            "ot_cost": cost if cost is not None else ("closed form" if setting == "uld" else None),
        }

    if spec.layout == "blocks":
        teachers = [t for t in dict.fromkeys(k[1] for k in keys) if t is not None]
        students = [s for s in dict.fromkeys(k[2] for k in keys) if s is not None]
        placed = set()
        for task in tasks:
            for teacher in teachers or [None]:
                tk = (task, teacher, None, "teacher", 1.0, None)
                if tk in present:
                    out.append((tk, labels(tk)))
                    placed.add(tk)
                for student in students:
                    for k in sorted(
                        (k for k in present if k[0] == task and k[2] == student and (k[1] == teacher or k[1] is None)),
                        key=lambda k: (_SETTING_ORDER.index(k[3]) if k[3] in _SETTING_ORDER else 99, k[4], str(k[5])),
                    ):
                        out.append((k, labels(k, teacher)))
                        placed.add(k)
        # anything the block structure did not place (e.g. a student-only table) goes at the end
        for k in keys:
            if k not in placed:
                out.append((k, labels(k)))
                placed.add(k)
        return out

    def sort_key(k: tuple) -> tuple:
        task, t, s, setting, frac, cost = k
        return (
            tasks.index(task),
            str(t),
            str(s),
            _SETTING_ORDER.index(setting) if setting in _SETTING_ORDER else 99,
            frac,
            _COST_ORDER.index(cost) if cost in _COST_ORDER else 99,
        )

    return [(k, labels(k)) for k in sorted(set(keys), key=sort_key)]


def collect_table(plan: TablePlan, *, reference: str | os.PathLike | None = None) -> Table:
    """Authors' numbers and ours for every cell of the plan (ours: only the plan's own runs).

    Several runs in one cell (e.g. seeds) are averaged; ``n_runs`` and ``ours_std`` say so.
    """
    import pandas as pd

    spec = plan.spec
    ours = load_results(plan.store_root, source="ours")
    wanted = {p.run.id: p for p in plan.points}
    ours = ours[ours["run_id"].isin(list(wanted)) & ours["metric"].isin(spec.metrics)]
    by_cell: dict[tuple, dict[str, list[tuple[str, float]]]] = {}
    for rec in ours.itertuples(index=False):
        key = wanted[rec.run_id].key  # the declared point decides the cell, not a re-derivation
        by_cell.setdefault(key, {}).setdefault(rec.metric, []).append((rec.run_id, rec.value))

    authors = load_reference(reference)
    authors = authors[authors["metric"].isin(spec.metrics)]
    auth_cell: dict[tuple, dict[str, Any]] = {}
    for _, rec in authors.iterrows():
        auth_cell.setdefault(cell_key(rec), {})[rec["metric"]] = rec

    layout = _layout(spec, [p.key for p in plan.points])
    records = []
    notes: dict[str, int] = {}
    for key, labels in layout:
        for metric in spec.metrics:
            runs = by_cell.get(key, {}).get(metric, [])
            vals = [v for _, v in runs]
            mine = sum(vals) / len(vals) if vals else None
            std = (sum((v - mine) ** 2 for v in vals) / (len(vals) - 1)) ** 0.5 if len(vals) > 1 else None
            a = auth_cell.get(key, {}).get(metric)
            theirs = float(a["value"]) if a is not None else None
            flag = _none(a["flag"]) if a is not None else None
            if flag:
                notes.setdefault(flag, len(notes) + 1)
            records.append(
                {
                    "key": key,
                    **dict(zip(KEY_FIELDS, key)),
                    **{f"label_{k}": v for k, v in labels.items()},
                    "metric": metric,
                    "authors": theirs,
                    "ours": mine,
                    "diff": (mine - theirs) if mine is not None and theirs is not None else None,
                    "ours_std": std,
                    "n_runs": len(vals),
                    "run_ids": " ".join(r for r, _ in runs),
                    "authors_run_id": a["run_id"] if a is not None else None,
                    "flag": flag,
                    "flag_mark": notes.get(flag) if flag else None,
                }
            )
    cells = pd.DataFrame.from_records(records)
    return Table(
        spec=spec,
        preset=plan.preset,
        cells=cells,
        rows=layout,
        notes=list(notes),
        n_points=len(plan.points),
        n_complete=sum(p.complete for p in plan.points),
    )


# --------------------------------------------------------------------------------------------------
# Rendering
# --------------------------------------------------------------------------------------------------

_MARKS = ["†", "‡", "§", "¶"]
_LABEL_HEADERS = {
    "task": "Task",
    "teacher": "Teacher",
    "student": "Student",
    "setting": "Setting",
    "train_fraction": "Fraction",
    "ot_cost": "Cost",
}


def _fmt(v: Any, *, signed: bool = False) -> str:
    v = _none(v)
    if v is None:
        return MISSING
    return f"{v:+.2f}" if signed else f"{v:.2f}"


def _label(col: str, v: Any) -> str:
    v = _none(v)
    if v is None:
        return MISSING
    if col == "train_fraction":
        return f"{100 * float(v):.0f}%"
    return str(v)


def _grid_rows(table: Table) -> tuple[list[str], list[list[str]]]:
    """Header and body cells (plain text) shared by the markdown and LaTeX renderers."""
    spec = table.spec
    header = [_LABEL_HEADERS[c] for c in spec.label_columns]
    for m in spec.metrics:
        name = METRIC_LABELS.get(m, m)
        header += [f"{name} authors", f"{name} ours", f"{name} Δ"]
    cells = {(rec["key"], rec["metric"]): rec for rec in table.cells.to_dict("records")}
    body = []
    previous: list[str] = []
    for key, labels in table.rows:
        row = [_label(c, labels.get(c)) for c in spec.label_columns]
        shown = list(row)
        # blank a leading label repeated from the row above: the blocks stay readable
        for i, c in enumerate(spec.label_columns[:-1]):
            if previous[: i + 1] == row[: i + 1]:
                shown[i] = ""
            else:
                break
        previous = row
        for m in spec.metrics:
            rec = cells[(key, m)]
            authors = _fmt(rec["authors"])
            if _none(rec["flag_mark"]) is not None and authors != MISSING:
                authors += _MARKS[(int(rec["flag_mark"]) - 1) % len(_MARKS)]
            shown += [authors, _fmt(rec["ours"]), _fmt(rec["diff"], signed=True)]
        body.append(shown)
    return header, body


def _preamble(table: Table, store_root: Path | None) -> list[str]:
    lines = []
    info = store_info(store_root) if store_root is not None else {}
    if info.get("fixture"):
        lines.append(f"**FIXTURE DATA**: {info.get('note', 'fake numbers for tests; not results')}.")
    if table.preset != "paper":
        lines.append(
            f"Preset `{table.preset}` runs small stand-in models on small slices: it checks the pipeline end to end "
            "and is not comparable to the authors' numbers (their column stays empty)."
        )
    lines.append(
        f"Preset `{table.preset}`; {table.n_complete} of {table.n_points} grid points have results. "
        f"Δ = ours − authors; {MISSING} = no number. Scores ×100."
    )
    if table.spec.caption:
        lines.append(table.spec.caption)
    return lines


def _footnotes(table: Table) -> list[str]:
    return [f"{_MARKS[i % len(_MARKS)]} {note}" for i, note in enumerate(table.notes)]


def render_markdown(table: Table, *, store_root: Path | None = None) -> str:
    header, body = _grid_rows(table)
    lines = [f"# {table.spec.title}", ""]
    lines += [*_preamble(table, store_root), ""]
    lines.append("| " + " | ".join(header) + " |")
    n_labels = len(table.spec.label_columns)
    lines.append("|" + "|".join([":--"] * n_labels + ["--:"] * (len(header) - n_labels)) + "|")
    for row in body:
        lines.append("| " + " | ".join(row) + " |")
    notes = _footnotes(table)
    if notes:
        lines += [""] + notes
    stem = _stem(table)
    lines += ["", f"Run ids of every cell: `{stem}.cells.csv`."]
    return "\n".join(lines) + "\n"


_LATEX_ESCAPES = {
    "&": r"\&",
    "%": r"\%",
    "_": r"\_",
    "#": r"\#",
    "{": r"\{",
    "}": r"\}",
    "$": r"\$",
    "λ": r"$\lambda$",
    "Δ": r"$\Delta$",
    "–": "--",
    "−": "-",
    "†": r"$^\dagger$",
    "‡": r"$^\ddagger$",
    "§": r"\S",
    "¶": r"\P",
}


def _tex(text: str) -> str:
    return "".join(_LATEX_ESCAPES.get(ch, ch) for ch in text)


def render_latex(table: Table) -> str:
    """A booktabs ``table*``: label columns, then authors / ours / Δ under each metric."""
    spec = table.spec
    _, body = _grid_rows(table)
    n_labels = len(spec.label_columns)
    colspec = "l" * n_labels + "rrr" * len(spec.metrics)
    top = [""] * n_labels
    cmid = []
    for i, m in enumerate(spec.metrics):
        top.append(rf"\multicolumn{{3}}{{c}}{{{_tex(METRIC_LABELS.get(m, m))}}}")
        start = n_labels + 3 * i + 1
        cmid.append(rf"\cmidrule(lr){{{start}-{start + 2}}}")
    second = [_tex(_LABEL_HEADERS[c]) for c in spec.label_columns] + ["authors", "ours", r"$\Delta$"] * len(spec.metrics)
    lines = [
        r"\begin{table*}[t]",
        r"\centering",
        r"\small",
        rf"\begin{{tabular}}{{{colspec}}}",
        r"\toprule",
        " & ".join(top) + r" \\",
        " ".join(cmid),
        " & ".join(second) + r" \\",
        r"\midrule",
    ]
    for row in body:
        lines.append(" & ".join(_tex(c) for c in row) + r" \\")
    lines.append(r"\bottomrule")
    lines.append(r"\end{tabular}")
    caption = f"{spec.title}. Preset {table.preset}; {table.n_complete}/{table.n_points} grid points with results. "
    caption += "Δ = ours − authors; – = no number."
    if spec.caption:
        caption += " " + spec.caption
    for note in _footnotes(table):
        caption += " " + note + "."
    lines.append(rf"\caption{{{_tex(caption)}}}")
    lines.append(rf"\label{{tab:{spec.name.replace('_', '-')}}}")
    lines.append(r"\end{table*}")
    return "\n".join(lines) + "\n"


def _stem(table: Table) -> str:
    return f"table_{table.spec.name}" + ("" if table.preset == "paper" else f"_{table.preset}")


def write_table(table: Table, out_dir: str | os.PathLike, *, store_root: Path | None = None) -> dict[str, Path]:
    """Write ``<stem>.md``, ``<stem>.tex`` and ``<stem>.cells.csv`` atomically; returns their paths."""
    out_dir = Path(out_dir)
    stem = _stem(table)
    csv_cols = [c for c in table.cells.columns if c not in ("key",) and not c.startswith("label_")]
    paths = {
        "md": atomic_write_text(out_dir / f"{stem}.md", render_markdown(table, store_root=store_root)),
        "tex": atomic_write_text(out_dir / f"{stem}.tex", render_latex(table)),
        "csv": atomic_write_text(out_dir / f"{stem}.cells.csv", table.cells[csv_cols].to_csv(index=False)),
    }
    return paths


@dataclass
class BuiltTable:
    """What :func:`build_table` did: the table, where it was written, and what ran."""

    table: "Table | MicroTable"
    paths: dict[str, Path]
    plan: TablePlan
    launch: Optional[LaunchReport] = None

    @property
    def ok(self) -> bool:
        return self.launch is None or not self.launch.failed

    def __iter__(self):
        """The written files (md, tex, csv), so ``for path in build_table(...)`` reads naturally."""
        return iter(self.paths.values())


def build_table(
    name: str,
    *,
    report_only: bool = False,
    preset: str = "paper",
    store_root: str | os.PathLike = "results",
    force: bool = False,
    out_dir: str | os.PathLike | None = None,
    reference: str | os.PathLike | None = None,
    runner: Optional[Callable[..., Any]] = None,
) -> BuiltTable:
    """Plan the table's grid, run what is missing (unless ``report_only``), write md / tex / csv.

    ``force`` re-runs every grid point (the pipeline's ``force=True``); it contradicts
    ``report_only``. Tables go to ``out_dir`` (default ``<store_root>/tables``).
    """
    if report_only and force:
        raise ValueError("--force re-runs the grid; it cannot be combined with --report-only")
    plan = plan_table(name, preset=preset, store_root=store_root)
    launch = None if report_only else launch_missing(plan, force=force, runner=runner)
    out = Path(out_dir) if out_dir is not None else Path(store_root) / "tables"
    if plan.spec.layout == "micro":  # own statistics, no authors' column
        table = collect_micro(plan)
        paths = write_micro(table, out, store_root=Path(store_root))
        paths.update(_write_micro_figure(table, figures_dir(store_root)))
        return BuiltTable(table=table, paths=paths, plan=plan, launch=launch)
    table = collect_table(plan, reference=reference)
    paths = write_table(table, out, store_root=Path(store_root))
    return BuiltTable(table=table, paths=paths, plan=plan, launch=launch)


def table_arg_parser(name: str, description: str | None = None) -> argparse.ArgumentParser:
    """The command line every ``paper_tables/table_*.py`` script shares."""
    spec = get_table(name)
    p = argparse.ArgumentParser(prog=f"table_{spec.name}.py", description=description or spec.title)
    p.add_argument("--report-only", action="store_true", help="only read the store; run nothing")
    p.add_argument("--preset", choices=PRESETS, default="paper", help="paper grid, or the small CPU grid")
    p.add_argument("--store", default=os.environ.get(RESULTS_ENV, "results"), help="results store root (default: results)")
    p.add_argument("--force", action="store_true", help="re-run grid points that already have results")
    p.add_argument("--out", default=None, help="where tables go (default: <store>/tables)")
    return p


def parse_table_args(name: str, argv: Sequence[str] | None = None, description: str | None = None) -> argparse.Namespace:
    """Parse (and cross-check) a table script's command line."""
    parser = table_arg_parser(name, description)
    args = parser.parse_args(argv)
    if args.report_only and args.force:
        parser.error("--force re-runs grid points; it cannot be combined with --report-only")
    return args


def table_script(name: str, argv: Sequence[str] | None = None, description: str | None = None) -> int:
    """Body of every ``paper_tables/table_*.py`` (and ``uld table``): parse, build, report. Exit code."""
    args = parse_table_args(name, argv, description)
    built = build_table(
        name, report_only=args.report_only, preset=args.preset, store_root=args.store, force=args.force, out_dir=args.out
    )
    print(built.plan.summary())
    if built.launch is not None:
        print(f"launched {len(built.launch.launched)} runs; {len(built.launch.failed)} failed")
        for run_id, error in built.launch.failed:
            print(f"  FAILED {run_id}: {error}")
    for path in built.paths.values():
        print(f"wrote {path}")
    return 0 if built.ok else 1


# --------------------------------------------------------------------------------------------------
# Frames for the analysis notebooks (they only read the store)
# --------------------------------------------------------------------------------------------------


def _pair_label(df: Any) -> Any:
    return df["teacher"].fillna("–") + " → " + df["student"].fillna("–")


def paired(df: Any, metrics: Sequence[str] | None = None) -> Any:
    """Ours beside the authors' per cell: one row per cell key x metric with both numbers.

    ``df`` is ``load_results(..., source="both")``. Our runs in one cell are averaged. Columns:
    KEY_FIELDS, metric, ours, authors, diff, n_runs, flag.
    """
    import pandas as pd

    if metrics is not None:
        df = df[df["metric"].isin(metrics)]
    df = df.copy()
    df["key"] = [cell_key(r) for r in df.to_dict("records")]
    ours = df[df["source"] == "ours"].groupby(["key", "metric"]).agg(ours=("value", "mean"), n_runs=("value", "size"))
    authors = df[df["source"] == "authors"].groupby(["key", "metric"]).agg(authors=("value", "first"), flag=("flag", "first"))
    out = ours.join(authors, how="inner").reset_index()
    if out.empty:
        return pd.DataFrame(columns=[*KEY_FIELDS, "metric", "ours", "authors", "diff", "n_runs", "flag"])
    out[list(KEY_FIELDS)] = pd.DataFrame(out["key"].tolist(), index=out.index)
    out["diff"] = out["ours"] - out["authors"]
    return out.drop(columns="key")[[*KEY_FIELDS, "metric", "ours", "authors", "diff", "n_runs", "flag"]]


def _mean_per(df: Any, by: list[str]) -> Any:
    return df.groupby(by, dropna=False, as_index=False).agg(value=("value", "mean"), n_runs=("value", "size"))


def fraction_frame(df: Any, metric: str = "f1") -> Any:
    """λ=0 and ULD scores against the training fraction, for every (source, task, pair) whose runs
    vary the fraction. Columns: source, task, teacher, student, pair, setting, train_fraction, value, n_runs."""
    sub = df[(df["metric"] == metric) & df["setting"].isin(["lambda0", "uld"])]
    by = ["source", "task", "teacher", "student", "setting", "train_fraction"]
    out = _mean_per(sub, by)
    series = ["source", "task", "teacher", "student"]
    varied = out.groupby(series, dropna=False)["train_fraction"].transform("nunique") > 1
    out = out[varied].copy()
    out["pair"] = _pair_label(out)
    out["panel"] = out["task"] + "\n" + out["pair"]
    return out.sort_values(by).reset_index(drop=True)


def size_frame(df: Any, metric: str = "f1") -> Any:
    """Student few-shot / λ=0 / ULD scores against the student's parameter count, for every (source,
    task, teacher) series with more than one student. Full training set only."""
    sub = df[(df["metric"] == metric) & df["setting"].isin(["student-few-shot", "lambda0", "uld"])]
    sub = sub[(sub["train_fraction"] == 1.0) & sub["student"].isin(list(STUDENT_PARAMS))]
    out = _mean_per(sub, ["source", "task", "teacher", "student", "setting"])
    # the few-shot rows have no teacher: attach them to every teacher the student was distilled from
    fewshot = out[out["setting"] == "student-few-shot"].drop(columns="teacher")
    distilled = out[out["setting"] != "student-few-shot"]
    teachers = distilled[["source", "task", "student", "teacher"]].drop_duplicates()
    import pandas as pd

    out = pd.concat([distilled, fewshot.merge(teachers, on=["source", "task", "student"])], ignore_index=True)
    out["params"] = out["student"].map(STUDENT_PARAMS)
    out["panel"] = out["task"] + "\nteacher " + out["teacher"].fillna("–")
    n_students = out.groupby(["source", "task", "teacher"])["student"].transform("nunique")
    return out[n_students > 1].sort_values(["source", "task", "teacher", "setting", "params"]).reset_index(drop=True)


def cost_frame(df: Any, metric: str = "f1") -> Any:
    """Closed-form ULD and ULD-OT per cost for every (source, task, pair) where OT was run.
    Column ``cost``: "closed form", "uniform", "levenshtein", "embedding"."""
    sub = df[(df["metric"] == metric) & df["setting"].isin(["uld", "uld-ot"]) & (df["train_fraction"] == 1.0)].copy()
    sub["cost"] = sub["ot_cost"].where(sub["setting"] == "uld-ot", "closed form")
    out = _mean_per(sub, ["source", "task", "teacher", "student", "cost"])
    has_ot = out.groupby(["task", "teacher", "student"])["cost"].transform(lambda c: (c != "closed form").any())
    out = out[has_ot].copy()
    out["pair"] = _pair_label(out)
    out["panel"] = out["task"] + "\n" + out["pair"]
    order = {c: i for i, c in enumerate(["closed form", "uniform", "levenshtein", "embedding"])}
    out["cost_rank"] = out["cost"].map(order).fillna(len(order))
    return out.sort_values(["task", "pair", "source", "cost_rank"]).drop(columns="cost_rank").reset_index(drop=True)


def curves_frame(logs: Any, settings: Sequence[str] = ("lambda0", "uld")) -> Any:
    """Training-log lines (``load_training_logs``) of the given settings in long form for plotting:
    one row per (run, step, split, quantity) with quantity in loss / ce / uld; a ``best`` column marks
    the step with the lowest validation loss of each run (the checkpoint the paper keeps)."""
    import pandas as pd

    logs = logs[logs["setting"].isin(settings)].copy()
    if logs.empty:
        return pd.DataFrame(columns=["run_id", "task", "teacher", "student", "setting", "train_fraction",
                                     "step", "epoch", "split", "quantity", "value", "best", "pair", "panel"])
    quantities = [q for q in ("loss", "ce", "uld") if q in logs.columns]
    ids = ["run_id", "task", "teacher", "student", "setting", "train_fraction", "step", "epoch", "split"]
    for c in ids:
        if c not in logs.columns:
            logs[c] = None
    long = logs.melt(id_vars=ids, value_vars=quantities, var_name="quantity", value_name="value").dropna(subset=["value"])
    val = long[(long["split"] == "val") & (long["quantity"] == "loss")]
    best_step = val.loc[val.groupby("run_id")["value"].idxmin(), ["run_id", "step"]] if not val.empty else val[["run_id", "step"]]
    best = set(map(tuple, best_step.to_numpy().tolist()))
    long["best"] = [(r, s) in best for r, s in zip(long["run_id"], long["step"])]
    long["pair"] = _pair_label(long)
    long["panel"] = long["task"] + "\n" + long["pair"]
    return long.reset_index(drop=True)


# --------------------------------------------------------------------------------------------------
# Micro-replication table (experiments/micro/): seeds, paired bootstrap, figure
# --------------------------------------------------------------------------------------------------

MICRO_SETTINGS = ("teacher", "student-few-shot", "sft-gold", "lambda0", "uld")
BOOTSTRAP_RESAMPLES = 10_000
BOOTSTRAP_SEED = 0
_MICRO_STEM = "table_micro"  # one grid for every preset, so one file name


@dataclass(frozen=True)
class SeedSummary:
    """One number over the runs of a cell (seeds): mean, sample standard deviation (ddof=1), count.

    ``std`` is None below two runs (one seed says nothing about seed variance); ``mean`` is None for none.
    """

    mean: Optional[float]
    std: Optional[float]
    n: int

    def format(self) -> str:
        if self.mean is None:
            return MISSING
        if self.std is None:
            return f"{self.mean:.2f}"
        return f"{self.mean:.2f} ± {self.std:.2f}"


def seed_summary(values: Iterable[float]) -> SeedSummary:
    """Mean ± sample std of ``values`` (one per seed). NaN is an error: a run without the number should be
    left out by the caller, not averaged in."""
    vals = [float(v) for v in values]
    if any(math.isnan(v) for v in vals):
        raise ValueError(f"NaN among the seed values {vals}")
    n = len(vals)
    if n == 0:
        return SeedSummary(None, None, 0)
    mean = math.fsum(vals) / n
    std = math.sqrt(math.fsum((v - mean) ** 2 for v in vals) / (n - 1)) if n > 1 else None
    return SeedSummary(mean, std, n)


@dataclass(frozen=True)
class BootstrapCI:
    """Paired bootstrap interval of ``mean(a - b)`` over ``n_items`` shared evaluation items."""

    diff: float  # the observed mean difference
    low: float
    high: float
    n_items: int
    resamples: int
    seed: int
    level: float = 0.95


def paired_bootstrap_ci(
    a: Sequence[float],
    b: Sequence[float],
    *,
    resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = BOOTSTRAP_SEED,
    level: float = 0.95,
) -> BootstrapCI:
    """Percentile bootstrap interval of the mean difference of two systems scored on the same items.

    ``a``, ``b``: ``[n]`` per-item scores, position i of both being the same question. Resampling the
    differences ``a_i - b_i`` (not the two systems separately) keeps the pairing: how hard a question
    is cancels out, and only where the systems disagree is resampled.

    Each resample draws ``n`` item indices with replacement from ``numpy.random.default_rng(seed)``;
    the draws are taken in ``[resamples, n]`` row-major order, so the result does not depend on the
    memory-bounding chunk size below. The interval is the ``(1 - level) / 2`` and ``(1 + level) / 2``
    quantiles (linear interpolation) of the ``resamples`` resampled means.
    """
    import numpy as np

    a_arr = np.asarray(a, dtype=np.float64)
    b_arr = np.asarray(b, dtype=np.float64)
    if a_arr.ndim != 1 or a_arr.shape != b_arr.shape:
        raise ValueError(f"a and b must be 1-d and of equal length, got shapes {a_arr.shape} and {b_arr.shape}")
    n = a_arr.shape[0]
    if n == 0:
        raise ValueError("no items to resample")
    if not (np.isfinite(a_arr).all() and np.isfinite(b_arr).all()):
        raise ValueError("per-item scores must be finite")
    if resamples < 1:
        raise ValueError(f"resamples must be >= 1, got {resamples}")
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    d = a_arr - b_arr
    rng = np.random.default_rng(seed)
    means = np.empty(resamples)
    chunk = max(1, 2_000_000 // n)  # at most ~16 MB of indices at a time
    for start in range(0, resamples, chunk):
        m = min(chunk, resamples - start)
        means[start : start + m] = d[rng.integers(0, n, size=(m, n))].mean(axis=1)
    low, high = np.quantile(means, [(1 - level) / 2, (1 + level) / 2])
    return BootstrapCI(
        diff=float(d.mean()), low=float(low), high=float(high), n_items=n, resamples=resamples, seed=seed, level=level
    )


def question_scores(run: RunFolder | str | os.PathLike, metric: str = "f1") -> dict[str, float]:
    """Per-question scores (x100) of one evaluated run, from its ``eval/predictions.jsonl``: id -> score.

    Rows carry the per-example metrics in [0, 1] (:func:`uld.evaluation.score_predictions`). A missing
    file raises FileNotFoundError; a row without an id or the metric, a repeated id, or a row count that
    disagrees with ``scores.json``'s ``n`` raise :class:`uld.results.ResultsError` naming file and row.
    """
    from uld.errors import ResultsError
    from uld.io import read_json, read_jsonl

    run = run if isinstance(run, RunFolder) else RunFolder(run)
    path = run.file("eval", "predictions.jsonl")
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no per-question predictions in run {run.id}")
    out: dict[str, float] = {}
    for i, row in enumerate(read_jsonl(path), 1):
        qid = row.get("id") if isinstance(row, dict) else None
        if qid is None or str(qid) == "":
            raise ResultsError(f"{path}: row {i} has no 'id'")
        value = row.get(metric)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
            raise ResultsError(f"{path}: row {i} (id {qid}): '{metric}' must be a number, got {value!r}")
        if str(qid) in out:
            raise ResultsError(f"{path}: row {i}: id {qid} appears twice")
        out[str(qid)] = 100.0 * float(value)
    if run.exists(RunFolder.FINAL):
        n = read_json(run.file(RunFolder.FINAL)).get("n")
        if isinstance(n, int) and n != len(out):
            raise ResultsError(f"{path}: {len(out)} rows, but {run.file(RunFolder.FINAL)} says n = {n}")
    return out


def _seed_mean_per_question(runs: Sequence[RunFolder], metric: str) -> dict[str, float]:
    """Per-question score averaged over the runs of one cell; every run must cover the same questions."""
    from uld.errors import ResultsError

    per_run = [question_scores(r, metric) for r in runs]
    ids = set(per_run[0])
    for run, scores in zip(runs[1:], per_run[1:]):
        if set(scores) != ids:
            raise ResultsError(
                f"runs {runs[0].id} and {run.id} scored different questions "
                f"({len(ids ^ set(scores))} ids differ): a paired comparison needs the same evaluation set"
            )
    return {q: math.fsum(s[q] for s in per_run) / len(per_run) for q in sorted(ids)}


def paired_contrast(
    runs_a: Sequence[RunFolder],
    runs_b: Sequence[RunFolder],
    *,
    metric: str = "f1",
    resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = BOOTSTRAP_SEED,
    level: float = 0.95,
) -> BootstrapCI:
    """Cell a minus cell b (e.g. ULD minus λ=0) on the questions both were evaluated on.

    Each cell is a list of runs (its seeds); a question's score in a cell is the mean over the cell's
    seeds, then the two cells are paired by question id and :func:`paired_bootstrap_ci` resamples the
    questions. Both cells must cover the same questions (else :class:`uld.results.ResultsError`).
    """
    from uld.errors import ResultsError

    if not runs_a or not runs_b:
        raise ValueError("both cells need at least one run")
    qa = _seed_mean_per_question(runs_a, metric)
    qb = _seed_mean_per_question(runs_b, metric)
    if set(qa) != set(qb):
        raise ResultsError(
            f"cells of {runs_a[0].id} and {runs_b[0].id} scored different questions "
            f"({len(set(qa) ^ set(qb))} ids differ)"
        )
    ids = sorted(qa)
    return paired_bootstrap_ci([qa[q] for q in ids], [qb[q] for q in ids], resamples=resamples, seed=seed, level=level)


@dataclass
class MicroTable:
    """The micro-replication table: per-setting seed statistics, the paired ULD − λ=0 contrast, and
    the training-fraction rows. ``runs`` is the long per-run frame the figure draws from."""

    spec: TableSpec
    preset: str
    runs: Any  # DataFrame: run_id, setting, model, train_fraction, seed, metric, value
    rows: list[dict[str, Any]]  # setting, label, model, run_ids, summaries {metric: SeedSummary}
    contrast: Optional[BootstrapCI]
    fractions: list[dict[str, Any]]  # train_fraction, lambda0 / uld: SeedSummary of F1, contrast, run ids
    cells: Any  # DataFrame written to table_micro.cells.csv
    notes: list[str] = field(default_factory=list)
    n_points: int = 0
    n_complete: int = 0
    train_size: Optional[int] = None
    test_size: Optional[int] = None
    val_fraction: Optional[float] = None
    hardware: list[str] = field(default_factory=list)  # where the table's runs ran, from their env.json


def _run_hardware(run: RunFolder) -> str:
    """``"NVIDIA H100 80GB HBM3"``, ``"CPU (2 cores)"`` or ``"unknown"`` from a run's env.json."""
    if not run.exists("env.json"):
        return "unknown"
    env = run.read_json("env.json")
    if env.get("gpus"):
        return ", ".join(env["gpus"])
    return f"CPU ({env['cpu_count']} cores)" if env.get("cpu_count") else "CPU"


def _try_contrast(a: list[RunFolder], b: list[RunFolder], what: str, notes: list[str]) -> Optional[BootstrapCI]:
    """The contrast, or None with a note saying why there is none yet (missing runs or predictions)."""
    if not a or not b:
        notes.append(f"{what}: no interval yet, a cell has no finished run")
        return None
    try:
        return paired_contrast(a, b)
    except FileNotFoundError as exc:
        notes.append(f"{what}: no interval, {exc}")
        return None


def collect_micro(plan: TablePlan) -> MicroTable:
    """Seed statistics and paired intervals for the micro study's plan (only the plan's own runs).

    Renders from an empty or partial store: cells without runs are "–" and intervals without both
    cells are left out with a note. Corrupt records raise, naming the file.
    """
    import pandas as pd

    spec = plan.spec
    metrics = list(spec.metrics)
    done = [p for p in plan.points if p.complete]
    by_id = {p.run.id: p for p in done}
    scores = load_results(plan.store_root, source="ours")
    scores = scores[scores["run_id"].isin(list(by_id)) & scores["metric"].isin(metrics)]
    records = []
    for rec in scores.itertuples(index=False):
        p = by_id[rec.run_id]
        info = p.info  # the declared point decides the cell
        model = info["teacher"] if info["setting"] == "teacher" else info["student"]
        records.append(
            {"run_id": rec.run_id, "setting": info["setting"], "model": model,
             "train_fraction": round(float(info["train_fraction"]), 4), "seed": info["seed"],
             "metric": rec.metric, "value": float(rec.value)}
        )
    runs = pd.DataFrame.from_records(
        records, columns=["run_id", "setting", "model", "train_fraction", "seed", "metric", "value"]
    )

    def cell_runs(setting: str, frac: float) -> list[RunFolder]:
        return [p.run for p in done if p.info["setting"] == setting and round(float(p.info["train_fraction"]), 4) == frac]

    def summary(setting: str, frac: float, metric: str) -> SeedSummary:
        sel = runs[(runs["setting"] == setting) & (runs["train_fraction"] == frac) & (runs["metric"] == metric)]
        return seed_summary(sel["value"].tolist())

    def declared_model(setting: str) -> Optional[str]:
        for p in plan.points:
            if p.info["setting"] == setting:
                return p.info["teacher"] if setting == "teacher" else p.info["student"]
        return None

    notes: list[str] = []
    cells = []
    rows = []
    for setting in MICRO_SETTINGS:
        summaries = {m: summary(setting, 1.0, m) for m in metrics}
        ids = [r.id for r in cell_runs(setting, 1.0)]
        rows.append({"setting": setting, "label": SETTING_LABELS.get(setting, setting), "model": declared_model(setting),
                     "run_ids": ids, "summaries": summaries})
        for m, s in summaries.items():
            cells.append({"part": "main", "setting": setting, "train_fraction": 1.0, "metric": m, "mean": s.mean,
                          "std": s.std, "n_runs": s.n, "ci_low": None, "ci_high": None, "n_items": None,
                          "run_ids": " ".join(ids)})
    contrast = _try_contrast(cell_runs("uld", 1.0), cell_runs("lambda0", 1.0), "ULD − λ=0 (100%)", notes)

    fractions = []
    fracs = sorted({round(float(p.info["train_fraction"]), 4) for p in plan.points if p.info["setting"] in ("lambda0", "uld")})
    for frac in fracs:
        lam0, uld = cell_runs("lambda0", frac), cell_runs("uld", frac)
        ci = contrast if frac == 1.0 else _try_contrast(uld, lam0, f"ULD − λ=0 ({100 * frac:.0f}%)", notes)
        row = {"train_fraction": frac, "lambda0": summary("lambda0", frac, "f1"), "uld": summary("uld", frac, "f1"),
               "contrast": ci, "run_ids": {"lambda0": [r.id for r in lam0], "uld": [r.id for r in uld]}}
        fractions.append(row)
        for setting in ("lambda0", "uld"):
            s = row[setting]
            cells.append({"part": "fraction", "setting": setting, "train_fraction": frac, "metric": "f1", "mean": s.mean,
                          "std": s.std, "n_runs": s.n, "ci_low": None, "ci_high": None, "n_items": None,
                          "run_ids": " ".join(row["run_ids"][setting])})
        cells.append({"part": "contrast", "setting": "uld-lambda0", "train_fraction": frac, "metric": "f1",
                      "mean": ci.diff if ci else None, "std": None, "n_runs": None,
                      "ci_low": ci.low if ci else None, "ci_high": ci.high if ci else None,
                      "n_items": ci.n_items if ci else None,
                      "run_ids": " ".join(row["run_ids"]["uld"] + row["run_ids"]["lambda0"])})

    cells_frame = pd.DataFrame.from_records(cells)
    for col in ("n_runs", "n_items"):  # counts stay integers in the CSV, blanks where there is none
        cells_frame[col] = cells_frame[col].astype("Int64")
    first = plan.points[0].cfg if plan.points else None
    return MicroTable(
        spec=spec,
        preset=plan.preset,
        runs=runs,
        rows=rows,
        contrast=contrast,
        fractions=fractions,
        cells=cells_frame,
        notes=notes,
        n_points=len(plan.points),
        n_complete=len(done),
        train_size=first.data.train_size if first is not None else None,
        test_size=first.data.test_size if first is not None else None,
        val_fraction=first.data.val_fraction if first is not None else None,
        hardware=sorted({_run_hardware(p.run) for p in done}),
    )


def _contrast_text(ci: Optional[BootstrapCI], what: str = "ULD − λ=0") -> str:
    if ci is None:
        return f"{what}: {MISSING} (no paired interval yet)"
    return (
        f"{what}: {ci.diff:+.2f} F1, {100 * ci.level:g}% CI [{ci.low:.2f}, {ci.high:.2f}] "
        f"(paired bootstrap over the {ci.n_items} questions, seeds averaged per question, "
        f"{ci.resamples:,} resamples, seed {ci.seed})"
    )


def _ci_cell(ci: Optional[BootstrapCI]) -> tuple[str, str]:
    if ci is None:
        return MISSING, MISSING
    return f"{ci.diff:+.2f}", f"[{ci.low:.2f}, {ci.high:.2f}]"


def _micro_grids(table: MicroTable) -> tuple[list[str], list[list[str]], list[str], list[list[str]]]:
    """(main header, main rows, fraction header, fraction rows) as plain text, shared by both renderers."""
    metrics = table.spec.metrics
    head = ["Setting", "Model", "n"] + [METRIC_LABELS.get(m, m) for m in metrics]
    body = []
    for row in table.rows:
        n = max(s.n for s in row["summaries"].values())
        body.append([row["label"], row["model"] or MISSING, str(n)] + [row["summaries"][m].format() for m in metrics])
    fhead = ["Fraction", "n (λ=0 / ULD)", "λ=0 F1", "ULD F1", "ULD − λ=0", "95% CI"]
    fbody = []
    for row in table.fractions:
        diff, ci = _ci_cell(row["contrast"])
        fbody.append([_label("train_fraction", row["train_fraction"]), f"{row['lambda0'].n} / {row['uld'].n}",
                      row["lambda0"].format(), row["uld"].format(), diff, ci])
    return head, body, fhead, fbody


def _micro_preamble(table: MicroTable, store_root: Path | None) -> list[str]:
    lines = []
    info = store_info(store_root) if store_root is not None else {}
    if info.get("fixture"):
        lines.append(f"**FIXTURE DATA**: {info.get('note', 'fake numbers for tests; not results')}.")
    size = ""
    if table.train_size is not None or table.test_size is not None:
        held = f" ({100 * table.val_fraction:g}% held out for checkpoint selection)" if table.val_fraction else ""
        size = (f"SQuAD: the first {table.train_size or 'all'} training-pool items{held}, "
                f"evaluated on the first {table.test_size or 'all'} dev questions. ")
    lines.append(
        f"{table.n_complete} of {table.n_points} grid points have results. {size}"
        f"Scores ×100; mean ± sample std over seeds, n = runs (seeds) averaged; {MISSING} = no number."
    )
    if table.hardware:
        lines.append(f"Hardware of these runs: {'; '.join(table.hardware)}.")
    if table.spec.caption:
        lines.append(table.spec.caption)
    return lines


def render_micro_markdown(table: MicroTable, *, store_root: Path | None = None) -> str:
    head, body, fhead, fbody = _micro_grids(table)
    lines = [f"# {table.spec.title}", "", *_micro_preamble(table, store_root), ""]
    lines.append("| " + " | ".join(head) + " |")
    lines.append("|" + "|".join([":--", ":--"] + ["--:"] * (len(head) - 2)) + "|")
    lines += ["| " + " | ".join(r) + " |" for r in body]
    lines += ["", _contrast_text(table.contrast), "", "## Training-set fraction: λ=0 against ULD (F1)", ""]
    lines.append("| " + " | ".join(fhead) + " |")
    lines.append("|" + "|".join([":--"] + ["--:"] * (len(fhead) - 1)) + "|")
    lines += ["| " + " | ".join(r) + " |" for r in fbody]
    lines += ["", f"Intervals: paired bootstrap over the evaluation questions, seeds averaged per question, "
                  f"{BOOTSTRAP_RESAMPLES:,} resamples, seed {BOOTSTRAP_SEED}."]
    if table.notes:
        lines += [""] + [f"- {n}" for n in table.notes]
    lines += ["", f"Run ids of every cell: `{_MICRO_STEM}.cells.csv`."]
    return "\n".join(lines) + "\n"


def _tex_pm(text: str) -> str:
    return _tex(text).replace("±", r"$\pm$").replace("→", r"$\rightarrow$").replace("×", r"$\times$")


def render_micro_latex(table: MicroTable) -> str:
    """A booktabs ``table``: the settings, the paired contrast under them, then the fraction rows."""
    head, body, fhead, fbody = _micro_grids(table)
    lines = [r"\begin{table}[t]", r"\centering", r"\small", rf"\begin{{tabular}}{{ll{'r' * (len(head) - 2)}}}",
             r"\toprule", " & ".join(_tex_pm(h) for h in head) + r" \\", r"\midrule"]
    lines += [" & ".join(_tex_pm(c) for c in r) + r" \\" for r in body]
    lines += [r"\bottomrule", r"\end{tabular}", "", r"\smallskip", _tex_pm(_contrast_text(table.contrast)), "",
              r"\smallskip", rf"\begin{{tabular}}{{l{'r' * (len(fhead) - 1)}}}", r"\toprule",
              " & ".join(_tex_pm(h) for h in fhead) + r" \\", r"\midrule"]
    lines += [" & ".join(_tex_pm(c) for c in r) + r" \\" for r in fbody]
    lines += [r"\bottomrule", r"\end{tabular}"]
    caption = (f"{table.spec.title}. {table.n_complete}/{table.n_points} grid points with results. Scores ×100, "
               f"mean ± std over seeds; – = no number. "
               + (f"Hardware: {'; '.join(table.hardware)}. " if table.hardware else "") + table.spec.caption)
    lines += [rf"\caption{{{_tex_pm(caption)}}}", r"\label{tab:micro}", r"\end{table}"]
    return "\n".join(lines) + "\n"


def write_micro(table: MicroTable, out_dir: str | os.PathLike, *, store_root: Path | None = None) -> dict[str, Path]:
    """Write ``table_micro.md``, ``.tex`` and ``.cells.csv`` atomically; returns their paths."""
    out_dir = Path(out_dir)
    return {
        "md": atomic_write_text(out_dir / f"{_MICRO_STEM}.md", render_micro_markdown(table, store_root=store_root)),
        "tex": atomic_write_text(out_dir / f"{_MICRO_STEM}.tex", render_micro_latex(table)),
        "csv": atomic_write_text(out_dir / f"{_MICRO_STEM}.cells.csv", table.cells.to_csv(index=False)),
    }


def _write_micro_figure(table: MicroTable, out_dir: Path) -> dict[str, Path]:
    """``table_micro.png`` / ``.pdf`` next to the store's other figures."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig = micro_figure(table, metric="f1")
    try:
        png, pdf = save_figure(fig, _MICRO_STEM, out_dir)
    finally:
        plt.close(fig)
    return {"png": png, "pdf": pdf}


def micro_figure(table: MicroTable, metric: str = "f1") -> Any:
    """Two panels: (a) ``metric`` per setting on the full slice, mean ± std over seeds with each seed as
    a dot; (b) λ=0 and ULD against the training fraction. Empty cells are simply absent."""
    import matplotlib.pyplot as plt

    runs = table.runs[table.runs["metric"] == metric]
    fig, (ax_a, ax_b) = plt.subplots(1, 2, figsize=(9, 3.4), gridspec_kw={"width_ratios": [1.3, 1]})
    label = METRIC_LABELS.get(metric, metric)
    colors = {"lambda0": "tab:blue", "uld": "tab:orange"}

    names = [r["label"] for r in table.rows]
    for x, row in enumerate(table.rows):
        s = seed_summary(runs[(runs["setting"] == row["setting"]) & (runs["train_fraction"] == 1.0)]["value"])
        if s.mean is None:
            continue
        color = colors.get(row["setting"], "tab:gray")
        ax_a.bar(x, s.mean, yerr=s.std or 0.0, color=color, alpha=0.6, capsize=4)
        vals = runs[(runs["setting"] == row["setting"]) & (runs["train_fraction"] == 1.0)]["value"]
        ax_a.scatter([x] * len(vals), vals, color="black", s=12, zorder=3)
    ax_a.set_xticks(range(len(names)), names, rotation=20, ha="right")
    ax_a.set_ylabel(label)
    ax_a.set_title("(a) full training slice" + ("" if not runs.empty else ": no runs yet"))
    if table.contrast is not None:
        ax_a.set_ylim(top=ax_a.get_ylim()[1] * 1.12)  # headroom for the contrast line
        ax_a.text(0.02, 0.97, _contrast_text(table.contrast).split(" (")[0], transform=ax_a.transAxes, va="top", fontsize=8)

    for setting in ("lambda0", "uld"):
        pts = [(r["train_fraction"], r[setting]) for r in table.fractions if r[setting].mean is not None]
        if not pts:
            continue
        xs = [100 * f for f, _ in pts]
        ax_b.errorbar(xs, [s.mean for _, s in pts], yerr=[s.std or 0.0 for _, s in pts], marker="o", capsize=4,
                      color=colors[setting], label=SETTING_LABELS[setting])
        sub = runs[runs["setting"] == setting]
        ax_b.scatter(100 * sub["train_fraction"], sub["value"], color=colors[setting], s=10, alpha=0.5)
    ax_b.set_xlabel("% of the training slice")
    ax_b.set_ylabel(label)
    ax_b.set_xticks([100 * r["train_fraction"] for r in table.fractions])
    ax_b.set_title("(b) training-set fraction")
    if ax_b.get_legend_handles_labels()[0]:
        ax_b.legend(fontsize=8)
    fig.tight_layout()
    return fig
