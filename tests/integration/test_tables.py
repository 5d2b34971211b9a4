"""Every paper_tables/ script builds from the fixture store (--report-only), for both presets, and
its cells carry the numbers of the runs and of the authors' file."""

from __future__ import annotations

import csv
import importlib.util
import json
import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
FIXTURE = REPO / "tests" / "fixtures" / "store"
TABLES = ["main", "student_size", "data_fraction", "encoder_decoder", "cost_ablation"]


def _script(name: str):
    spec = importlib.util.spec_from_file_location(f"table_{name}", REPO / "paper_tables" / f"table_{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _fmt(v: float) -> str:
    return f"{v:.2f}"


@pytest.mark.parametrize("preset", ["paper", "small"])
@pytest.mark.parametrize("name", TABLES)
def test_table_script_builds_from_fixture_store(name, preset, tmp_path, capsys):
    rc = _script(name).main(["--report-only", "--store", str(FIXTURE), "--out", str(tmp_path), "--preset", preset])
    assert rc == 0
    stem = f"table_{name}" + ("" if preset == "paper" else "_small")
    out = capsys.readouterr().out
    assert f"wrote {tmp_path / (stem + '.md')}" in out
    md = (tmp_path / f"{stem}.md").read_text()
    assert (tmp_path / f"{stem}.tex").read_text().startswith(r"\begin{table*}")
    with (tmp_path / f"{stem}.cells.csv").open() as fh:
        cells = list(csv.DictReader(fh))
    assert cells
    checked = 0
    for cell in cells:
        run_ids = cell["run_ids"].split()
        if len(run_ids) == 1:  # ours is exactly what the run's scores.json says
            scores = json.loads((FIXTURE / "runs" / run_ids[0] / "scores.json").read_text())
            assert float(cell["ours"]) == pytest.approx(scores["metrics"][cell["metric"]])
            assert _fmt(float(cell["ours"])) in md
            checked += 1
        elif not run_ids:
            assert cell["ours"] == ""
        if cell["authors"] and cell["ours"]:
            assert float(cell["diff"]) == pytest.approx(float(cell["ours"]) - float(cell["authors"]))
    assert checked > 0
    if preset == "small":
        assert all(c["authors"] == "" for c in cells)  # stand-in models: nothing to compare with
    else:
        assert any(c["authors"] for c in cells)


def test_encoder_decoder_small_shows_the_missing_run(tmp_path):
    _script("encoder_decoder").main(["--report-only", "--store", str(FIXTURE), "--out", str(tmp_path), "--preset", "small"])
    lines = [l for l in (tmp_path / "table_encoder_decoder_small.md").read_text().splitlines() if "| ULD |" in l]
    assert len(lines) == 1 and lines[0].count("| – ") >= 9
    assert "1 of 2 grid points have results" in (tmp_path / "table_encoder_decoder_small.md").read_text()


def test_script_and_build_table_agree(tmp_path):
    from uld.tables import build_table

    _script("main").main(["--report-only", "--store", str(FIXTURE), "--out", str(tmp_path / "a")])
    built = build_table("main", report_only=True, store_root=FIXTURE, out_dir=tmp_path / "b")
    for ext in ("md", "tex", "cells.csv"):
        assert (tmp_path / "a" / f"table_main.{ext}").read_text() == (tmp_path / "b" / f"table_main.{ext}").read_text()
    assert built.paths["md"] == tmp_path / "b" / "table_main.md"


def test_report_only_with_force_is_refused(tmp_path):
    with pytest.raises(SystemExit):
        _script("main").main(["--report-only", "--force", "--store", str(FIXTURE), "--out", str(tmp_path)])


def _recording_runner(cfg, force=False):
    """Runs a point as the table does and notes which process ran it with how many threads."""
    import os

    import torch

    from uld import tables

    folders = tables._run(cfg, force=force)
    note = Path(cfg.output_dir) / "workers" / f"{cfg.training.seed}.json"
    note.parent.mkdir(exist_ok=True)
    note.write_text(json.dumps({"pid": os.getpid(), "threads": torch.get_num_threads()}))
    return folders


def test_missing_runs_in_two_worker_processes(tiny_models, shared_data_dir, tmp_path):
    """`--workers 2`: the points run in two processes of half the cores each, and give the records one
    process gives."""
    import os

    from uld.config import ExperimentConfig, from_dict
    from uld.reporting.spec import GridPoint, TablePlan
    from uld.store import RunFolder
    from uld.tables import launch_missing

    def plan(root: Path) -> TablePlan:
        points = []
        for seed in (1, 2, 3):
            cfg = from_dict(ExperimentConfig, {
                "name": "workers", "student": {"name": "tiny-student", "path": str(tiny_models["student"])},
                "data": {"task": "qed", "dir": str(shared_data_dir), "test_size": 3, "train_size": 40},
                "training": {"method": "none", "seed": seed},
                "evaluation": {"metrics": ["f1", "em"], "max_new_tokens": 4, "batch_size": 3},
                "output_dir": str(root), "device": "cpu",
            })  # fmt: skip
            points.append(GridPoint(cfg, Path("workers.yaml"), RunFolder.for_config(cfg), {}))
        return TablePlan(spec=None, preset="small", store_root=root, points=points)

    parallel, serial = plan(tmp_path / "a"), plan(tmp_path / "b")
    report = launch_missing(parallel, workers=2, runner=_recording_runner)
    assert not report.failed and sorted(report.launched) == sorted(p.run.id for p in parallel.points)
    notes = [json.loads(f.read_text()) for f in (tmp_path / "a" / "workers").glob("*.json")]
    assert len(notes) == 3 and os.getpid() not in {n["pid"] for n in notes}
    assert {n["threads"] for n in notes} == {max(1, (os.cpu_count() or 1) // 2)}
    assert launch_missing(serial).launched == [p.run.id for p in serial.points]
    for a, b in zip(parallel.points, serial.points):
        assert a.run.id == b.run.id
        assert a.run.file("eval", "predictions.jsonl").read_text() == b.run.file("eval", "predictions.jsonl").read_text()
    with pytest.raises(Exception, match="workers must be at least 1"):
        launch_missing(parallel, workers=0)


def test_uld_run_grid_defaults_to_two_workers_on_cpu(tiny_models, shared_data_dir, tmp_path, monkeypatch, caplog):
    """Without --workers or ULD_WORKERS, a CPU-only `uld run` of a two-point grid runs the points in two
    worker processes, with the run ids and predictions one process gives."""
    import logging

    import torch

    from uld.cli import main
    from uld.config import expand_grid, load_config
    from uld.pipeline import run_experiment
    from uld.store import RunFolder

    if (os.cpu_count() or 1) < 2 or torch.cuda.is_available():
        pytest.skip("the two-worker default applies to CPU-only machines with two or more cores")
    cfg_file = tmp_path / "grid.yaml"
    cfg_file.write_text(
        "name: workers\n"
        f"student: {{name: tiny-student, path: {tiny_models['student']}}}\n"
        f"data: {{task: qed, dir: {shared_data_dir}, test_size: 3, train_size: 40}}\n"
        "training: {method: none}\n"
        "evaluation: {metrics: [f1, em], max_new_tokens: 4, batch_size: 3}\n"
        "grid: {training.seed: [1, 2]}\n"
        "device: cpu\n")
    monkeypatch.delenv("ULD_WORKERS", raising=False)
    with caplog.at_level(logging.INFO, logger="uld"):
        assert main(["run", str(cfg_file), f"output_dir={tmp_path / 'a'}"]) == 0
    assert "2 points in 2 worker processes of" in caplog.text
    serial = run_experiment(load_config(cfg_file, [f"output_dir={tmp_path / 'b'}"]), workers=1)
    parallel = [RunFolder.for_config(c) for c in expand_grid(load_config(cfg_file, [f"output_dir={tmp_path / 'a'}"]))]
    assert [r.id for r in parallel] == [r.id for r in serial] and all(r.is_complete for r in parallel)
    for a, b in zip(parallel, serial):
        assert a.file("eval", "predictions.jsonl").read_text() == b.file("eval", "predictions.jsonl").read_text()
    with pytest.raises(SystemExit):
        main(["run", str(cfg_file), "--workers", "x"])
