"""Analysis notebooks: one jupytext source each, committed executed (their figures show on GitHub),
and executing headless against the committed fixture store (each starts a kernel, a few seconds)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

REPO = Path(__file__).resolve().parents[2]
FIXTURE = REPO / "tests" / "fixtures" / "store"
sys.path.insert(0, str(REPO / "scripts"))
import build_notebooks  # noqa: E402

FIGURES = {
    "data_fraction": ["data_fraction"],
    "cost_ablation": ["cost_ablation"],
    "student_size": ["student_size"],
    "training_curves": ["training_curves_val", "training_curves_train"],
    "paper_vs_ours": ["paper_vs_ours"],
    "micro": ["micro"],
}
NOTEBOOKS = sorted(FIGURES)


def test_every_notebook_has_one_source_and_is_committed_executed():
    assert sorted(build_notebooks.sources()) == sorted(set(NOTEBOOKS) | {"headroom", "powered"})
    proc = subprocess.run([sys.executable, str(REPO / "scripts" / "build_notebooks.py"), "--check"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for name in build_notebooks.sources():
        nb = nbformat.read(REPO / "analysis" / f"{name}.ipynb", as_version=4)
        code = [c for c in nb.cells if c.cell_type == "code"]
        assert "uld.pipeline" not in "".join(c.source for c in code)  # they only read the store
        printed = "".join(o.get("text", "") for c in code for o in c.outputs)
        assert "fixture: False" in printed  # built from the real store, not the test fixture
        images = [o for c in code for o in c.outputs if "image/png" in o.get("data", {})]
        assert images, f"{name}.ipynb shows no figure"


def test_every_notebook_says_first_whose_numbers_each_figure_shows():
    """The first cell names every figure the notebook saves and says whether it is ours or the authors'."""
    for name, path in build_notebooks.sources().items():
        first = build_notebooks.from_source(path).cells[0]
        assert first.cell_type == "markdown", name
        assert "**Whose numbers.**" in first.source, f"{name}: the first cell does not say whose numbers it draws"
        whose = first.source.split("**Whose numbers.**", 1)[1]
        assert "ours" in whose and "authors" in whose, name
        for stem in FIGURES.get(name, [name]):
            assert f"`{stem}`" in whose, f"{name}: the first cell does not name figure {stem}"


def test_check_reports_a_notebook_out_of_step(tmp_path, monkeypatch):
    src = REPO / "analysis" / "micro.py"
    (tmp_path / "micro.py").write_text(src.read_text() + "\n# %%\nprint('new cell')\n")
    (tmp_path / "micro.ipynb").write_text((REPO / "analysis" / "micro.ipynb").read_text())
    monkeypatch.setattr(build_notebooks, "ANALYSIS", tmp_path)
    problems = build_notebooks.check(["micro"])
    assert problems and "cells differ" in problems[0]


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_executes_against_fixture_store(name, tmp_path, monkeypatch):
    monkeypatch.setenv("ULD_RESULTS_DIR", str(FIXTURE))
    monkeypatch.setenv("ULD_FIGURES_DIR", str(tmp_path))
    monkeypatch.setenv("MPLBACKEND", "Agg")
    nb = build_notebooks.execute(build_notebooks.from_source(REPO / "analysis" / f"{name}.py"), timeout=300)
    for stem in FIGURES[name]:
        for ext in ("png", "pdf"):
            path = tmp_path / f"{stem}.{ext}"
            assert path.is_file() and path.stat().st_size > 1000, path
    printed = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs)
    assert "fixture: True" in printed
    assert any("image/png" in o.get("data", {}) for c in nb.cells if c.cell_type == "code" for o in c.outputs)
