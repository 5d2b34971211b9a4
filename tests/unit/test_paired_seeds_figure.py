"""The paired-seeds figure: each seed's two settings joined, each seed's difference, the mean with both
intervals, and the claim under test; on a synthetic run frame."""

from __future__ import annotations

from types import SimpleNamespace

import matplotlib
import pandas as pd
import pytest

from uld.reporting import paired_seeds_figure

matplotlib.use("Agg")


def _runs(values: dict[tuple[str, int], float]) -> pd.DataFrame:
    rows = [{"run_id": f"{s}-{seed}", "setting": s, "model": "m", "train_fraction": 1.0, "seed": seed, "metric": "f1",
             "value": v} for (s, seed), v in values.items()]
    rows.append({"run_id": "em", "setting": "uld", "model": "m", "train_fraction": 1.0, "seed": 1, "metric": "em",
                 "value": 99.0})  # another metric: never drawn
    return pd.DataFrame(rows)


def _table(values, seed_ci=None, ci=None):
    return SimpleNamespace(runs=_runs(values), seed_contrast=seed_ci, contrast=ci)


def test_pairs_by_seed_draws_both_intervals_and_the_claim():
    values = {("lambda0", 1): 50.0, ("uld", 1): 51.0, ("lambda0", 2): 52.0, ("uld", 2): 51.5,
              ("lambda0", 3): 49.0, ("uld", 3): 51.0, ("lambda0", 4): 60.0}  # seed 4 has no ULD run: left out
    seed_ci = SimpleNamespace(diff=0.83, low=-1.5, high=3.2)
    ci = SimpleNamespace(diff=0.83, low=0.1, high=1.6)
    fig = paired_seeds_figure(_table(values, seed_ci, ci), claim=(4.0, "paper: +4.0"))
    ax_a, ax_b = fig.axes
    lines = [ln for ln in ax_a.get_lines() if ln.get_label().startswith("seed")]
    assert [ln.get_label() for ln in lines] == ["seed 1", "seed 2", "seed 3"]
    assert [list(ln.get_ydata()) for ln in lines] == [[50.0, 51.0], [52.0, 51.5], [49.0, 51.0]]  # λ=0 left, ULD right
    means = sorted(float(seg[0, 1]) for c in ax_a.collections for seg in c.get_segments())
    assert means == pytest.approx([(50 + 52 + 49) / 3, (51 + 51.5 + 51) / 3])  # paired seeds only, not seed 4's 60
    dots = ax_b.collections[0].get_offsets()
    assert list(dots[:, 1]) == pytest.approx([1.0, -0.5, 2.0])
    bars = [sorted(c.lines[2][0].get_segments()[0][:, 1]) for c in ax_b.containers]
    assert bars == [pytest.approx([-1.5, 3.2]), pytest.approx([0.1, 1.6])]  # seeds + questions first, then questions
    assert [t.get_text() for t in ax_b.get_xticklabels()][-2:] == ["mean\nseeds +\nquestions", "mean\nquestions\nonly"]
    assert any(list(ln.get_ydata()) == [4.0, 4.0] for ln in ax_b.get_lines())  # the claim's line
    assert ax_b.get_ylim()[1] > 4.0 and "paper: +4.0" in [t.get_text() for t in ax_b.texts]


def test_without_paired_seeds_the_panels_say_so():
    fig = paired_seeds_figure(_table({("lambda0", 1): 50.0}))
    ax_a, ax_b = fig.axes
    assert "no paired seeds yet" in ax_a.get_title() and "fewer than 2 paired seeds" in ax_b.get_title()
    assert not ax_b.containers and not ax_b.texts  # no interval, no claim drawn
    one = paired_seeds_figure(_table({("lambda0", 1): 50.0, ("uld", 1): 52.0}))
    assert "fewer than 2 paired seeds" in one.axes[1].get_title()
    assert list(one.axes[1].collections[0].get_offsets()[:, 1]) == pytest.approx([2.0])
