"""Micro-replication table: seed statistics, the paired bootstrap, and the table and figure built from a
synthetic store (written here, in tmp_path) through the same path as `uld table micro`."""

from __future__ import annotations

import json
import math
import random
import statistics

import numpy as np
import pytest

from uld import reporting, tables
from uld.config import dump_config, expand_grid, load_config
from uld.reporting import (
    BootstrapCI,
    SeedSummary,
    paired_bootstrap_ci,
    paired_contrast,
    question_scores,
    seed_paired_contrast,
    seed_summary,
)
from uld.ids import run_id
from uld.errors import ResultsError
from uld.io import atomic_write_json, atomic_write_text
from uld.store import RunFolder

# --------------------------------------------------------------------------------------------------
# Bootstrap
# --------------------------------------------------------------------------------------------------


def _naive_ci(a, b, resamples, seed, level=0.95):
    """The textbook loop: one resample at a time, pure Python means."""
    d = [x - y for x, y in zip(a, b)]
    n = len(d)
    rng = np.random.default_rng(seed)
    means = []
    for _ in range(resamples):
        idx = rng.integers(0, n, size=n)
        means.append(sum(d[i] for i in idx) / n)
    lo, hi = np.quantile(means, [(1 - level) / 2, (1 + level) / 2])
    return sum(d) / n, float(lo), float(hi)


@pytest.mark.parametrize("n,resamples,seed", [(37, 400, 0), (5, 1000, 3), (6000, 700, 11)])
def test_bootstrap_matches_naive_loop(n, resamples, seed):
    # n = 6000 makes the vectorised version draw in several chunks; the draws must not depend on that
    r = random.Random(n)
    a = [r.random() * 100 for _ in range(n)]
    b = [x - r.gauss(1.0, 5.0) for x in a]
    ci = paired_bootstrap_ci(a, b, resamples=resamples, seed=seed)
    diff, lo, hi = _naive_ci(a, b, resamples, seed)
    assert ci.diff == pytest.approx(diff, abs=1e-9)
    assert ci.low == pytest.approx(lo, abs=1e-9) and ci.high == pytest.approx(hi, abs=1e-9)
    assert ci.low <= ci.diff <= ci.high
    assert (ci.n_items, ci.resamples, ci.seed, ci.level) == (n, resamples, seed, 0.95)


def test_bootstrap_is_deterministic_and_seed_dependent():
    r = random.Random(0)
    a = [r.random() for _ in range(50)]
    b = [r.random() for _ in range(50)]
    assert paired_bootstrap_ci(a, b, resamples=300, seed=0) == paired_bootstrap_ci(a, b, resamples=300, seed=0)
    assert paired_bootstrap_ci(a, b, resamples=300, seed=0) != paired_bootstrap_ci(a, b, resamples=300, seed=1)


def test_bootstrap_constant_difference_has_a_point_interval():
    b = [float(i % 7) * 10 for i in range(40)]
    ci = paired_bootstrap_ci([x + 2.5 for x in b], b, resamples=200)
    assert ci.diff == pytest.approx(2.5) and ci.low == pytest.approx(2.5) and ci.high == pytest.approx(2.5)


def test_bootstrap_width_matches_the_normal_approximation():
    rng = np.random.default_rng(5)
    d = rng.normal(1.0, 4.0, size=3000)
    ci = paired_bootstrap_ci(d, np.zeros_like(d), resamples=4000, seed=0)
    half = 1.96 * d.std(ddof=1) / math.sqrt(len(d))
    assert (ci.high - ci.low) / 2 == pytest.approx(half, rel=0.1)
    assert (ci.low + ci.high) / 2 == pytest.approx(d.mean(), abs=0.1 * half)


def test_pairing_removes_question_difficulty():
    # questions differ a lot in difficulty, the systems differ by +1 with little noise: the paired
    # interval is tight around 1, far tighter than the spread of either system's scores
    rng = np.random.default_rng(2)
    difficulty = rng.uniform(0, 100, size=400)
    a = difficulty + 1.0 + rng.normal(0, 0.5, size=400)
    ci = paired_bootstrap_ci(a, difficulty, resamples=2000)
    assert ci.low < 1.0 < ci.high and ci.high - ci.low < 0.25
    shuffled = paired_bootstrap_ci(a, rng.permutation(difficulty), resamples=2000)  # pairing broken
    assert shuffled.high - shuffled.low > 10 * (ci.high - ci.low)


@pytest.mark.parametrize(
    "a,b,kw,match",
    [([1.0, 2.0], [1.0], {}, "equal length"), ([], [], {}, "no items"), ([1.0, float("nan")], [0.0, 0.0], {}, "finite"),
     ([1.0], [0.0], {"resamples": 0}, "resamples"), ([1.0], [0.0], {"level": 1.0}, "level")],
)
def test_bootstrap_rejects_bad_input(a, b, kw, match):
    with pytest.raises(ValueError, match=match):
        paired_bootstrap_ci(a, b, **kw)


# --------------------------------------------------------------------------------------------------
# Seed aggregation
# --------------------------------------------------------------------------------------------------


def test_seed_summary_mean_and_sample_std():
    vals = [41.0, 43.5, 40.25]
    s = seed_summary(vals)
    assert s.mean == pytest.approx(statistics.mean(vals)) and s.std == pytest.approx(statistics.stdev(vals))
    assert s.n == 3 and s.format() == f"{statistics.mean(vals):.2f} ± {statistics.stdev(vals):.2f}"
    assert seed_summary([30.0]) == SeedSummary(30.0, None, 1) and seed_summary([30.0]).format() == "30.00"
    assert seed_summary([]) == SeedSummary(None, None, 0) and seed_summary([]).format() == "–"
    with pytest.raises(ValueError, match="NaN"):
        seed_summary([1.0, float("nan")])


# --------------------------------------------------------------------------------------------------
# A synthetic micro store: some grid points finished, the rest missing
# --------------------------------------------------------------------------------------------------

N_QUESTIONS = 30
QIDS = [f"q{i:03d}" for i in range(N_QUESTIONS)]


def _write_run(point, store, rng: random.Random, level: float, qids=QIDS):
    """A finished run: config.yaml, eval/predictions.jsonl (per-question f1/em/rougeL in [0, 1]) and the
    scores.json those rows aggregate to."""
    cfg = point.cfg
    cfg.output_dir = str(store)
    folder = RunFolder(store / "runs" / run_id(cfg))
    folder.path.mkdir(parents=True, exist_ok=True)
    atomic_write_text(folder.file("config.yaml"), dump_config(cfg))
    rows = []
    for q in qids:
        f1 = min(1.0, max(0.0, level + rng.uniform(-0.3, 0.3)))
        rows.append({"id": q, "prediction": "x", "references": ["x"], "f1": f1, "em": float(f1 > 0.5), "rougeL": f1 * 0.9})
    atomic_write_text(folder.file("eval", "predictions.jsonl"), "".join(json.dumps(r) + "\n" for r in rows))
    metrics = {m: 100 * sum(r[m] for r in rows) / len(rows) for m in ("f1", "em", "rougeL")}
    atomic_write_json(folder.file("scores.json"), {"task": "squad", "split": "test", "n": len(rows),
                                                   "target": point.info["target"], "metrics": metrics})
    return folder


@pytest.fixture
def store(tmp_path):
    """teacher, λ=0 x seeds 1-3 and ULD x seeds 1-2 at 100%, one λ=0 run at 25%; everything else missing."""
    root = tmp_path / "store"
    plan = reporting.plan_table("micro", store_root=root)
    rng = random.Random(0)
    written: dict[tuple, list[RunFolder]] = {}
    levels = {"teacher": 0.5, "lambda0": 0.4, "uld": 0.45}
    for p in plan.points:
        setting, frac, seed = p.info["setting"], p.info["train_fraction"], p.info["seed"]
        keep = (setting == "teacher" or (setting == "lambda0" and frac == 1.0) or (setting == "uld" and frac == 1.0 and seed in (1, 2))
                or (setting == "lambda0" and frac == 0.25 and seed == 1))
        if keep:
            written.setdefault((setting, frac), []).append(_write_run(p, root, rng, levels[setting]))
    return root, written


def test_plan_has_the_declared_grid_and_shares_the_full_data_runs():
    plan = reporting.plan_table("micro", store_root="/nowhere")
    settings = [(p.info["setting"], p.info["train_fraction"]) for p in plan.points]
    assert settings.count(("teacher", 1.0)) == 1 and settings.count(("student-few-shot", 1.0)) == 1
    for s in ("sft-gold", "lambda0", "uld"):
        assert settings.count((s, 1.0)) == 3
        assert sorted(p.info["seed"] for p in plan.points if p.info["setting"] == s and p.info["train_fraction"] == 1.0) == [1, 2, 3]
    for frac in (0.25, 0.5):
        assert settings.count(("lambda0", frac)) == 3 and settings.count(("uld", frac)) == 3
    assert len(plan.points) == 23
    # the fraction study's 100% points are the distillation grid's runs, not new ones
    folder = reporting.EXPERIMENTS_DIR / "micro"
    distill = {run_id(c) for c in expand_grid(load_config(folder / "micro_distill.yaml"))}
    fraction_full = {run_id(c) for c in expand_grid(load_config(folder / "micro_fraction.yaml")) if c.data.train_fraction == 1.0}
    assert len(fraction_full) == 6 and fraction_full <= distill
    # the same single grid whatever the preset
    assert {p.run.id for p in reporting.plan_table("micro", preset="small", store_root="/nowhere").points} == {p.run.id for p in plan.points}
    cfg = plan.points[0].cfg
    assert (cfg.data.train_size, cfg.data.test_size, cfg.data.max_length) == (200, 500, 384)
    assert (cfg.training.optim.lr, cfg.training.epochs, cfg.training.batch_size, cfg.generation.top_k_signal) == (1e-5, 2, 8, 64)
    assert cfg.evaluation.max_new_tokens == cfg.generation.max_new_tokens == 24


def test_question_scores_reads_and_checks_predictions(store):
    root, written = store
    run = written[("teacher", 1.0)][0]
    scores = question_scores(run, "f1")
    rows = [json.loads(line) for line in run.file("eval", "predictions.jsonl").read_text().splitlines()]
    assert list(scores) == QIDS and scores["q003"] == pytest.approx(100 * rows[3]["f1"])
    path = run.file("eval", "predictions.jsonl")
    lines = path.read_text().splitlines()
    path.write_text("\n".join(lines[:-1]) + "\n")  # one row short of scores.json's n
    with pytest.raises(ResultsError, match="n = 30"):
        question_scores(run)
    path.write_text("\n".join(lines + [lines[0]]) + "\n")
    with pytest.raises(ResultsError, match="appears twice"):
        question_scores(run)
    bad = json.loads(lines[2])
    bad.pop("f1")
    path.write_text("\n".join(lines[:2] + [json.dumps(bad)] + lines[3:]) + "\n")
    with pytest.raises(ResultsError, match="row 3"):
        question_scores(run)


def test_contrast_averages_seeds_per_question_then_pairs(store):
    root, written = store
    uld, lam0 = written[("uld", 1.0)], written[("lambda0", 1.0)]
    per_u = [question_scores(r) for r in uld]
    per_l = [question_scores(r) for r in lam0]
    a = [sum(s[q] for s in per_u) / len(per_u) for q in QIDS]
    b = [sum(s[q] for s in per_l) / len(per_l) for q in QIDS]
    ci = paired_contrast(uld, lam0, resamples=500)
    ref = paired_bootstrap_ci(a, b, resamples=500)
    assert (ci.diff, ci.low, ci.high) == pytest.approx((ref.diff, ref.low, ref.high), abs=1e-9)
    assert ci.n_items == N_QUESTIONS
    # with the same questions in every run, the paired mean is the difference of the seed means
    mean_u = statistics.mean(json.loads(r.file("scores.json").read_text())["metrics"]["f1"] for r in uld)
    mean_l = statistics.mean(json.loads(r.file("scores.json").read_text())["metrics"]["f1"] for r in lam0)
    assert ci.diff == pytest.approx(mean_u - mean_l)


def test_contrast_refuses_runs_on_different_questions(tmp_path):
    plan = reporting.plan_table("micro", store_root=tmp_path)
    pts = [p for p in plan.points if p.info["setting"] == "uld" and p.info["train_fraction"] == 1.0]
    rng = random.Random(1)
    r1 = _write_run(pts[0], tmp_path, rng, 0.4)
    r2 = _write_run(pts[1], tmp_path, rng, 0.4, qids=QIDS[:-1] + ["other"])
    with pytest.raises(ResultsError, match="different questions"):
        paired_contrast([r1, r2], [r1])


def test_table_from_partial_store(store, tmp_path, capsys):
    root, written = store
    from uld.cli import main as cli_main

    out = tmp_path / "tables"
    assert cli_main(["table", "micro", "--report-only", "--store", str(root), "--out", str(out)]) == 0
    assert f"wrote {out / 'table_micro.md'}" in capsys.readouterr().out
    md = (out / "table_micro.md").read_text()
    f1 = {k: [json.loads(r.file("scores.json").read_text())["metrics"]["f1"] for r in v] for k, v in written.items()}

    lam0 = seed_summary(f1[("lambda0", 1.0)])
    assert f"| λ=0 | smollm2-135m-instruct | 3 | {lam0.mean:.2f} ± {lam0.std:.2f} |" in md
    uld = seed_summary(f1[("uld", 1.0)])
    assert f"| ULD | smollm2-135m-instruct | 2 | {uld.mean:.2f} ± {uld.std:.2f} |" in md
    assert f"| teacher (few-shot) | gemma-3-270m | 1 | {f1[('teacher', 1.0)][0]:.2f} |" in md
    assert "| SFT (gold) | smollm2-135m-instruct | 0 | – | – | – |" in md  # not run: dashes, no crash
    assert "| student few-shot | smollm2-135m-instruct | 0 | – | – | – |" in md

    ci = paired_contrast(written[("uld", 1.0)], written[("lambda0", 1.0)])
    line = (f"ULD − λ=0: {ci.diff:+.2f} F1, 95% CI [{ci.low:.2f}, {ci.high:.2f}] (questions only: paired bootstrap over "
            f"the {N_QUESTIONS} questions, seeds averaged per question, 10,000 resamples, seed 0); ")
    assert line in md
    seeds = seed_paired_contrast(written[("uld", 1.0)], written[("lambda0", 1.0)])
    assert f"seeds + questions: 95% CI [{seeds.low:.2f}, {seeds.high:.2f}] ({seeds.n_seeds} paired seeds × {N_QUESTIONS} " in md
    # fraction rows: 25% has one λ=0 run and no ULD run, 50% nothing, 100% the main grid's runs
    lam25 = f1[("lambda0", 0.25)][0]
    assert f"| 25% | 1 / 0 | {lam25:.2f} | – | – | – |" in md
    assert "| 50% | 0 / 0 | – | – | – | – |" in md
    assert f"| 100% | 3 / 2 | {lam0.mean:.2f} ± {lam0.std:.2f} | {uld.mean:.2f} ± {uld.std:.2f} | {ci.diff:+.2f} |" in md

    tex = (out / "table_micro.tex").read_text()
    assert tex.startswith(r"\begin{table}") and r"$\pm$" in tex and "±" not in tex and "→" not in tex

    import csv

    with (out / "table_micro.cells.csv").open() as fh:
        cells = list(csv.DictReader(fh))
    main_uld = [c for c in cells if c["part"] == "main" and c["setting"] == "uld" and c["metric"] == "f1"]
    assert len(main_uld) == 1 and set(main_uld[0]["run_ids"].split()) == {r.id for r in written[("uld", 1.0)]}
    contrast = [c for c in cells if c["part"] == "contrast" and float(c["train_fraction"]) == 1.0][0]
    assert float(contrast["ci_low"]) == pytest.approx(ci.low) and int(contrast["n_items"]) == N_QUESTIONS


def test_table_and_figure_from_empty_store(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    built = tables.build_table("micro", report_only=True, store_root=tmp_path / "empty")
    assert built.table.n_complete == 0 and built.table.n_points == 23 and built.table.contrast is None
    md = built.paths["md"].read_text()
    assert "0 of 23 grid points have results" in md and "ULD − λ=0: – (no paired interval yet)" in md
    fig = reporting.settings_and_fractions_figure(built.table)
    assert len(fig.axes) == 2
    assert [p.suffix for p in reporting.save_figure(fig, "micro", tmp_path / "fig")] == [".png", ".pdf"]


def test_figure_draws_the_seed_means(store):
    import matplotlib

    matplotlib.use("Agg")
    root, written = store
    plan = reporting.plan_table("micro", store_root=root)
    table = plan.spec.collect(plan)
    assert isinstance(table.contrast, BootstrapCI)
    fig = reporting.settings_and_fractions_figure(table)
    bars = [p.get_height() for p in fig.axes[0].patches]
    f1 = {k: [json.loads(r.file("scores.json").read_text())["metrics"]["f1"] for r in v] for k, v in written.items()}
    expected = [statistics.mean(f1[(s, 1.0)]) for s in ("teacher", "lambda0", "uld")]
    assert bars == pytest.approx(expected)


def test_table_names_the_hardware_of_its_runs_and_writes_the_figure(store, tmp_path):
    root, written = store
    gpu, cpu = written[("uld", 1.0)][0], written[("lambda0", 1.0)][0]
    atomic_write_json(gpu.file("env.json"), {"cpu_count": 16, "gpus": ["NVIDIA H100 80GB HBM3"]})
    atomic_write_json(cpu.file("env.json"), {"cpu_count": 2})
    built = tables.build_table("micro", report_only=True, store_root=root, out_dir=tmp_path / "t")
    # runs without env.json are "unknown": the line never claims a hardware it cannot see
    assert built.table.hardware == ["CPU (2 cores)", "NVIDIA H100 80GB HBM3", "unknown"]
    assert "Hardware of these runs: CPU (2 cores); NVIDIA H100 80GB HBM3; unknown." in built.paths["md"].read_text()
    assert "Hardware: CPU (2 cores); NVIDIA H100 80GB HBM3; unknown." in built.paths["tex"].read_text()
    # an explicit out_dir holds the figure too: a report-only render writes nothing into the store
    assert built.paths["png"] == tmp_path / "t" / "table_micro.png" and built.paths["png"].stat().st_size > 0
    assert built.paths["pdf"].is_file()


def test_launching_a_table_runs_each_point_through_the_pipeline(tmp_path, monkeypatch):
    import uld.pipeline
    from uld.ids import run_id

    seen = []

    def fake_run_experiment(cfg, *, force=False, **kw):
        seen.append(run_id(cfg))
        return []

    monkeypatch.setattr(uld.pipeline, "run_experiment", fake_run_experiment)
    plan = reporting.plan_table("micro", store_root=tmp_path)
    launch = tables.launch_missing(plan)
    assert seen == [p.run.id for p in plan.points]  # every missing point, in plan order, one call each
    assert len(launch.failed) == 23  # the fake wrote nothing, so every point is reported missing


def test_a_table_reads_only_its_own_run_folders(store, tmp_path, capsys):
    """A broken record outside the plan does not stop the table (the store is not scanned); one inside it does."""
    root, written = store
    stray = root / "runs" / "other-0123456789"
    stray.mkdir(parents=True)
    (stray / "scores.json").write_text("{not json")
    built = tables.build_table("micro", report_only=True, store_root=root, out_dir=tmp_path / "t")
    assert built.table.n_complete == sum(len(v) for v in written.values())
    # a grid point without a folder is an empty cell, and `uld table` names its folder
    from uld.cli import main as cli_main

    assert cli_main(["table", "micro", "--report-only", "--store", str(root), "--out", str(tmp_path / "t")]) == 0
    missing = [p for p in built.plan.points if not p.complete]
    assert f"  no results: {missing[0].run.path} (no folder; {missing[0].source.name})" in capsys.readouterr().out
    own = written[("uld", 1.0)][0]
    (own.file("scores.json")).write_text("{not json")
    with pytest.raises(ResultsError, match=r"scores\.json: invalid JSON"):
        tables.build_table("micro", report_only=True, store_root=root, out_dir=tmp_path / "t")
