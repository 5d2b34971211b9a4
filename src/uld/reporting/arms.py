"""Study arms: one row per experimental arm, ULD against the λ=0 runs it is compared with.

An :class:`Arm` names the grid files (by stem) holding its ULD runs, the λ=0 runs it is contrasted with
and its teacher's own evaluation, so arms that share a λ=0 baseline (a control, a dose, a sharper
signal of the same teacher) are compared with the same runs. :class:`ArmRows` is the panel of a
:class:`~uld.reporting.seeds.SeedTable`: per arm the teacher's F1 and its margin over the λ=0 student,
the teacher signal's top-1 probability at the first answer token (from the runs' ``diagnostics.json``),
λ=0 and ULD F1 (mean ± std over seeds) and the paired bootstrap interval of ULD − λ=0.
:class:`DiagnosticRows` puts the students' own diagnostics beside them, and :func:`arms_figure` plots
the contrast against the teacher's margin and confidence.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional, Sequence

from uld.errors import ResultsError
from uld.reporting.seeds import SEED_CI_HEAD, SEED_CI_NOTE, seed_ci_cell, seed_ci_record
from uld.reporting.stats import BOOTSTRAP_RESAMPLES, BOOTSTRAP_SEED, paired_contrast, seed_paired_contrast, seed_summary
from uld.reporting.text import MISSING, latex_grid, panel_markdown

__all__ = ["Arm", "ArmRows", "DiagnosticRows", "arms_figure"]

DIAGNOSTICS_FILE = "diagnostics.json"  # written by uld.diagnostics (one layer up); read here only


@dataclass(frozen=True)
class Arm:
    """One arm: ``uld``, ``lambda0`` and ``teacher`` are grid-file stems (``headroom_2_baseline``);
    ``where`` narrows the ULD runs of a file by their description (``(("lam", 0.1),)``)."""

    name: str
    uld: str
    lambda0: str
    teacher: str
    where: tuple[tuple[str, Any], ...] = ()


def _points(cells, stem: str, setting: str, where: Sequence[tuple[str, Any]] = ()) -> list[Any]:
    return [p for p in cells.done if p.source.stem == stem and p.info["setting"] == setting
            and all(p.info.get(k) == v for k, v in where)]


def _f1(cells, points) -> Any:
    ids = {p.run.id for p in points}
    r = cells.runs
    return seed_summary(r[r["run_id"].isin(list(ids)) & (r["metric"] == "f1")]["value"].tolist())


def _diagnostic(points, *path: str) -> Optional[float]:
    """Mean over ``points`` of a number in their ``diagnostics.json`` (None when no run has it)."""
    vals = []
    for p in points:
        if not p.run.exists(DIAGNOSTICS_FILE):
            continue
        v: Any = p.run.read_json(DIAGNOSTICS_FILE)
        for key in path:
            v = v.get(key) if isinstance(v, dict) else None
        if v is not None:
            vals.append(float(v))
    return sum(vals) / len(vals) if vals else None


def _num(v: Optional[float], spec: str = ".2f") -> str:
    return MISSING if v is None else format(v, spec)


@dataclass(frozen=True)
class ArmRows:
    """Per arm: teacher F1 and margin over λ=0, the teacher signal's first-token top-1, λ=0 and ULD F1, ULD − λ=0."""

    arms: tuple[Arm, ...]
    heading: str = "Arms: ULD against λ=0 (F1)"

    def collect(self, cells, metrics: Sequence[str]) -> dict:
        rows, records = [], []
        for arm in self.arms:
            lam0, uld = _points(cells, arm.lambda0, "lambda0"), _points(cells, arm.uld, "uld", arm.where)
            teacher = _points(cells, arm.teacher, "teacher")
            s0, s1, st = _f1(cells, lam0), _f1(cells, uld), _f1(cells, teacher)
            ci, seed_ci, note = None, None, None
            if lam0 and uld:
                try:
                    ci = paired_contrast([p.run for p in uld], [p.run for p in lam0])
                    seed_ci = seed_paired_contrast([p.run for p in uld], [p.run for p in lam0])
                except (FileNotFoundError, ResultsError) as exc:
                    note = f"{arm.name}: no interval, {exc}"
            else:
                note = f"{arm.name}: no interval yet, a cell has no finished run"
            if note:
                cells.notes.append(note)
            margin = st.mean - s0.mean if st.mean is not None and s0.mean is not None else None
            row = {"arm": arm, "teacher": st, "lambda0": s0, "uld": s1, "contrast": ci, "seed_contrast": seed_ci, "margin": margin,
                   "teacher_top1": _diagnostic(uld, "teacher_signal", "first_token_top1"),
                   "teacher_top1_all": _diagnostic(uld, "teacher_signal", "answer_top1"),
                   "run_ids": {"lambda0": [p.run.id for p in lam0], "uld": [p.run.id for p in uld],
                               "teacher": [p.run.id for p in teacher]}}
            rows.append(row)
            records += self._records(row)
        return {"panel": self, "rows": rows, "records": records}

    @staticmethod
    def _records(row: dict) -> list[dict]:
        name, ci = row["arm"].name, row["contrast"]
        out = []
        for setting in ("teacher", "lambda0", "uld"):
            s = row[setting]
            out.append({"part": f"arm:{name}", "setting": setting, "train_fraction": 1.0, "metric": "f1", "mean": s.mean,
                        "std": s.std, "n_runs": s.n, "ci_low": None, "ci_high": None, "n_items": None,
                        "run_ids": " ".join(row["run_ids"][setting])})
        out.append({"part": f"arm:{name}", "setting": "uld-lambda0", "train_fraction": 1.0, "metric": "f1",
                    "mean": ci.diff if ci else None, "std": None, "n_runs": None, "ci_low": ci.low if ci else None,
                    "ci_high": ci.high if ci else None, "n_items": ci.n_items if ci else None,
                    "run_ids": " ".join(row["run_ids"]["uld"] + row["run_ids"]["lambda0"]),
                    **seed_ci_record(row["seed_contrast"])})
        return out

    def grid(self, out: dict) -> tuple[list[str], list[list[str]]]:
        head = ["Arm", "Teacher F1", "Teacher top-1 (1st token)", "λ=0 F1", "ULD F1", "Teacher − λ=0", "ULD − λ=0",
                "95% CI (questions)", SEED_CI_HEAD, "n (λ=0 / ULD)"]
        body = []
        for r in out["rows"]:
            ci = r["contrast"]
            body.append([r["arm"].name, r["teacher"].format(), _num(r["teacher_top1"], ".3f"), r["lambda0"].format(),
                         r["uld"].format(), _num(r["margin"], "+.2f"), MISSING if ci is None else f"{ci.diff:+.2f}",
                         MISSING if ci is None else f"[{ci.low:.2f}, {ci.high:.2f}]", seed_ci_cell(r["seed_contrast"]),
                         f"{r['lambda0'].n} / {r['uld'].n}"])
        return head, body

    def markdown(self, out: dict, metrics: Sequence[str]) -> list[str]:
        return panel_markdown(self.heading, *self.grid(out),
                              "Teacher top-1: mean probability of the cached teacher signal's top token at the first answer "
                              "token of the training answers (at the signal's temperature), from the ULD runs' diagnostics. "
                              f"Questions: paired bootstrap over the evaluation questions, seeds averaged per question, "
                              f"{BOOTSTRAP_RESAMPLES:,} resamples, seed {BOOTSTRAP_SEED}. {SEED_CI_NOTE}")

    def latex(self, out: dict, metrics: Sequence[str]) -> list[str]:
        return latex_grid(*self.grid(out))


@dataclass(frozen=True)
class DiagnosticRows:
    """Per arm, λ=0 against ULD on the evaluation questions: first-token top-1 and p(gold), span-start
    errors, answer length (means over seeds of each run's ``diagnostics.json``)."""

    arms: tuple[Arm, ...]
    heading: str = "Diagnostics of the students (evaluation questions; λ=0 / ULD)"

    QUANTITIES = (("First-token top-1", ("confidence_on_gold", "first_token_top1"), ".3f"),
                  ("First-token p(gold)", ("confidence_on_gold", "first_token_p_gold"), ".3f"),
                  ("Span-start errors", ("predictions", "span_start_error_rate"), ".3f"),
                  ("Answer words", ("predictions", "mean_answer_words"), ".1f"))

    def collect(self, cells, metrics: Sequence[str]) -> dict:
        rows = []
        for arm in self.arms:
            lam0, uld = _points(cells, arm.lambda0, "lambda0"), _points(cells, arm.uld, "uld", arm.where)
            rows.append({"arm": arm, "values": {label: (_diagnostic(lam0, *path), _diagnostic(uld, *path))
                                                for label, path, _ in self.QUANTITIES}})
        return {"panel": self, "rows": rows, "records": []}

    def grid(self, out: dict) -> tuple[list[str], list[list[str]]]:
        head = ["Arm"] + [label for label, _, _ in self.QUANTITIES]
        body = [[r["arm"].name] + [f"{_num(r['values'][label][0], spec)} / {_num(r['values'][label][1], spec)}"
                                   for label, _, spec in self.QUANTITIES] for r in out["rows"]]
        return head, body

    def markdown(self, out: dict, metrics: Sequence[str]) -> list[str]:
        return panel_markdown(self.heading, *self.grid(out),
                              "Teacher-forced on each question's first reference with the prompt it was evaluated with "
                              "(`uld diagnose`). Span-start error: a non-empty answer whose first word starts no reference.")

    def latex(self, out: dict, metrics: Sequence[str]) -> list[str]:
        return latex_grid(*self.grid(out), align="c")


@dataclass(frozen=True)
class RunRows:
    """One row per finished run of the given settings: seed, best validation step of its steps (from its
    ``train_summary.json``), best validation loss and F1, so a reader sees whether training ran past
    its best checkpoint in every run, not just the one a check looked at."""

    settings: tuple[str, ...]
    heading: str = "Runs: the checkpoint each was evaluated at"

    def collect(self, cells, metrics: Sequence[str]) -> dict:
        f1 = cells.runs[cells.runs["metric"] == "f1"].set_index("run_id")["value"]
        rows = []
        for p in sorted((p for p in cells.done if p.info["setting"] in self.settings),
                        key=lambda p: (self.settings.index(p.info["setting"]), p.info.get("seed") or 0)):
            summary = p.run.read_json("train_summary.json") if p.run.exists("train_summary.json") else {}
            rows.append({"run_id": p.run.id, "setting": p.info["setting"], "seed": p.info.get("seed"),
                         "best_step": summary.get("best_step"), "steps": summary.get("steps"),
                         "best_val_loss": summary.get("best_val_loss"),
                         "f1": float(f1[p.run.id]) if p.run.id in f1.index else None})
        return {"panel": self, "rows": rows, "records": [{"part": "runs", **r} for r in rows]}

    def grid(self, out: dict) -> tuple[list[str], list[list[str]]]:
        head = ["Run", "Setting", "Seed", "Best step / steps", "Best val. loss", "F1"]
        body = [[f"`{r['run_id']}`", r["setting"], MISSING if r["seed"] is None else str(r["seed"]),
                 f"{_num(r['best_step'], 'd')} / {_num(r['steps'], 'd')}", _num(r["best_val_loss"], ".3f"),
                 _num(r["f1"], ".2f")] for r in out["rows"]]
        return head, body

    def markdown(self, out: dict, metrics: Sequence[str]) -> list[str]:
        return panel_markdown(self.heading, *self.grid(out),
                              "Best step: the optimizer step of the lowest validation loss, the checkpoint evaluated.")

    def latex(self, out: dict, metrics: Sequence[str]) -> list[str]:
        return latex_grid(*self.grid(out), align="c")


def _dodge(xs: Sequence[float], width: float) -> list[float]:
    """Spread points that share an x (within 1% of the axis span) side by side, centred on it, so arms
    with the same teacher (controls, doses) stay readable instead of stacking on one line."""
    span = (max(xs) - min(xs)) if xs else 0.0
    tol = 0.01 * span if span else 1e-9
    step = width * (span if span else 1.0)
    groups: list[list[int]] = []
    for i in sorted(range(len(xs)), key=lambda k: xs[k]):
        if groups and abs(xs[i] - xs[groups[-1][0]]) <= tol:
            groups[-1].append(i)
        else:
            groups.append([i])
    out = list(xs)
    for g in groups:
        for j, i in enumerate(g):
            out[i] = xs[i] + (j - (len(g) - 1) / 2) * step
    return out


def arms_figure(table: Any, metric: str = "f1") -> Any:
    """ULD − λ=0 (paired 95% interval) per arm against (a) the teacher's F1 margin over the λ=0 student and
    (b) the teacher signal's first-token top-1. The interval counts seeds and questions (filled marker)
    where two or more seeds pair, else questions only (hollow marker). Arms without a number are left out.
    Each arm keeps one colour in both panels, named in a shared legend; arms at the same x are drawn side
    by side."""
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    out = table.panel(ArmRows)
    rows = [r for r in (out["rows"] if out else []) if r["contrast"] is not None]
    colours = [plt.cm.tab10(i % 10) for i in range(len(rows))]
    fig, axes = plt.subplots(1, 2, figsize=(9.5, 4.4), sharey=True)
    for ax, key, xlabel in ((axes[0], "margin", "teacher F1 − λ=0 student F1"),
                            (axes[1], "teacher_top1", "teacher top-1 at the first answer token")):
        pts = [(i, r) for i, r in enumerate(rows) if r[key] is not None]
        xs = _dodge([float(r[key]) for _, r in pts], width=0.012)
        for x, (i, r) in zip(xs, pts):
            ci = r.get("seed_contrast") or r["contrast"]  # seeds + questions where two seeds pair, as the table
            ax.errorbar(x, ci.diff, yerr=[[ci.diff - ci.low], [ci.high - ci.diff]], fmt="o", capsize=3,
                        color=colours[i], mfc=colours[i] if r.get("seed_contrast") else "white")
        ax.axhline(0.0, color="grey", linewidth=1, linestyle="--")
        ax.set_xlabel(xlabel)
        if not pts:
            ax.text(0.5, 0.5, "no arm with both numbers yet", transform=ax.transAxes, ha="center", fontsize=8)
    axes[0].set_ylabel("ULD − λ=0 (F1, 95% CI)")
    fig.text(0.99, 0.01, "filled: seeds + questions interval; hollow: questions only (< 2 paired seeds)",
             ha="right", va="bottom", fontsize=6, color="grey")
    axes[0].set_title("(a) teacher headroom")
    axes[1].set_title("(b) teacher confidence")
    if rows:
        handles = [Line2D([], [], marker="o", linestyle="", color=c) for c in colours]
        fig.legend(handles, [r["arm"].name for r in rows], loc="lower center", ncol=min(4, len(rows)),
                   fontsize=7, frameon=False)
        fig.tight_layout(rect=(0, 0.045 * ((len(rows) + 3) // 4), 1, 1))
    else:
        fig.tight_layout()
    return fig
