"""Where two arms differ, question by question (exploratory; the primary test is the whole-set contrast).

Two views of "a minus b" (e.g. ULD minus λ=0), both on runs paired by training seed and scored on the
same questions:

- **by group**: F1 within each question type (:func:`question_type`: what / who / how many ...) and each
  gold-answer length (:func:`length_bucket`), each with the seeds × questions interval of
  :func:`uld.reporting.stats.seed_question_ci` restricted to the group's questions. Groups are small,
  so these intervals are wide; they locate a difference, they do not test one.
- **by answer shape**: what each arm writes, whatever its score: answer length, empty answers,
  span-start errors, the most frequent first words, and how often the two arms give the same answer.

Reads run folders and the evaluated split's questions; computes nothing that trains or generates.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Mapping, Optional, Sequence

from uld.data import test_split
from uld.errors import DataError
from uld.io import read_jsonl
from uld.metrics import normalize_answer, span_start_error
from uld.reporting.stats import SeedQuestionCI, seed_question_ci, seed_question_matrix
from uld.reporting.text import MISSING
from uld.store import RunFolder

__all__ = ["QUESTION_TYPES", "LENGTH_BUCKETS", "question_type", "length_bucket", "GroupContrast", "grouped_contrasts",
           "AnswerShape", "answer_shape", "answer_agreement", "Breakdown", "BreakdownRows", "contrast_breakdown"]

# In the order tables list them; "how many" / "how much" before "how" (they ask for a number or amount).
QUESTION_TYPES = ("what", "which", "who", "when", "where", "why", "how many", "how much", "how", "other")
LENGTH_BUCKETS = ("1", "2", "3", "4-5", "6+")
_WH = {"what": "what", "which": "which", "who": "who", "whom": "who", "whose": "who", "when": "when",
       "where": "where", "why": "why"}


def question_type(question: str) -> str:
    """The question's type, from its first interrogative word anywhere in it ("In what year ..." is
    "what"); "how many" and "how much" are their own types; no interrogative word gives "other"."""
    words = re.findall(r"[a-z]+", question.lower())
    for i, w in enumerate(words):
        if w == "how":
            nxt = words[i + 1] if i + 1 < len(words) else ""
            return f"how {nxt}" if nxt in ("many", "much") else "how"
        if w in _WH:
            return _WH[w]
    return "other"


def length_bucket(n_words: int) -> str:
    """A length in (normalized) words as one of :data:`LENGTH_BUCKETS`; 0 words counts as "1"."""
    if n_words <= 1:
        return "1"
    if n_words <= 3:
        return str(n_words)
    return "4-5" if n_words <= 5 else "6+"


def _words(text: str) -> list[str]:
    return normalize_answer(str(text)).split()


@dataclass(frozen=True)
class GroupContrast:
    """``a − b`` on the questions of one group: means over seeds and the group's questions, and the
    seeds × questions interval (None when the group has fewer than 2 questions or 2 seeds)."""

    by: str
    group: str
    n_items: int
    a: float
    b: float
    ci: Optional[SeedQuestionCI]

    @property
    def diff(self) -> float:
        return self.a - self.b


def grouped_contrasts(ids: Sequence[str], a, b, groups: Mapping[str, str], *, by: str,
                      order: Sequence[str] = (), level: float = 0.95) -> list[GroupContrast]:
    """One :class:`GroupContrast` per group of ``groups`` (question id -> group), in ``order`` first, then
    by size; ``a``, ``b``: ``[S, Q]`` per-question scores, column q for ``ids[q]``, row s paired by seed.
    A question id missing from ``groups`` is a KeyError: every scored question belongs to a group."""
    import numpy as np

    a_arr, b_arr = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a_arr.ndim != 2 or a_arr.shape != b_arr.shape or a_arr.shape[1] != len(ids):
        raise ValueError(f"a and b must be [seeds, {len(ids)} questions], got {a_arr.shape} and {b_arr.shape}")
    columns: dict[str, list[int]] = {}
    for j, qid in enumerate(ids):
        columns.setdefault(groups[qid], []).append(j)
    rank = {g: i for i, g in enumerate(order)}
    names = sorted(columns, key=lambda g: (rank.get(g, len(rank)), -len(columns[g]), g))
    out = []
    for g in names:
        cols = columns[g]
        sa, sb = a_arr[:, cols], b_arr[:, cols]
        ci = seed_question_ci(sa, sb, level=level) if sa.shape[0] >= 2 and len(cols) >= 2 else None
        out.append(GroupContrast(by=by, group=g, n_items=len(cols), a=float(sa.mean()), b=float(sb.mean()), ci=ci))
    return out


@dataclass(frozen=True)
class AnswerShape:
    """What one arm writes, pooled over its runs (seeds): ``first_words`` maps a normalized first word to
    its share of the non-empty answers."""

    n_runs: int
    n_answers: int
    mean_words: float
    empty_rate: float
    span_start_error_rate: Optional[float]
    first_words: dict[str, float] = field(default_factory=dict)


def answer_shape(runs_rows: Sequence[Sequence[Mapping[str, Any]]]) -> AnswerShape:
    """:class:`AnswerShape` of prediction records (``prediction``, ``references``), one sequence per run.

    Span-start errors as :func:`uld.metrics.span_start_error`."""
    lengths, firsts, empty, wrong = [], Counter(), 0, 0
    for rows in runs_rows:
        for row in rows:
            words = _words(row["prediction"])
            lengths.append(len(words))
            start = span_start_error(row["prediction"], row["references"])
            if start is None:
                empty += 1
                continue
            firsts[words[0]] += 1
            wrong += start
    n = len(lengths)
    answered = n - empty
    if not n:
        raise ValueError("no prediction records")
    return AnswerShape(n_runs=len(runs_rows), n_answers=n, mean_words=sum(lengths) / n, empty_rate=empty / n,
                       span_start_error_rate=wrong / answered if answered else None,
                       first_words={w: c / answered for w, c in firsts.most_common()})


def answer_agreement(rows_a: Sequence[Mapping[str, Any]], rows_b: Sequence[Mapping[str, Any]]) -> float:
    """Share of the questions (paired by ``id``) where two runs give the same normalized answer."""
    b = {str(r["id"]): normalize_answer(str(r["prediction"])) for r in rows_b}
    a = {str(r["id"]): normalize_answer(str(r["prediction"])) for r in rows_a}
    if set(a) != set(b) or not a:
        raise ValueError(f"the runs answered different questions ({len(set(a) ^ set(b))} ids differ) or none")
    return sum(a[q] == b[q] for q in a) / len(a)


@dataclass
class Breakdown:
    """Everything :func:`contrast_breakdown` found; :meth:`markdown` renders it."""

    what: str
    label_a: str
    label_b: str
    seeds: list[int]
    n_items: int
    groups: dict[str, list[GroupContrast]]
    shape_a: AnswerShape
    shape_b: AnswerShape
    agreement: list[float]  # per seed: share of identical answers between a and b
    top_words: int = 8

    def records(self) -> list[dict[str, Any]]:
        """One flat record per group (for a CSV or a DataFrame)."""
        return [{"by": g.by, "group": g.group, "n_items": g.n_items, self.label_b: g.b, self.label_a: g.a,
                 "diff": g.diff, "ci_low": g.ci.low if g.ci else None, "ci_high": g.ci.high if g.ci else None}
                for rows in self.groups.values() for g in rows]

    def group_grid(self, by: str) -> tuple[list[str], list[list[str]]]:
        head = [by[:1].upper() + by[1:], "Questions", f"{self.label_b} F1", f"{self.label_a} F1", self.what,
                "95% CI (seeds + questions)"]
        body = [[g.group, f"{g.n_items:,}", f"{g.b:.2f}", f"{g.a:.2f}", f"{g.diff:+.2f}",
                 _ci_cell(g.ci)] for g in self.groups[by]]
        return head, body

    def shape_grid(self) -> tuple[list[str], list[list[str]]]:
        sa, sb = self.shape_a, self.shape_b
        body = [["Mean length (words)", f"{sb.mean_words:.2f}", f"{sa.mean_words:.2f}"],
                ["Empty answers", _pct(sb.empty_rate), _pct(sa.empty_rate)],
                ["Span-start errors", _pct(sb.span_start_error_rate), _pct(sa.span_start_error_rate)]]
        words = sorted(set(sa.first_words) | set(sb.first_words),
                       key=lambda w: (-(sa.first_words.get(w, 0) + sb.first_words.get(w, 0)), w))[: self.top_words]
        body += [[f'First word "{w}"', _pct(sb.first_words.get(w, 0.0)), _pct(sa.first_words.get(w, 0.0))] for w in words]
        return ["Answers", self.label_b, self.label_a], body

    @property
    def mean_agreement(self) -> Optional[float]:
        return sum(self.agreement) / len(self.agreement) if self.agreement else None

    def agreement_text(self) -> str:
        per_seed = ", ".join(_pct(x) for x in self.agreement)
        return (f"Same answer from both arms (same seed, normalized): {_pct(self.mean_agreement)} of the questions"
                f" (per seed: {per_seed}).")

    def scope_text(self) -> str:
        return (f"{len(self.seeds)} paired seeds ({', '.join(map(str, self.seeds))}) × {self.n_items:,} questions. "
                "Exploratory: each group's interval (seeds + questions, 95%) is uncorrected for the number of groups.")

    def markdown(self) -> str:
        from uld.reporting.text import markdown_grid

        lines = [self.scope_text()]
        for by in self.groups:
            lines += [""] + markdown_grid(*self.group_grid(by), n_left=1)
        lines += [""] + markdown_grid(*self.shape_grid(), n_left=1) + ["", self.agreement_text()]
        return "\n".join(lines) + "\n"


def _ci_cell(ci: Optional[SeedQuestionCI]) -> str:
    if ci is None:
        return MISSING
    # every seed and question gave the same difference (typically 0: identical answers): no interval to speak of
    return f"[{ci.low:.2f}, {ci.high:.2f}]" if ci.se > 0 else "no variation"


def _pct(v: Optional[float]) -> str:
    return MISSING if v is None else f"{100 * v:.1f}%"


def contrast_breakdown(runs_a: Sequence[RunFolder], runs_b: Sequence[RunFolder], questions: Mapping[str, str], *,
                       what: str = "ULD − λ=0", label_a: str = "ULD", label_b: str = "λ=0", metric: str = "f1",
                       level: float = 0.95) -> Breakdown:
    """:class:`Breakdown` of cell a minus cell b, runs paired by training seed (seeds in one cell only are
    left out). ``questions``: question id -> question text of the evaluated split (e.g. from
    :func:`uld.data.test_split`); the gold length is the first reference's, read from the predictions."""
    seeds, ids, a, b = seed_question_matrix(runs_a, runs_b, metric=metric)
    if not seeds:
        raise ValueError("no training seed has a finished run in both cells")
    by_seed = {}
    for cell, runs in (("a", runs_a), ("b", runs_b)):
        for r in runs:
            by_seed[(cell, int(r.config().training.seed))] = r
    rows = {key: list(read_jsonl(run.file("eval", "predictions.jsonl"))) for key, run in by_seed.items() if key[1] in seeds}
    missing = [q for q in ids if q not in questions]
    if missing:
        raise ValueError(f"{len(missing)} scored question ids have no question text (e.g. {missing[0]}): "
                         "pass the questions of the split these runs were evaluated on")
    gold = {str(r["id"]): len(_words(r["references"][0])) for r in rows[("b", seeds[0])]}
    groups = {
        "question type": grouped_contrasts(ids, a, b, {q: question_type(questions[q]) for q in ids}, by="question type",
                                           order=QUESTION_TYPES, level=level),
        "gold answer length (words)": grouped_contrasts(ids, a, b, {q: length_bucket(gold[q]) for q in ids},
                                                        by="gold answer length (words)", order=LENGTH_BUCKETS, level=level),
    }
    return Breakdown(what=what, label_a=label_a, label_b=label_b, seeds=list(seeds), n_items=len(ids), groups=groups,
                     shape_a=answer_shape([rows[("a", s)] for s in seeds]),
                     shape_b=answer_shape([rows[("b", s)] for s in seeds]),
                     agreement=[answer_agreement(rows[("a", s)], rows[("b", s)]) for s in seeds])


@dataclass(frozen=True)
class BreakdownRows:
    """A :class:`~uld.reporting.seeds.SeedTable` panel: :func:`contrast_breakdown` of the ULD runs of grid
    file ``uld`` against the λ=0 runs of grid file ``lambda0`` (stems). The question texts come from the
    evaluated split (``ULD_DATA_DIR`` offline); without them the panel says so instead of a number."""

    uld: str
    lambda0: str
    heading: str = "Where ULD and λ=0 differ (exploratory)"

    def collect(self, cells, metrics: Sequence[str]) -> dict:
        from uld.reporting.arms import _points

        a = [p.run for p in _points(cells, self.uld, "uld")]
        b = [p.run for p in _points(cells, self.lambda0, "lambda0")]
        out: dict[str, Any] = {"panel": self, "breakdown": None, "note": "", "records": []}
        if not a or not b:
            out["note"] = "No finished runs in both arms yet."
            return out
        try:
            questions = {ex.id: ex.question for ex in test_split(a[0].config().data)}
        except (DataError, OSError) as e:
            out["note"] = f"Needs the questions of the evaluated split (set ULD_DATA_DIR): {e}"
            return out
        try:
            out["breakdown"] = contrast_breakdown(a, b, questions)
        except ValueError as e:  # one seed in both arms, or a split other than the runs'
            out["note"] = f"Not available: {e}"
        return out

    def markdown(self, out: dict, metrics: Sequence[str]) -> list[str]:
        from uld.reporting.text import markdown_grid

        bd: Optional[Breakdown] = out["breakdown"]
        if bd is None:
            return ["", f"## {self.heading}", "", out["note"]]
        lines = ["", f"## {self.heading}", "", bd.scope_text()]
        for by in bd.groups:
            lines += [""] + markdown_grid(*bd.group_grid(by), n_left=1)
        return lines + [""] + markdown_grid(*bd.shape_grid(), n_left=1) + ["", bd.agreement_text()]

    def latex(self, out: dict, metrics: Sequence[str]) -> list[str]:
        from uld.reporting.text import latex_grid, tex

        bd: Optional[Breakdown] = out["breakdown"]
        if bd is None:
            return ["", tex(out["note"])]
        lines: list[str] = []
        for by in bd.groups:
            lines += [r"\smallskip"] + latex_grid(*bd.group_grid(by))
        return lines + [r"\smallskip"] + latex_grid(*bd.shape_grid()) + ["", tex(bd.agreement_text())]
