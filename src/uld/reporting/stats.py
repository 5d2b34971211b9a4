"""Seed statistics and paired intervals: what a seed table says about its cells.

A cell holds the runs of one setting (its seeds). :func:`seed_summary` is their mean ± sample standard
deviation; :func:`paired_contrast` compares two cells on the questions both were evaluated on, seeds
averaged per question, with a paired percentile bootstrap (:func:`paired_bootstrap_ci`).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Iterable, Optional, Sequence

from uld.errors import ResultsError
from uld.io import read_json, read_jsonl
from uld.reporting.text import MISSING
from uld.store import RunFolder

__all__ = ["BOOTSTRAP_RESAMPLES", "BOOTSTRAP_SEED", "SeedSummary", "seed_summary", "BootstrapCI", "paired_bootstrap_ci",
           "question_scores", "paired_contrast"]

BOOTSTRAP_RESAMPLES = 10_000
BOOTSTRAP_SEED = 0


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
