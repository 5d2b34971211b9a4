"""Reporting: grid plans and run ids, cell values (authors / ours / diff), launching only what is
missing, rendering, and the frames the notebooks plot."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from uld import reporting, tables
from uld.config import expand_grid, load_config
from uld.errors import ConfigError
from uld.ids import run_id
from uld.reference import load_reference
from uld.results import load_results
from uld.store import RunFolder

REPO = Path(__file__).resolve().parents[2]
FIXTURE = REPO / "tests" / "fixtures" / "store"


def _fake_runner(calls: list, value: float = 42.0):
    """Stands in for uld.pipeline.run_experiment: writes a finished run where the run id says."""

    def run(cfg, force=False):
        calls.append((run_id(cfg), force))
        folder = RunFolder.for_config(cfg).init(cfg)
        folder.write_json("scores.json", {"task": cfg.data.task, "split": "test", "n": 5, "target": cfg.evaluation.target,
                                          "protocol": "authors", "checkpoint": "best", "model": {}, "metrics": {"f1": value}})
        return [folder]

    return run


def test_every_table_has_both_presets_and_plans_run_ids():
    for name in reporting.table_names():
        for preset in ("paper", "small"):
            plan = reporting.plan_table(name, preset=preset, store_root="/nowhere")
            assert plan.points
            declared = {run_id(p) for f in reporting.load_spec(name).files(preset) for p in expand_grid(load_config(f))}
            assert {p.run.id for p in plan.points} == declared  # deduplicated, nothing invented
            assert all(p.run.path == Path("/nowhere/runs") / p.run.id for p in plan.points)


def test_paper_main_grid_shape():
    plan = reporting.plan_table("main", preset="paper", store_root="/nowhere")
    settings = [p.info["setting"] for p in plan.points]
    assert settings.count("teacher") == 10 and settings.count("student-few-shot") == 15
    assert settings.count("lambda0") == 30 and settings.count("uld") == 30


def test_launch_runs_only_missing_points_and_rerun_is_idempotent(tmp_path):
    calls: list = []
    built = tables.build_table("cost_ablation", preset="small", store_root=tmp_path, runner=_fake_runner(calls))
    assert len(calls) == 4 and built.ok and len(built.launch.launched) == 4
    again = tables.build_table("cost_ablation", preset="small", store_root=tmp_path, runner=_fake_runner(calls))
    assert len(calls) == 4 and again.launch.launched == []  # nothing re-ran
    tables.build_table("cost_ablation", preset="small", store_root=tmp_path, force=True, runner=_fake_runner(calls))
    assert len(calls) == 8 and all(force for _, force in calls[4:])
    assert again.table.value(reporting.cell_key(again.plan.points[0].info), "f1") == 42.0


def test_failed_point_is_reported_and_others_still_run(tmp_path):
    calls: list = []
    ok = _fake_runner(calls)

    def flaky(cfg, force=False):
        if cfg.training.ot.cost == "levenshtein" and cfg.training.method == "uld-ot":
            raise RuntimeError("out of memory")
        return ok(cfg, force)

    built = tables.build_table("cost_ablation", preset="small", store_root=tmp_path, runner=flaky)
    assert not built.ok and len(built.launch.failed) == 1 and "out of memory" in built.launch.failed[0][1]
    assert len(built.launch.launched) == 3
    assert "| – |" in built.paths["md"].read_text()


def test_report_only_never_launches_and_rejects_force(tmp_path):
    built = tables.build_table("main", preset="small", store_root=tmp_path, report_only=True)
    assert built.launch is None and built.table.n_complete == 0
    with pytest.raises(ValueError, match="report-only"):
        tables.build_table("main", preset="small", store_root=tmp_path, report_only=True, force=True)


def test_cells_put_ours_beside_the_authors(tmp_path):
    store = tmp_path / "store"
    shutil.copytree(FIXTURE, store)
    plan = reporting.plan_table("data_fraction", preset="paper", store_root=store)
    table = plan.spec.collect(plan)
    authors = load_reference()
    ours = load_results(store)
    point = next(p for p in plan.points if p.info["train_fraction"] == 0.5 and p.info["setting"] == "uld" and p.complete)
    mine = ours[(ours.run_id == point.run.id) & (ours.metric == "f1")].value.item()
    theirs = authors[(authors.student == "pythia-410m") & (authors.task == point.info["task"]) & (authors.train_fraction == 0.5)
                     & (authors.method == "uld") & (authors.metric == "f1")].value.item()
    assert table.value(reporting.cell_key(point.info), "f1", "ours") == mine
    assert table.value(reporting.cell_key(point.info), "f1", "authors") == theirs
    assert table.value(reporting.cell_key(point.info), "f1", "diff") == pytest.approx(mine - theirs)
    row = table.cells[(table.cells.metric == "f1") & (table.cells.run_ids == point.run.id)]
    assert len(row) == 1  # the cell names the run behind it
    missing = next(p for p in plan.points if not p.complete)
    assert table.value(reporting.cell_key(missing.info), "f1", "ours") is None and table.value(reporting.cell_key(missing.info), "f1", "diff") is None


def test_markdown_and_latex_render_missing_cells_and_flags(tmp_path):
    plan = reporting.plan_table("main", preset="paper", store_root=FIXTURE)
    table = plan.spec.collect(plan)
    md = table.markdown(store_root=FIXTURE)
    assert "FIXTURE DATA" in md and "| – |" in md
    assert "53.01†" in md and "† authors' file repeats the Mistral QED teacher numbers" in md
    tex = table.latex()
    assert r"\toprule" in tex and r"$\lambda$=0" in tex and "53.01$^\\dagger$" in tex and "–" not in tex
    n_rows = len(table.rows)
    assert md.count("\n| ") == n_rows + 1  # header + one line per row


def test_notebook_frames_from_fixture_store():
    df = load_results(FIXTURE, source="both")
    frac = reporting.fraction_frame(df)
    assert set(frac.train_fraction) == {0.25, 0.5, 0.75, 1.0} and set(frac.setting) == {"lambda0", "uld"}
    assert {"ours", "authors"} <= set(frac.source)
    cost = reporting.cost_frame(df)
    assert {"closed form", "uniform", "levenshtein", "embedding"} <= set(cost.cost)
    size = reporting.size_frame(df)
    ours_sizes = size[(size.source == "ours") & (size.task == "squad") & (size.teacher == "llama-2-7b-chat")]
    assert set(ours_sizes.student) == {"pythia-160m", "pythia-410m", "pythia-1b"}
    pairs = reporting.paired(df, ["f1"])
    assert not pairs.empty and (pairs["diff"] == pairs["ours"] - pairs["authors"]).all()
    from uld.results import load_training_logs

    curves = reporting.curves_frame(load_training_logs(FIXTURE))
    val = curves[(curves.split == "val") & (curves.quantity == "loss")]
    for rid, g in val.groupby("run_id"):
        assert g.loc[g["value"].idxmin(), "best"] and g["best"].sum() == 1


def test_save_figure_writes_png_and_pdf(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots()
    ax.plot([0, 1], [1, 0])
    paths = reporting.save_figure(fig, "x", tmp_path)
    plt.close(fig)
    assert [p.name for p in paths] == ["x.png", "x.pdf"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.pdf", "x.png"]


def test_unknown_table_names_the_known_ones():
    with pytest.raises(ConfigError, match="main"):
        reporting.load_spec("table_nope")
    assert reporting.load_spec("table_main").name == "main"
