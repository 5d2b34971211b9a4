"""The seeds × questions interval of ULD − λ=0 (uld.reporting.stats): against naive references, its
coverage on synthetic data with known seed and question variance, and the study-sizing functions."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import t as student_t

from uld.reporting import stats
from uld.reporting.stats import (VarianceComponents, minimum_detectable_effect, paired_bootstrap_ci, paired_contrast,
                                 planned_half_width, seed_paired_contrast, seed_question_ci, variance_components)
from uld.store import RunFolder

REPO = Path(__file__).resolve().parents[2]


def _naive_anova(d: list[list[float]]) -> tuple[float, float, float]:
    """Mean squares of a two-way layout without replication, with loops."""
    s, q = len(d), len(d[0])
    grand = sum(sum(r) for r in d) / (s * q)
    rows = [sum(r) / q for r in d]
    cols = [sum(d[i][j] for i in range(s)) / s for j in range(q)]
    ss_s = q * sum((r - grand) ** 2 for r in rows)
    ss_q = s * sum((c - grand) ** 2 for c in cols)
    ss_e = sum((d[i][j] - rows[i] - cols[j] + grand) ** 2 for i in range(s) for j in range(q))
    return ss_s / (s - 1), ss_q / (q - 1), ss_e / ((s - 1) * (q - 1))


def _simulate(rng, reps: int, s: int, q: int, sd_seed: float, sd_question: float, sd_resid: float, mu: float = 1.0):
    """[reps, S, Q] paired differences of a crossed model with known components (true mean ``mu``)."""
    u = rng.normal(0, sd_seed, size=(reps, s, 1))
    v = rng.normal(0, sd_question, size=(reps, 1, q))
    e = rng.normal(0, sd_resid, size=(reps, s, q))
    return mu + u + v + e


def test_variance_components_match_a_naive_anova():
    rng = np.random.default_rng(1)
    d = _simulate(rng, 1, 4, 30, 2.0, 5.0, 3.0)[0]
    ms_s, ms_q, ms_e = _naive_anova(d.tolist())
    c = variance_components(d)
    assert c.seed == pytest.approx(max(0.0, (ms_s - ms_e) / 30))
    assert c.question == pytest.approx(max(0.0, (ms_q - ms_e) / 4))
    assert c.residual == pytest.approx(ms_e)


def test_seed_only_differences_give_the_one_sample_t_interval_of_the_seed_means():
    # every question moves with its seed alike: the interval is the t interval of S seed means
    rng = np.random.default_rng(2)
    seed_means = np.array([1.0, -0.5, 2.5, 0.7])
    d = seed_means[:, None] + rng.normal(0, 1e-6, size=(4, 50))
    ci = seed_question_ci(d, np.zeros_like(d))
    half = student_t.ppf(0.975, 3) * seed_means.std(ddof=1) / 2
    assert ci.diff == pytest.approx(seed_means.mean())
    assert ci.high - ci.diff == pytest.approx(half, rel=1e-3)
    assert ci.df == pytest.approx(3, rel=1e-3) and (ci.n_seeds, ci.n_items) == (4, 50)


def test_refuses_one_seed_and_mismatched_shapes():
    with pytest.raises(ValueError, match="2 paired seeds"):
        seed_question_ci([[1.0, 2.0]], [[0.0, 0.0]])
    with pytest.raises(ValueError, match="equal shape"):
        seed_question_ci([[1.0, 2.0], [1.0, 2.0]], [[0.0, 0.0]])


def _coverage(rng, reps, s, q, sd_seed, sd_question, sd_resid, mu=1.0):
    """Fraction of replications whose seeds × questions interval, and whose question-only paired
    bootstrap (seeds averaged per question, as the tables had it), cover ``mu``."""
    d = _simulate(rng, reps, s, q, sd_seed, sd_question, sd_resid, mu)
    grand, ms_s, ms_q, ms_e = stats._mean_squares(d)
    var, df = stats._t_interval(ms_s, ms_q, ms_e, s, q)
    half = student_t.ppf(0.975, df) * np.sqrt(var)
    for i in range(3):  # the vectorised path is the public function's
        one = seed_question_ci(d[i], np.zeros_like(d[i]))
        assert (one.low, one.high) == pytest.approx((grand[i] - half[i], grand[i] + half[i]))
    seed_aware = np.mean(np.abs(grand - mu) <= half)
    per_question = d.mean(axis=1)
    question_only = np.mean([(lambda ci: ci.low <= mu <= ci.high)(paired_bootstrap_ci(per_question[i], np.zeros(q), resamples=400, seed=i))
                             for i in range(reps)])
    return seed_aware, question_only


@pytest.mark.parametrize("n_seeds, low", [(3, 0.89), (5, 0.92)])
def test_coverage_when_seed_variance_dominates(n_seeds, low):
    # measured over 8,000 replications: 0.926 at 3 seeds (Satterthwaite's df is a little generous when
    # the seed mean square has 2 df), 0.940 at 5; 400 replications here have a binomial sd of ~1.2%
    seed_aware, question_only = _coverage(np.random.default_rng(3), 400, s=n_seeds, q=300, sd_seed=3.0, sd_question=10.0,
                                          sd_resid=20.0)
    assert low <= seed_aware <= 0.98, seed_aware
    assert question_only < 0.80, question_only  # the interval the tables printed before misses seed variance


def test_coverage_when_question_variance_dominates():
    seed_aware, question_only = _coverage(np.random.default_rng(4), 400, s=5, q=300, sd_seed=0.2, sd_question=20.0, sd_resid=25.0)
    assert 0.92 <= seed_aware <= 0.98, seed_aware
    assert question_only >= 0.90, question_only


def test_planned_half_width_and_minimum_detectable_effect():
    only_seeds = VarianceComponents(seed=4.0, question=0.0, residual=0.0)
    assert planned_half_width(only_seeds, 5, 100) == pytest.approx(student_t.ppf(0.975, 4) * 2 / math.sqrt(5))
    c = VarianceComponents(seed=1.0, question=400.0, residual=600.0)
    se = math.sqrt(1.0 / 5 + 400.0 / 2000 + 600.0 / 10000)
    ms_s, ms_q, ms_e = 600 + 2000 * 1.0, 600 + 5 * 400.0, 600.0
    w = 1 / 10000
    df = (se ** 2) ** 2 / ((w * ms_s) ** 2 / 4 + (w * ms_q) ** 2 / 1999 + (w * ms_e) ** 2 / (4 * 1999))
    assert planned_half_width(c, 5, 2000) == pytest.approx(student_t.ppf(0.975, df) * se)
    assert minimum_detectable_effect(c, 5, 2000) == pytest.approx((student_t.ppf(0.975, df) + student_t.ppf(0.8, df)) * se)
    assert planned_half_width(c, 8, 2000) < planned_half_width(c, 5, 2000) < planned_half_width(c, 5, 500)
    mde = minimum_detectable_effect(c, 5, 2000)
    assert stats.detection_power(c, 5, 2000, mde) == pytest.approx(0.8, abs=0.005)  # the far tail adds ~nothing
    assert stats.detection_power(c, 5, 2000, 0.0) == pytest.approx(0.05)


def _runs(*names: str) -> list[RunFolder]:
    runs = [RunFolder(REPO / "results" / "runs" / n) for n in names]
    if not all(r.exists("eval", "predictions.jsonl") for r in runs):
        pytest.skip("committed runs absent")
    return runs


def test_seed_paired_contrast_on_committed_runs_pairs_by_seed():
    from uld.reporting.spec import plan_table

    plan = plan_table("headroom", store_root=REPO / "results")
    cell = {(p.info["setting"], p.info["seed"]): p.run for p in plan.points
            if p.source.stem == "headroom_1_strong" and p.complete}
    if len(cell) < 6:
        pytest.skip("the strong-teacher arm is not committed")
    uld = [cell[("uld", s)] for s in (3, 1, 2)]  # order must not matter: pairing is by seed
    lam0 = [cell[("lambda0", s)] for s in (1, 2, 3)]
    ci = seed_paired_contrast(uld, lam0)
    q_only = paired_contrast(uld, lam0)
    assert ci.n_seeds == 3 and ci.n_items == q_only.n_items == 500
    assert ci.diff == pytest.approx(q_only.diff)
    assert ci.high - ci.low > q_only.high - q_only.low
    assert seed_paired_contrast(uld[:1], lam0) is None  # one paired seed: no seed variance to estimate
