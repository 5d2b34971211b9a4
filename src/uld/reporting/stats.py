"""Seed statistics and paired intervals: what a seed table says about its cells.

A cell holds the runs of one setting (its seeds). :func:`seed_summary` is their mean ± sample standard
deviation; :func:`paired_contrast` compares two cells on the questions both were evaluated on, seeds
averaged per question, with a paired percentile bootstrap (:func:`paired_bootstrap_ci`). That interval
resamples questions only: it says how the difference would move on other questions for these trained
models, not for other training seeds. :func:`seed_paired_contrast` pairs the runs by seed and counts
both sources (:func:`seed_question_ci`, a crossed seeds × questions random-effects interval);
:func:`variance_components`, :func:`planned_half_width` and :func:`minimum_detectable_effect` size a
study from earlier runs.
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
           "question_scores", "paired_contrast", "VarianceComponents", "variance_components", "SeedQuestionCI",
           "seed_question_ci", "seed_question_matrix", "seed_paired_contrast", "planned_half_width",
           "minimum_detectable_effect", "detection_power"]

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


# --------------------------------------------------------------------------------------------------
# Seeds and questions: a crossed random-effects interval of ULD − λ=0
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class VarianceComponents:
    """Variance components of per-(seed, question) differences ``d[s, q] = mu + u_s + v_q + e_sq``.

    ``seed``: var(u), how much a training seed moves the mean difference; ``question``: var(v), how
    much questions differ in their difference; ``residual``: var(e), the seed × question interaction
    (a question one seed pair disagrees on and another does not). Method-of-moments estimates from the
    two-way layout without replication, negative estimates set to 0. Units: F1² (scores ×100).
    """

    seed: float
    question: float
    residual: float


def _mean_squares(d):
    """``d``: ``[..., S, Q]`` -> (grand mean, MS_seed, MS_question, MS_residual), each ``[...]``."""
    import numpy as np

    s, q = d.shape[-2], d.shape[-1]
    grand = d.mean(axis=(-2, -1))
    rows = d.mean(axis=-1)  # [..., S]
    cols = d.mean(axis=-2)  # [..., Q]
    ms_s = q * ((rows - grand[..., None]) ** 2).sum(axis=-1) / (s - 1)
    ms_q = s * ((cols - grand[..., None]) ** 2).sum(axis=-1) / (q - 1)
    resid = d - rows[..., :, None] - cols[..., None, :] + grand[..., None, None]
    ms_e = (resid ** 2).sum(axis=(-2, -1)) / ((s - 1) * (q - 1))
    return grand, ms_s, ms_q, ms_e


def _check_matrix(d) -> None:
    if d.ndim < 2:
        raise ValueError(f"expected [seeds, questions] scores, got shape {d.shape}")
    if d.shape[-2] < 2:
        raise ValueError(f"{d.shape[-2]} seed(s): seed variance needs at least 2 paired seeds")
    if d.shape[-1] < 2:
        raise ValueError(f"{d.shape[-1]} question(s): question variance needs at least 2")
    import numpy as np

    if not np.isfinite(d).all():
        raise ValueError("per-question scores must be finite")


def variance_components(d) -> VarianceComponents:
    """Estimate :class:`VarianceComponents` from paired differences ``d``: ``[S, Q]`` (S >= 2 seeds,
    Q >= 2 questions; row s = seed s's ULD run minus seed s's λ=0 run, column q = one question).

    E[MS_seed] = var(e) + Q var(u), E[MS_question] = var(e) + S var(v), E[MS_residual] = var(e).
    """
    import numpy as np

    d = np.asarray(d, dtype=np.float64)
    if d.ndim != 2:
        raise ValueError(f"expected a [seeds, questions] matrix, got shape {d.shape}")
    _check_matrix(d)
    s, q = d.shape
    _, ms_s, ms_q, ms_e = _mean_squares(d)
    return VarianceComponents(seed=max(0.0, float(ms_s - ms_e) / q), question=max(0.0, float(ms_q - ms_e) / s),
                              residual=float(ms_e))


def _t_interval(ms_s, ms_q, ms_e, n_seeds: int, n_items: int):
    """Variance of the grand mean and its Satterthwaite degrees of freedom from the mean squares ``[...]``.

    var(mean d) = var(u)/S + var(v)/Q + var(e)/(SQ) = (MS_s + MS_q − MS_e)/(SQ) when both components are
    positive; a component estimated at or below 0 is dropped (its MS then leaves the sum, MS_e's weight
    grows by one), so the variance is never below var(e)/(SQ).
    """
    import numpy as np

    s, q = n_seeds, n_items
    keep_s = ms_s > ms_e
    keep_q = ms_q > ms_e
    w_s = np.where(keep_s, 1.0, 0.0) / (s * q)
    w_q = np.where(keep_q, 1.0, 0.0) / (s * q)
    w_e = (1.0 - keep_s - keep_q) / (s * q)  # 1, 0 or −1 times 1/(SQ)
    var = w_s * ms_s + w_q * ms_q + w_e * ms_e
    denom = (w_s * ms_s) ** 2 / (s - 1) + (w_q * ms_q) ** 2 / (q - 1) + (w_e * ms_e) ** 2 / ((s - 1) * (q - 1))
    df = np.where(denom > 0, var ** 2 / np.where(denom > 0, denom, 1.0), float((s - 1) * (q - 1)))
    df = np.clip(df, s - 1, None)  # never claim fewer degrees of freedom than the seeds give
    return var, df


@dataclass(frozen=True)
class SeedQuestionCI:
    """Interval of ``mean(a − b)`` that counts training seeds and questions (see :func:`seed_question_ci`)."""

    diff: float
    low: float
    high: float
    se: float  # standard error of diff
    df: float  # Satterthwaite degrees of freedom of the t quantile
    n_seeds: int
    n_items: int
    components: VarianceComponents
    level: float = 0.95

    def format(self) -> str:
        return f"[{self.low:.2f}, {self.high:.2f}]"


def seed_question_ci(a, b, *, level: float = 0.95) -> SeedQuestionCI:
    """Interval of the mean difference of two systems trained with the same ``S`` seeds and scored on the
    same ``Q`` questions, counting both sources of variation.

    ``a``, ``b``: ``[S, Q]`` per-question scores; row s of both comes from training seed s (paired by
    seed), column q is one question. The differences follow a crossed random-effects model
    ``d[s, q] = mu + u_s + v_q + e_sq`` (seeds and questions both sampled from larger populations); the
    interval is ``mean(d) ± t_{df, (1+level)/2} · se`` with ``se² = var(u)/S + var(v)/Q + var(e)/(SQ)``
    estimated by the method of moments and Satterthwaite's ``df``. This is what a two-level (seeds ×
    questions) resampling estimates, with a t quantile instead of percentiles: with 3–5 seeds a
    percentile bootstrap of the seeds cannot reach its nominal coverage (3 seeds have 10 distinct
    resamples), while the t quantile with ``df`` near ``S − 1`` does when seeds dominate.
    """
    import numpy as np
    from scipy.stats import t as student_t

    a_arr = np.asarray(a, dtype=np.float64)
    b_arr = np.asarray(b, dtype=np.float64)
    if a_arr.ndim != 2 or a_arr.shape != b_arr.shape:
        raise ValueError(f"a and b must be [seeds, questions] of equal shape, got {a_arr.shape} and {b_arr.shape}")
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    d = a_arr - b_arr
    _check_matrix(d)
    s, q = d.shape
    grand, ms_s, ms_q, ms_e = _mean_squares(d)
    var, df = _t_interval(ms_s, ms_q, ms_e, s, q)
    se = float(np.sqrt(var))
    half = float(student_t.ppf((1 + level) / 2, df)) * se
    return SeedQuestionCI(diff=float(grand), low=float(grand) - half, high=float(grand) + half, se=se, df=float(df),
                          n_seeds=s, n_items=q, components=variance_components(d), level=level)


def _expected_df(c: VarianceComponents, n_seeds: int, n_items: int) -> tuple[float, float]:
    """(variance of the mean difference, Satterthwaite df) a design of ``n_seeds × n_items`` expects."""
    import numpy as np

    s, q = n_seeds, n_items
    ms_s = c.residual + q * c.seed
    ms_q = c.residual + s * c.question
    var, df = _t_interval(np.float64(ms_s), np.float64(ms_q), np.float64(c.residual), s, q)
    return float(var), float(df)


def planned_half_width(c: VarianceComponents, n_seeds: int, n_items: int, *, level: float = 0.95) -> float:
    """Expected half-width of :func:`seed_question_ci` for a design of ``n_seeds`` paired seeds and
    ``n_items`` questions when the differences have variance components ``c``."""
    from scipy.stats import t as student_t

    if n_seeds < 2 or n_items < 2:
        raise ValueError(f"a design needs >= 2 seeds and >= 2 questions, got {n_seeds} x {n_items}")
    var, df = _expected_df(c, n_seeds, n_items)
    return float(student_t.ppf((1 + level) / 2, df)) * var ** 0.5


def minimum_detectable_effect(c: VarianceComponents, n_seeds: int, n_items: int, *, level: float = 0.95,
                              power: float = 0.8) -> float:
    """Smallest true ULD − λ=0 that the two-sided test of :func:`seed_question_ci` at ``1 − level``
    detects with probability ``power``: ``(t_{df,(1+level)/2} + t_{df,power}) · se`` (F1 points)."""
    from scipy.stats import t as student_t

    if not 0 < power < 1:
        raise ValueError(f"power must be in (0, 1), got {power}")
    if n_seeds < 2 or n_items < 2:
        raise ValueError(f"a design needs >= 2 seeds and >= 2 questions, got {n_seeds} x {n_items}")
    var, df = _expected_df(c, n_seeds, n_items)
    return float(student_t.ppf((1 + level) / 2, df) + student_t.ppf(power, df)) * var ** 0.5


def detection_power(c: VarianceComponents, n_seeds: int, n_items: int, effect: float, *, level: float = 0.95) -> float:
    """Probability that the two-sided test of :func:`seed_question_ci` at ``1 − level`` rejects 0 when the true
    mean difference is ``effect`` (F1 points), under a t approximation with the design's expected df."""
    from scipy.stats import t as student_t

    if n_seeds < 2 or n_items < 2:
        raise ValueError(f"a design needs >= 2 seeds and >= 2 questions, got {n_seeds} x {n_items}")
    var, df = _expected_df(c, n_seeds, n_items)
    crit = float(student_t.ppf((1 + level) / 2, df))
    shift = effect / var ** 0.5
    return float(student_t.sf(crit - shift, df) + student_t.cdf(-crit - shift, df))


def _seed_of(run: RunFolder) -> int:
    return int(run.config().training.seed)


def seed_question_matrix(runs_a: Sequence[RunFolder], runs_b: Sequence[RunFolder], *,
                         metric: str = "f1") -> tuple[list[int], list[str], list[list[float]], list[list[float]]]:
    """The runs of two cells paired by training seed: ``(seeds, question ids, a [S, Q], b [S, Q])``.

    Seeds present in only one cell are left out; every kept run must cover the same questions (else
    :class:`uld.results.ResultsError`); a seed repeated within a cell is an error.
    """
    def by_seed(runs: Sequence[RunFolder]) -> dict[int, RunFolder]:
        out: dict[int, RunFolder] = {}
        for r in runs:
            seed = _seed_of(r)
            if seed in out:
                raise ResultsError(f"runs {out[seed].id} and {r.id} of one cell share seed {seed}")
            out[seed] = r
        return out

    ra, rb = by_seed(runs_a), by_seed(runs_b)
    seeds = sorted(set(ra) & set(rb))
    scores_a = [question_scores(ra[s], metric) for s in seeds]
    scores_b = [question_scores(rb[s], metric) for s in seeds]
    ids = sorted(scores_a[0]) if seeds else []
    for seed, sa, sb in zip(seeds, scores_a, scores_b):
        for run, sc in ((ra[seed], sa), (rb[seed], sb)):
            if set(sc) != set(ids):
                raise ResultsError(f"run {run.id} scored other questions than {ra[seeds[0]].id} "
                                   f"({len(set(sc) ^ set(ids))} ids differ): a paired comparison needs one evaluation set")
    return seeds, ids, [[sa[q] for q in ids] for sa in scores_a], [[sb[q] for q in ids] for sb in scores_b]


def seed_paired_contrast(runs_a: Sequence[RunFolder], runs_b: Sequence[RunFolder], *, metric: str = "f1",
                         level: float = 0.95) -> Optional[SeedQuestionCI]:
    """Cell a minus cell b with :func:`seed_question_ci`, runs paired by seed; None below two paired seeds."""
    seeds, _, a, b = seed_question_matrix(runs_a, runs_b, metric=metric)
    if len(seeds) < 2:
        return None
    return seed_question_ci(a, b, level=level)
