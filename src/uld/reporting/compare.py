"""Comparison tables: our number beside the authors' for every cell of a paper table.

Cells are keyed by what was measured (task, teacher, student, setting, training fraction, OT cost), the
same key the authors' rows get from :func:`uld.reference.load_reference`, so "authors" and "ours" meet
in one row; several runs in one cell (seeds) are averaged. Layouts: ``blocks`` (Table 1 style: per task
and teacher, the teacher row, then per student its few-shot, λ=0 and ULD rows) and ``sorted`` (one row
per key). A cell with no number reads "–"; ``<stem>.cells.csv`` names the run behind every number.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Optional, Sequence

import pandas as pd

from uld.io import atomic_write_text
from uld.reference import load_reference
from uld.reporting.spec import TablePlan, TableSpec
from uld.reporting.text import (
    LABEL_HEADERS,
    METRIC_LABELS,
    MISSING,
    SETTING_LABELS,
    fixture_lines,
    fmt,
    label,
    markdown_grid,
    none,
    tex,
)
from uld.results import load_runs

__all__ = ["ComparisonTable", "Comparison", "KEY_FIELDS", "cell_key"]

KEY_FIELDS = ("task", "teacher", "student", "setting", "train_fraction", "ot_cost")
_SETTING_ORDER = ["teacher", "student-few-shot", "student-zero-shot", "sft-gold", "lambda0", "kd-kl", "uld", "uld-ot"]
_TASK_ORDER = ["squad", "qed", "fairytaleqa", "pubmedqa", "dialogsum"]
_COST_ORDER = [None, "uniform", "levenshtein", "embedding"]
_MARKS = ["†", "‡", "§", "¶"]


def cell_key(row: Any) -> tuple:
    """The identity of a table cell: ``(task, teacher, student, setting, train_fraction, ot_cost)``.

    ``row`` is a mapping (a DataFrame row, or :func:`uld.results.describe_config`'s output).
    """
    frac = none(row["train_fraction"])
    return (row["task"], none(row["teacher"]), none(row["student"]), row["setting"],
            round(float(frac if frac is not None else 1.0), 4), none(row["ot_cost"]))


@dataclass(frozen=True)
class ComparisonTable(TableSpec):
    """A paper table: ``layout`` is ``blocks`` or ``sorted``; ``label_columns`` come before the metrics."""

    layout: str = "sorted"
    label_columns: tuple[str, ...] = ("task", "teacher", "student", "setting")

    def collect(self, plan: TablePlan, *, reference: str | os.PathLike | None = None) -> "Comparison":
        return collect_comparison(plan, reference=reference)


@dataclass
class Comparison:
    """Rows of a built table: ``cells`` is long (one row per table row x metric), ``rows`` the layout."""

    spec: ComparisonTable
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
                return none(rec[column])
        raise KeyError(f"no row {key} / {metric} in table {self.spec.name}")

    @property
    def stem(self) -> str:
        return self.spec.stem(self.preset)

    def markdown(self, store_root: Optional[Path] = None) -> str:
        return render_markdown(self, store_root=store_root)

    def latex(self) -> str:
        return render_latex(self)

    def write(self, out_dir: str | os.PathLike, *, store_root: Optional[Path] = None) -> dict[str, Path]:
        """Write ``<stem>.md``, ``<stem>.tex`` and ``<stem>.cells.csv`` atomically; returns their paths."""
        out_dir = Path(out_dir)
        csv_cols = [c for c in self.cells.columns if c not in ("key",) and not c.startswith("label_")]
        return {
            "md": atomic_write_text(out_dir / f"{self.stem}.md", self.markdown(store_root)),
            "tex": atomic_write_text(out_dir / f"{self.stem}.tex", self.latex()),
            "csv": atomic_write_text(out_dir / f"{self.stem}.cells.csv", self.cells[csv_cols].to_csv(index=False)),
        }


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


def collect_comparison(plan: TablePlan, *, reference: str | os.PathLike | None = None) -> Comparison:
    """Authors' numbers and ours for every cell of the plan (ours: only the plan's own runs).

    Several runs in one cell (e.g. seeds) are averaged; ``n_runs`` and ``ours_std`` say so.
    """
    spec: ComparisonTable = plan.spec  # type: ignore[assignment]
    wanted = {p.run.id: p for p in plan.points}
    # the plan's own run folders, nothing else of the store; in run-id order, the order a cell's runs are
    # summed in, so its mean does not change with the order of the grid files
    ours = load_runs(sorted((p.run for p in plan.points), key=lambda r: r.id))
    ours = ours[ours["metric"].isin(spec.metrics)]
    by_cell: dict[tuple, dict[str, list[tuple[str, float]]]] = {}
    for rec in ours.itertuples(index=False):
        key = cell_key(wanted[rec.run_id].info)  # the declared point decides the cell, not a re-derivation
        by_cell.setdefault(key, {}).setdefault(rec.metric, []).append((rec.run_id, rec.value))

    authors = load_reference(reference)
    authors = authors[authors["metric"].isin(spec.metrics)]
    auth_cell: dict[tuple, dict[str, Any]] = {}
    for _, rec in authors.iterrows():
        auth_cell.setdefault(cell_key(rec), {})[rec["metric"]] = rec

    layout = _layout(spec, [cell_key(p.info) for p in plan.points])
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
            flag = none(a["flag"]) if a is not None else None
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
    return Comparison(
        spec=spec,
        preset=plan.preset,
        cells=cells,
        rows=layout,
        notes=list(notes),
        n_points=len(plan.points),
        n_complete=sum(p.complete for p in plan.points),
    )


def _grid_rows(table: Comparison) -> tuple[list[str], list[list[str]]]:
    """Header and body cells (plain text) shared by the markdown and LaTeX renderers."""
    spec = table.spec
    header = [LABEL_HEADERS[c] for c in spec.label_columns]
    for m in spec.metrics:
        name = METRIC_LABELS.get(m, m)
        header += [f"{name} authors", f"{name} ours", f"{name} Δ"]
    cells = {(rec["key"], rec["metric"]): rec for rec in table.cells.to_dict("records")}
    body = []
    previous: list[str] = []
    for key, labels in table.rows:
        row = [label(c, labels.get(c)) for c in spec.label_columns]
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
            authors = fmt(rec["authors"])
            if none(rec["flag_mark"]) is not None and authors != MISSING:
                authors += _MARKS[(int(rec["flag_mark"]) - 1) % len(_MARKS)]
            shown += [authors, fmt(rec["ours"]), fmt(rec["diff"], signed=True)]
        body.append(shown)
    return header, body


def _preamble(table: Comparison, store_root: Path | None) -> list[str]:
    lines = fixture_lines(store_root)
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


def _footnotes(table: Comparison) -> list[str]:
    return [f"{_MARKS[i % len(_MARKS)]} {note}" for i, note in enumerate(table.notes)]


def render_markdown(table: Comparison, *, store_root: Path | None = None) -> str:
    header, body = _grid_rows(table)
    lines = [f"# {table.spec.title}", ""]
    lines += [*_preamble(table, store_root), ""]
    lines += markdown_grid(header, body, len(table.spec.label_columns))
    notes = _footnotes(table)
    if notes:
        lines += [""] + notes
    lines += ["", f"Run ids of every cell: `{table.stem}.cells.csv`."]
    return "\n".join(lines) + "\n"


def render_latex(table: Comparison) -> str:
    """A booktabs ``table*``: label columns, then authors / ours / Δ under each metric."""
    spec = table.spec
    _, body = _grid_rows(table)
    n_labels = len(spec.label_columns)
    colspec = "l" * n_labels + "rrr" * len(spec.metrics)
    top = [""] * n_labels
    cmid = []
    for i, m in enumerate(spec.metrics):
        top.append(rf"\multicolumn{{3}}{{c}}{{{tex(METRIC_LABELS.get(m, m))}}}")
        start = n_labels + 3 * i + 1
        cmid.append(rf"\cmidrule(lr){{{start}-{start + 2}}}")
    second = [tex(LABEL_HEADERS[c]) for c in spec.label_columns] + ["authors", "ours", r"$\Delta$"] * len(spec.metrics)
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
        lines.append(" & ".join(tex(c) for c in row) + r" \\")
    lines.append(r"\bottomrule")
    lines.append(r"\end{tabular}")
    caption = f"{spec.title}. Preset {table.preset}; {table.n_complete}/{table.n_points} grid points with results. "
    caption += "Δ = ours − authors; – = no number."
    if spec.caption:
        caption += " " + spec.caption
    for note in _footnotes(table):
        caption += " " + note + "."
    lines.append(rf"\caption{{{tex(caption)}}}")
    lines.append(rf"\label{{tab:{spec.name.replace('_', '-')}}}")
    lines.append(r"\end{table*}")
    return "\n".join(lines) + "\n"
