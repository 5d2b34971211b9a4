"""`uld rehearse`: every cell of the five paper grids, end to end, on tiny models of the real architectures.

Slow (about 10 minutes on two CPU cores): 166 grid points, 10 teacher stages, Llama-2 / Mistral teachers and
Pythia / OPT / Bloom / mT0 students with the paper's prompts, shots, titles, chat templates, context lengths,
batch sizes, precision and learning rates, on real slices of the five tasks.
"""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from uld.cli import main

REPO = Path(__file__).resolve().parents[2]
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.mark.slow
def test_every_paper_cell_reaches_its_table(tmp_path, capsys):
    if not (SHARED_DATA / "squad").is_dir():
        pytest.skip("the rehearsal runs on real slices of the five tasks (../shared/data)")
    rc = main(["rehearse", "--store", str(tmp_path), "--data-dir", str(SHARED_DATA)])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "166 of 166 grid points reached their tables" in out
    for name, n in (("main", 85), ("student_size", 45), ("data_fraction", 16), ("encoder_decoder", 12), ("cost_ablation", 8)):
        assert f"{name}: {n} points" in out
        with (tmp_path / "tables" / f"table_{name}.cells.csv").open() as fh:
            rows = list(csv.DictReader(fh))
        assert rows and all(r["ours"] for r in rows if r["metric"] == "f1" and r["run_ids"])
    # the encoder-decoder path ran with mT0's per-task learning rates, the decoders with the paper's
    import json

    summaries = {p.parent.name: json.loads(p.read_text()) for p in (tmp_path / "runs").glob("*/train_summary.json")}
    lrs = {s["lr"] for s in summaries.values() if s.get("trained")}
    assert {1e-6, 7e-6, 3e-4, 1e-4} <= lrs
