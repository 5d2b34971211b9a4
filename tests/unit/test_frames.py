"""The training-fraction frame behind analysis/data_fraction: our series and the authors' never share a
panel, each panel says whose numbers it shows and at what scale, and stores stay apart."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from uld import reporting
from uld.results import load_results

REPO = Path(__file__).resolve().parents[2]
FIXTURE = REPO / "tests" / "fixtures" / "store"


def test_fraction_panels_name_whose_numbers_and_the_scale():
    frac = reporting.fraction_frame(load_results(FIXTURE, source="both"))
    for panel, g in frac.groupby("panel"):
        assert g["source"].nunique() == 1, panel  # never ours and the authors' in one panel
        source = g["source"].iloc[0]
        assert panel.startswith(f"{source}: "), panel
        assert g["pair"].iloc[0] in panel
    ours = frac[(frac.source == "ours") & (frac.student == "smollm2-135m-instruct")]
    assert ours["panel"].str.contains("64 training items").all()  # the fixture's pool of 64 items
    assert frac[frac.source == "authors"]["panel"].str.contains("the paper's training set").all()


def test_fraction_series_of_two_stores_are_not_averaged():
    """The same grid run on two machines (results/ and results/micro_<hw>/) gives two series, not their mean."""
    ours = load_results(FIXTURE)
    other = ours.copy()
    other["run_dir"] = other["run_dir"].str.replace(str(FIXTURE), str(FIXTURE / "micro_x"), regex=False)
    other["value"] = other["value"] + 10
    frac = reporting.fraction_frame(pd.concat([ours, other], ignore_index=True))
    small = frac[frac.student == "smollm2-135m-instruct"]
    assert set(small["store"]) == {"store", "micro_x"}
    assert small["panel"].nunique() == 2
    for (setting, fraction), g in small.groupby(["setting", "train_fraction"]):
        a, b = (g[g.store == s]["value"].item() for s in ("store", "micro_x"))
        assert abs(b - a - 10) < 1e-9 and (g["n_runs"] == 1).all()


def test_panel_columns_leave_no_empty_slot_where_they_can():
    cols = {n: reporting.panel_columns(n) for n in range(1, 10)}
    assert cols == {1: 1, 2: 2, 3: 3, 4: 2, 5: 3, 6: 3, 7: 3, 8: 3, 9: 3}
    for n in (1, 2, 3, 4, 6, 9):
        assert n % cols[n] == 0  # every row full
