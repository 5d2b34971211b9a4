"""The committed study tables are what the code renders from the committed runs, and each study's page
(docs/studies/) quotes them: no number on a study page can drift from the run folders behind it."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from uld import tables

REPO = Path(__file__).resolve().parents[2]
# the CPU reference study lives in the main store, the same grid run on other hardware in stores of its own
STORES = [REPO / "results", *sorted(p for p in (REPO / "results").glob("micro_*") if p.is_dir())]


STUDIES = REPO / "docs" / "studies"


def _study_page(name: str) -> str:
    """The study's page, which the README links: the one place its numbers are quoted."""
    page = STUDIES / f"{name}.md"
    assert page.is_file(), f"no study page {page.relative_to(REPO)}"
    assert f"(docs/studies/{name}.md)" in (REPO / "README.md").read_text(), f"README does not link docs/studies/{name}.md"
    return page.read_text()


def _micro_section() -> str:
    return _study_page("micro")


def _committed(store: Path) -> Path:
    table = store / "tables" / "table_micro.md"
    if not table.is_file():
        pytest.skip(f"no committed micro table in {store}")
    return table


@pytest.mark.parametrize("store", STORES, ids=lambda p: p.name)
def test_committed_micro_table_is_rendered_from_the_committed_runs(store, tmp_path):
    committed = _committed(store)
    # render from a copy: a test never writes into the repository
    copy = tmp_path / "store"
    copy.mkdir()
    shutil.copytree(store / "runs", copy / "runs", ignore=shutil.ignore_patterns("checkpoints"))
    built = tables.build_table("micro", report_only=True, store_root=copy, out_dir=tmp_path / "tables")
    assert built.table.n_complete > 0
    assert built.paths["md"].read_text() == committed.read_text()
    assert built.paths["csv"].read_text() == (store / "tables" / "table_micro.cells.csv").read_text()


@pytest.mark.parametrize("store", STORES, ids=lambda p: p.name)
def test_study_page_quotes_the_committed_micro_table(store):
    lines = _committed(store).read_text().splitlines()
    quoted = [ln for ln in lines if ln.startswith("| ") and not ln.startswith("| Setting") and not ln.startswith("| Fraction")]
    quoted += [ln for ln in lines if ln.startswith("ULD − λ=0:") or ln.startswith("Hardware of these runs:")]
    assert len(quoted) >= 8
    section = _micro_section()
    missing = [ln for ln in quoted if ln not in section]
    assert not missing, f"docs/studies/micro.md does not quote {store.name}'s table: {missing}"


# ---- the headroom study ("When does ULD help?") -----------------------------------------------------

HEADROOM = REPO / "results" / "tables" / "table_headroom.md"


def _headroom_section() -> str:
    return _study_page("headroom")


def test_committed_headroom_table_is_rendered_from_the_committed_runs(tmp_path):
    if not HEADROOM.is_file():
        pytest.skip("no committed headroom table")
    copy = tmp_path / "store"
    copy.mkdir()
    shutil.copytree(REPO / "results" / "runs", copy / "runs", ignore=shutil.ignore_patterns("checkpoints"))
    built = tables.build_table("headroom", report_only=True, store_root=copy, out_dir=tmp_path / "tables")
    assert built.table.n_complete > 0
    assert built.paths["md"].read_text() == HEADROOM.read_text()
    assert built.paths["csv"].read_text() == HEADROOM.with_name("table_headroom.cells.csv").read_text()


def test_study_page_quotes_the_committed_headroom_table():
    if not HEADROOM.is_file():
        pytest.skip("no committed headroom table")
    lines = HEADROOM.read_text().splitlines()
    # every arm or setting row that has a number, and the line saying how much of the grid has run
    quoted = [ln for ln in lines if ln.startswith("| ") and not ln.startswith("| Arm") and not ln.startswith("| Setting")
              and any(ch.isdigit() for ch in ln.replace("| 0 / 0 |", ""))]
    quoted += [ln for ln in lines if " grid points have results." in ln]
    assert len(quoted) >= 3
    section = _headroom_section()
    missing = [ln for ln in quoted if ln not in section]
    assert not missing, f"docs/studies/headroom.md does not quote the committed headroom table: {missing}"
