"""Analysis notebooks: in sync with their builder, saved without outputs, and executing headless
against the committed fixture store (each starts a kernel and renders figures, a few seconds each)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

REPO = Path(__file__).resolve().parents[2]
FIXTURE = REPO / "tests" / "fixtures" / "store"
NOTEBOOKS = ["data_fraction", "cost_ablation", "student_size", "training_curves", "paper_vs_ours", "micro"]
FIGURES = {
    "data_fraction": ["data_fraction"],
    "cost_ablation": ["cost_ablation"],
    "student_size": ["student_size"],
    "training_curves": ["training_curves_val", "training_curves_train"],
    "paper_vs_ours": ["paper_vs_ours"],
    "micro": ["micro"],
}


def test_notebooks_match_builder_and_have_no_outputs():
    proc = subprocess.run([sys.executable, str(REPO / "scripts" / "build_notebooks.py"), "--check"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for name in NOTEBOOKS:
        nb = nbformat.read(REPO / "analysis" / f"{name}.ipynb", as_version=4)
        code = [c for c in nb.cells if c.cell_type == "code"]
        assert code and all(not c.outputs and c.execution_count is None for c in code)
        assert "uld.pipeline" not in "".join(c.source for c in code)  # they only read the store


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_executes_against_fixture_store(name, tmp_path, monkeypatch):
    from nbclient import NotebookClient

    monkeypatch.setenv("ULD_RESULTS_DIR", str(FIXTURE))
    monkeypatch.setenv("ULD_FIGURES_DIR", str(tmp_path))
    monkeypatch.setenv("MPLBACKEND", "Agg")
    nb = nbformat.read(REPO / "analysis" / f"{name}.ipynb", as_version=4)
    # "python3" runs the kernel on this interpreter (jupyter_client maps argv "python" to sys.executable)
    NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(REPO)}}).execute()
    for stem in FIGURES[name]:
        for ext in ("png", "pdf"):
            path = tmp_path / f"{stem}.{ext}"
            assert path.is_file() and path.stat().st_size > 1000, path
    printed = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs)
    assert "fixture: True" in printed
