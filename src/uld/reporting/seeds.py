"""Seed tables: studies of our own runs, reported as seed statistics and paired intervals.

A :class:`SeedTable` is a sequence of panels, each one data: :class:`SettingRows` (one row per setting,
mean ± sample std over its seeds for each metric), :class:`Contrast` (one paired bootstrap interval of
two cells, over the evaluation questions) and :class:`FractionRows` (λ=0 against ULD at each training
fraction). A study declares its panels in its ``paper_tables/`` script; collecting, rendering
(markdown, LaTeX, the cells CSV naming every run) and the figure are shared by every seed table. Cells
without runs read "–" and intervals without both cells are left out with a note, so a partial store
renders; corrupt records raise, naming the file.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import pandas as pd

from uld.io import atomic_write_text
from uld.reporting.figures import save_figure
from uld.reporting.spec import GridPoint, TablePlan, TableSpec
from uld.reporting.stats import (BOOTSTRAP_RESAMPLES, BOOTSTRAP_SEED, BootstrapCI, SeedQuestionCI, SeedSummary, paired_contrast,
                                 seed_paired_contrast, seed_summary)
from uld.reporting.text import (METRIC_LABELS, MISSING, SETTING_LABELS, fixture_lines, label, latex_grid, markdown_grid,
                               panel_markdown, tex_pm)
from uld.results import load_runs
from uld.store import RunFolder

__all__ = ["SeedTable", "SettingRows", "Contrast", "FractionRows", "SeedResult", "contrast_text", "run_hardware"]

TASK_NAMES = {"squad": "SQuAD", "qed": "QED", "fairytaleqa": "FairytaleQA", "pubmedqa": "PubMedQA", "dialogsum": "DialogSum"}
CELL_COLUMNS = ["part", "setting", "train_fraction", "metric", "mean", "std", "n_runs", "ci_low", "ci_high", "n_items", "run_ids",
                "sq_low", "sq_high", "n_seeds"]  # sq_*: the seeds × questions interval, over n_seeds paired seeds
SEED_CI_HEAD = "95% CI (seeds + questions)"
SEED_CI_NOTE = ("Seeds + questions: runs paired by seed, a crossed seeds × questions random-effects interval "
                "(method-of-moments variance components, Satterthwaite t); it needs ≥ 2 paired seeds.")


def _frac(p: GridPoint) -> float:
    return round(float(p.info["train_fraction"]), 4)


def contrast_text(ci: Optional[BootstrapCI], what: str = "ULD − λ=0", seed_ci: Optional[SeedQuestionCI] = None) -> str:
    if ci is None:
        return f"{what}: {MISSING} (no paired interval yet)"
    return (f"{what}: {ci.diff:+.2f} F1, {100 * ci.level:g}% CI [{ci.low:.2f}, {ci.high:.2f}] "
            f"(questions only: paired bootstrap over the {ci.n_items} questions, seeds averaged per question, "
            f"{ci.resamples:,} resamples, seed {ci.seed}); {seed_ci_text(seed_ci)}")


def seed_ci_text(ci: Optional[SeedQuestionCI]) -> str:
    if ci is None:
        return f"seeds + questions: {MISSING} (fewer than 2 paired seeds)"
    return (f"seeds + questions: {100 * ci.level:g}% CI {ci.format()} ({ci.n_seeds} paired seeds × {ci.n_items} "
            f"questions, crossed random effects, t with {ci.df:.1f} df)")


def seed_ci_cell(ci: Optional[SeedQuestionCI]) -> str:
    return MISSING if ci is None else ci.format()


def seed_ci_record(ci: Optional[SeedQuestionCI]) -> dict:
    return {"sq_low": ci.low if ci else None, "sq_high": ci.high if ci else None, "n_seeds": ci.n_seeds if ci else None}


def _ci_cells(ci: Optional[BootstrapCI]) -> tuple[str, str]:
    return (MISSING, MISSING) if ci is None else (f"{ci.diff:+.2f}", f"[{ci.low:.2f}, {ci.high:.2f}]")


def run_hardware(run: RunFolder) -> str:
    """``"NVIDIA H100 80GB HBM3"``, ``"CPU (2 cores)"`` or ``"unknown"`` from a run's env.json."""
    if not run.exists("env.json"):
        return "unknown"
    env = run.read_json("env.json")
    if env.get("gpus"):
        return ", ".join(env["gpus"])
    return f"CPU ({env['cpu_count']} cores)" if env.get("cpu_count") else "CPU"


# --------------------------------------------------------------------------------------------------
# Collecting: the runs of a plan, by cell
# --------------------------------------------------------------------------------------------------


class _Cells:
    """The finished runs of a plan, their scores, and the intervals computed so far (each once)."""

    def __init__(self, plan: TablePlan, metrics: Sequence[str]):
        self.plan = plan
        self.done = [p for p in plan.points if p.complete]
        by_id = {p.run.id: p for p in self.done}
        # the plan's own run folders, nothing else of the store; in run-id order, the order seeds are drawn
        # and summed in, so a figure or a mean does not change with the order of the grid files
        scores = load_runs(sorted((p.run for p in self.done), key=lambda r: r.id))
        scores = scores[scores["metric"].isin(list(metrics))]
        records = []
        for rec in scores.itertuples(index=False):
            info = by_id[rec.run_id].info  # the declared point decides the cell
            model = info["teacher"] if info["setting"] == "teacher" else info["student"]
            records.append({"run_id": rec.run_id, "setting": info["setting"], "model": model,
                            "train_fraction": round(float(info["train_fraction"]), 4), "seed": info["seed"],
                            "metric": rec.metric, "value": float(rec.value)})
        self.runs = pd.DataFrame.from_records(records, columns=["run_id", "setting", "model", "train_fraction", "seed", "metric", "value"])
        self.notes: list[str] = []
        self._contrasts: dict[tuple, Optional[BootstrapCI]] = {}
        self._seed_contrasts: dict[tuple, Optional[SeedQuestionCI]] = {}

    def runs_of(self, setting: str, frac: float) -> list[RunFolder]:
        return [p.run for p in self.done if p.info["setting"] == setting and _frac(p) == frac]

    def summary(self, setting: str, frac: float, metric: str) -> SeedSummary:
        r = self.runs
        return seed_summary(r[(r["setting"] == setting) & (r["train_fraction"] == frac) & (r["metric"] == metric)]["value"].tolist())

    def model_of(self, setting: str) -> Optional[str]:
        for p in self.plan.points:
            if p.info["setting"] == setting:
                return p.info["teacher"] if setting == "teacher" else p.info["student"]
        return None

    def contrast(self, a: str, b: str, frac: float, what: str) -> Optional[BootstrapCI]:
        """``a`` minus ``b`` at ``frac``, or None with a note saying why there is none (yet)."""
        key = (a, b, frac)
        if key not in self._contrasts:
            ra, rb = self.runs_of(a, frac), self.runs_of(b, frac)
            ci = None
            if not ra or not rb:
                self.notes.append(f"{what}: no interval yet, a cell has no finished run")
            else:
                try:
                    ci = paired_contrast(ra, rb)
                except FileNotFoundError as exc:
                    self.notes.append(f"{what}: no interval, {exc}")
            self._contrasts[key] = ci
        return self._contrasts[key]

    def seed_contrast(self, a: str, b: str, frac: float) -> Optional[SeedQuestionCI]:
        """``a`` minus ``b`` at ``frac`` with runs paired by seed (None without two paired seeds or a file)."""
        key = (a, b, frac)
        if key not in self._seed_contrasts:
            ra, rb = self.runs_of(a, frac), self.runs_of(b, frac)
            try:
                self._seed_contrasts[key] = seed_paired_contrast(ra, rb) if ra and rb else None
            except FileNotFoundError:  # the question-only interval's note already says which file
                self._seed_contrasts[key] = None
        return self._seed_contrasts[key]


# --------------------------------------------------------------------------------------------------
# Panels
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SettingRows:
    """One row per setting at one training fraction: the model, the runs averaged, each metric's mean ± std."""

    settings: tuple[str, ...]
    train_fraction: float = 1.0

    def collect(self, cells: _Cells, metrics: Sequence[str]) -> dict:
        rows, records = [], []
        for setting in self.settings:
            summaries = {m: cells.summary(setting, self.train_fraction, m) for m in metrics}
            ids = [r.id for r in cells.runs_of(setting, self.train_fraction)]
            rows.append({"setting": setting, "label": SETTING_LABELS.get(setting, setting), "model": cells.model_of(setting),
                         "run_ids": ids, "summaries": summaries})
            records += [{"part": "main", "setting": setting, "train_fraction": self.train_fraction, "metric": m, "mean": s.mean,
                         "std": s.std, "n_runs": s.n, "ci_low": None, "ci_high": None, "n_items": None, "run_ids": " ".join(ids)}
                        for m, s in summaries.items()]
        return {"panel": self, "rows": rows, "records": records}

    @staticmethod
    def grid(out: dict, metrics: Sequence[str]) -> tuple[list[str], list[list[str]]]:
        head = ["Setting", "Model", "n"] + [METRIC_LABELS.get(m, m) for m in metrics]
        body = [[r["label"], r["model"] or MISSING, str(max(s.n for s in r["summaries"].values()))]
                + [r["summaries"][m].format() for m in metrics] for r in out["rows"]]
        return head, body

    def markdown(self, out: dict, metrics: Sequence[str]) -> list[str]:
        return markdown_grid(*self.grid(out, metrics), n_left=2)

    def latex(self, out: dict, metrics: Sequence[str]) -> list[str]:
        head, body = self.grid(out, metrics)
        lines = [rf"\begin{{tabular}}{{ll{'r' * (len(head) - 2)}}}", r"\toprule", " & ".join(tex_pm(h) for h in head) + r" \\", r"\midrule"]
        return lines + [" & ".join(tex_pm(c) for c in r) + r" \\" for r in body] + [r"\bottomrule", r"\end{tabular}"]


@dataclass(frozen=True)
class Contrast:
    """``a`` minus ``b`` (settings) at one fraction, as a sentence under the table."""

    a: str = "uld"
    b: str = "lambda0"
    train_fraction: float = 1.0
    what: str = "ULD − λ=0"

    def collect(self, cells: _Cells, metrics: Sequence[str]) -> dict:
        ci = cells.contrast(self.a, self.b, self.train_fraction, f"{self.what} ({100 * self.train_fraction:.0f}%)")
        return {"panel": self, "ci": ci, "seed_ci": cells.seed_contrast(self.a, self.b, self.train_fraction), "records": []}

    def markdown(self, out: dict, metrics: Sequence[str]) -> list[str]:
        return ["", contrast_text(out["ci"], self.what, out["seed_ci"])]

    def latex(self, out: dict, metrics: Sequence[str]) -> list[str]:
        return ["", r"\smallskip", tex_pm(contrast_text(out["ci"], self.what, out["seed_ci"]))]


@dataclass(frozen=True)
class FractionRows:
    """One row per training fraction of the plan: ``b`` and ``a`` (F1, mean ± std) and the paired ``a − b``."""

    a: str = "uld"
    b: str = "lambda0"
    heading: str = "Training-set fraction: λ=0 against ULD (F1)"
    what: str = "ULD − λ=0"

    def collect(self, cells: _Cells, metrics: Sequence[str]) -> dict:
        fracs = sorted({_frac(p) for p in cells.plan.points if p.info["setting"] in (self.a, self.b)})
        rows, records = [], []
        for frac in fracs:
            ci = cells.contrast(self.a, self.b, frac, f"{self.what} ({100 * frac:.0f}%)")
            ids = {s: [r.id for r in cells.runs_of(s, frac)] for s in (self.b, self.a)}
            row = {"train_fraction": frac, self.b: cells.summary(self.b, frac, "f1"), self.a: cells.summary(self.a, frac, "f1"),
                   "contrast": ci, "seed_contrast": cells.seed_contrast(self.a, self.b, frac), "run_ids": ids}
            rows.append(row)
            for setting in (self.b, self.a):
                s = row[setting]
                records.append({"part": "fraction", "setting": setting, "train_fraction": frac, "metric": "f1", "mean": s.mean,
                                "std": s.std, "n_runs": s.n, "ci_low": None, "ci_high": None, "n_items": None,
                                "run_ids": " ".join(ids[setting])})
            records.append({"part": "contrast", "setting": f"{self.a}-{self.b}", "train_fraction": frac, "metric": "f1",
                            "mean": ci.diff if ci else None, "std": None, "n_runs": None, "ci_low": ci.low if ci else None,
                            "ci_high": ci.high if ci else None, "n_items": ci.n_items if ci else None,
                            "run_ids": " ".join(ids[self.a] + ids[self.b]), **seed_ci_record(row["seed_contrast"])})
        return {"panel": self, "rows": rows, "records": records}

    def grid(self, out: dict) -> tuple[list[str], list[list[str]]]:
        la, lb = SETTING_LABELS.get(self.a, self.a), SETTING_LABELS.get(self.b, self.b)
        head = ["Fraction", f"n ({lb} / {la})", f"{lb} F1", f"{la} F1", self.what, "95% CI (questions)", SEED_CI_HEAD]
        body = [[label("train_fraction", r["train_fraction"]), f"{r[self.b].n} / {r[self.a].n}", r[self.b].format(),
                 r[self.a].format(), *_ci_cells(r["contrast"]), seed_ci_cell(r["seed_contrast"])] for r in out["rows"]]
        return head, body

    def markdown(self, out: dict, metrics: Sequence[str]) -> list[str]:
        return panel_markdown(self.heading, *self.grid(out),
                              f"Questions: paired bootstrap over the evaluation questions, seeds averaged per question, "
                              f"{BOOTSTRAP_RESAMPLES:,} resamples, seed {BOOTSTRAP_SEED}. {SEED_CI_NOTE}")

    def latex(self, out: dict, metrics: Sequence[str]) -> list[str]:
        return latex_grid(*self.grid(out))


# --------------------------------------------------------------------------------------------------
# The table
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SeedTable(TableSpec):
    """A study of our runs: ``panels`` in order; ``figure(result, metric)`` draws its figure (or None);
    ``label`` the LaTeX label; ``diagnose``: building the table diagnoses its finished runs."""

    panels: tuple[Any, ...] = ()
    figure: Optional[Callable[..., Any]] = None
    label: str = ""
    diagnose: bool = False  # building the table also writes each finished run's diagnostics.json (uld diagnose)

    def stem(self, preset: str) -> str:
        return f"table_{self.name}"  # one grid for every preset, so one file name

    def collect(self, plan: TablePlan, **_: Any) -> "SeedResult":
        cells = _Cells(plan, self.metrics)
        outs = [panel.collect(cells, self.metrics) for panel in self.panels]
        frame = pd.DataFrame.from_records([r for o in outs for r in o["records"]], columns=CELL_COLUMNS)
        for col in ("n_runs", "n_items"):  # counts stay integers in the CSV, blanks where there is none
            frame[col] = frame[col].astype("Int64")
        # the students' data describe the table (a fine-tuned teacher's run may train on other items)
        students = [p for p in plan.points if p.info["setting"] in ("lambda0", "uld")] or plan.points
        first = students[0].cfg if students else None
        return SeedResult(spec=self, preset=plan.preset, runs=cells.runs, panels=outs, cells=frame, notes=cells.notes,
                          n_points=len(plan.points), n_complete=len(cells.done),
                          task=first.data.task if first is not None else None,
                          train_size=first.data.train_size if first is not None else None,
                          test_size=first.data.test_size if first is not None else None,
                          val_fraction=first.data.val_fraction if first is not None else None,
                          sample_seed=first.data.sample_seed if first is not None else None,
                          sampled=(first.data.pool_order == "shuffled", first.data.test_order == "shuffled")
                          if first is not None else (False, False),
                          hardware=sorted({run_hardware(p.run) for p in cells.done}))


@dataclass
class SeedResult:
    """A collected seed table: the per-run frame figures draw from, each panel's rows, the cells CSV."""

    spec: SeedTable
    preset: str
    runs: Any  # DataFrame: run_id, setting, model, train_fraction, seed, metric, value
    panels: list[dict]
    cells: Any
    notes: list[str] = field(default_factory=list)
    n_points: int = 0
    n_complete: int = 0
    task: Optional[str] = None
    train_size: Optional[int] = None
    test_size: Optional[int] = None
    val_fraction: Optional[float] = None
    sample_seed: Optional[int] = None
    sampled: tuple[bool, bool] = (False, False)  # (training pool, evaluated split) drawn at random, not the first rows
    hardware: list[str] = field(default_factory=list)

    @property
    def stem(self) -> str:
        return self.spec.stem(self.preset)

    def panel(self, kind: type) -> Optional[dict]:
        """The first collected panel of a kind (``SettingRows``, ``Contrast``, ``FractionRows``)."""
        return next((o for o in self.panels if isinstance(o["panel"], kind)), None)

    @property
    def setting_rows(self) -> list[dict]:
        return (self.panel(SettingRows) or {"rows": []})["rows"]

    @property
    def fraction_rows(self) -> list[dict]:
        return (self.panel(FractionRows) or {"rows": []})["rows"]

    @property
    def contrast(self) -> Optional[BootstrapCI]:
        return (self.panel(Contrast) or {"ci": None})["ci"]

    @property
    def seed_contrast(self) -> Optional[SeedQuestionCI]:
        """The :class:`Contrast` panel's seeds × questions interval (None without two paired seeds)."""
        return (self.panel(Contrast) or {"seed_ci": None})["seed_ci"]

    @property
    def contrast_line(self) -> str:
        out = self.panel(Contrast)
        return contrast_text(self.contrast, out["panel"].what if out else "ULD − λ=0", out["seed_ci"] if out else None)

    def _preamble(self, store_root: Optional[Path]) -> list[str]:
        lines = fixture_lines(store_root)
        size = ""
        if self.train_size is not None or self.test_size is not None:
            held = f" ({100 * self.val_fraction:g}% held out for checkpoint selection)" if self.val_fraction else ""
            how = [f"a random sample (seed {self.sample_seed}) of" if s else "the first" for s in self.sampled]
            size = (f"{TASK_NAMES.get(self.task, self.task)}: {how[0]} {self.train_size or 'all'} training-pool items{held}, "
                    f"evaluated on {how[1]} {self.test_size or 'all'} dev questions. ")
        lines.append(f"{self.n_complete} of {self.n_points} grid points have results. {size}"
                     f"Scores ×100; mean ± sample std over seeds, n = runs (seeds) averaged; {MISSING} = no number.")
        if self.hardware:
            lines.append(f"Hardware of these runs: {'; '.join(self.hardware)}.")
        if self.spec.caption:
            lines.append(self.spec.caption)
        return lines

    def markdown(self, store_root: Optional[Path] = None) -> str:
        lines = [f"# {self.spec.title}", "", *self._preamble(store_root), ""]
        for out in self.panels:
            lines += out["panel"].markdown(out, self.spec.metrics)
        if self.notes:
            lines += [""] + [f"- {n}" for n in self.notes]
        lines += ["", f"Run ids of every cell: `{self.stem}.cells.csv`."]
        return "\n".join(lines) + "\n"

    def latex(self) -> str:
        lines = [r"\begin{table}[t]", r"\centering", r"\small"]
        for out in self.panels:
            lines += out["panel"].latex(out, self.spec.metrics)
        caption = (f"{self.spec.title}. {self.n_complete}/{self.n_points} grid points with results. Scores ×100, "
                   f"mean ± std over seeds; – = no number. "
                   + (f"Hardware: {'; '.join(self.hardware)}. " if self.hardware else "") + self.spec.caption)
        lines += [rf"\caption{{{tex_pm(caption)}}}", rf"\label{{tab:{self.spec.label or self.spec.name}}}", r"\end{table}"]
        return "\n".join(lines) + "\n"

    def write(self, out_dir: str | os.PathLike, *, store_root: Optional[Path] = None, figures_dir: Optional[Path] = None) -> dict[str, Path]:
        """``<stem>.md``, ``.tex``, ``.cells.csv`` (atomically) and, with a figure, ``<stem>.png`` / ``.pdf``."""
        out_dir = Path(out_dir)
        paths = {
            "md": atomic_write_text(out_dir / f"{self.stem}.md", self.markdown(store_root)),
            "tex": atomic_write_text(out_dir / f"{self.stem}.tex", self.latex()),
            "csv": atomic_write_text(out_dir / f"{self.stem}.cells.csv", self.cells.to_csv(index=False)),
        }
        if self.spec.figure is not None and figures_dir is not None:
            import matplotlib

            matplotlib.use("Agg")
            import matplotlib.pyplot as plt  # plotting stack only when a figure is written

            fig = self.spec.figure(self, metric="f1")
            try:
                png, pdf = save_figure(fig, self.stem, figures_dir)
            finally:
                plt.close(fig)
            paths.update(png=png, pdf=pdf)
        return paths
