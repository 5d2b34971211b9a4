"""Study arms: each arm's ULD runs against the λ=0 runs it names, the teacher margin, diagnostics read
from the runs, and a figure; on synthetic run folders with per-question scores."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest

from uld.reporting import Arm, ArmRows, DiagnosticRows, RunRows, arms_figure
from uld.reporting.arms import _dodge
from uld.reporting.stats import paired_contrast
from uld.store import RunFolder

QUESTIONS = [f"q{i}" for i in range(20)]


def _run(root: Path, rid: str, scores: list[float], diagnostics: dict | None = None) -> RunFolder:
    d = root / "runs" / rid
    (d / "eval").mkdir(parents=True)
    rows = [{"id": q, "f1": s} for q, s in zip(QUESTIONS, scores)]
    (d / "eval" / "predictions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (d / "scores.json").write_text(json.dumps({"n": len(rows), "metrics": {"f1": 100 * sum(scores) / len(scores)}}))
    if diagnostics is not None:
        (d / "diagnostics.json").write_text(json.dumps(diagnostics))
    return RunFolder(d)


def _point(run: RunFolder, stem: str, setting: str, seed: int = 1, lam: float = 1.5):
    return SimpleNamespace(run=run, source=Path(f"{stem}.yaml"), info={"setting": setting, "seed": seed, "lam": lam})


@pytest.fixture
def cells(tmp_path):
    points = []
    for seed in (1, 2):
        points.append(_point(_run(tmp_path, f"l0-{seed}", [0.5] * 10 + [0.0] * 10), "base", "lambda0", seed, 0.0))
        points.append(_point(_run(tmp_path, f"uld-{seed}", [0.5] * 8 + [0.0] * 12,
                                  {"teacher_signal": {"first_token_top1": 0.3 + 0.1 * seed},
                                   "confidence_on_gold": {"first_token_top1": 0.7, "first_token_p_gold": 0.4},
                                   "predictions": {"span_start_error_rate": 0.2, "mean_answer_words": 3.0}}),
                              "base", "uld", seed))
        points.append(_point(_run(tmp_path, f"dose-{seed}", [0.5] * 10 + [0.0] * 10), "dose", "uld", seed, 0.1))
        points.append(_point(_run(tmp_path, f"dose5-{seed}", [0.9] * 20), "dose", "uld", seed, 0.5))
    points.append(_point(_run(tmp_path, "teacher", [0.6] * 10 + [0.0] * 10), "teacher_eval", "teacher", 1, 0.0))
    records = []
    for p in points:
        score = json.loads(p.run.file("scores.json").read_text())["metrics"]["f1"]
        records.append({"run_id": p.run.id, "metric": "f1", "value": score, "setting": p.info["setting"]})
    return SimpleNamespace(done=points, runs=pd.DataFrame.from_records(records), notes=[])


ARMS = (Arm("baseline", uld="base", lambda0="base", teacher="teacher_eval"),
        Arm("low dose", uld="dose", lambda0="base", teacher="teacher_eval", where=(("lam", 0.1),)),
        Arm("missing", uld="nothing", lambda0="base", teacher="teacher_eval"))


def test_arm_rows_pair_each_arm_with_its_lambda0_runs(cells):
    out = ArmRows(arms=ARMS).collect(cells, ["f1"])
    base, low, missing = out["rows"]
    assert base["lambda0"].mean == pytest.approx(25.0) and base["uld"].mean == pytest.approx(20.0)
    assert base["teacher"].mean == pytest.approx(30.0) and base["margin"] == pytest.approx(5.0)
    ci = paired_contrast([cells.done[1].run, cells.done[5].run], [cells.done[0].run, cells.done[4].run])
    assert base["contrast"].diff == pytest.approx(ci.diff) == pytest.approx(-5.0)
    assert base["teacher_top1"] == pytest.approx(0.45)  # mean over the arm's ULD runs' diagnostics
    assert low["uld"].mean == pytest.approx(25.0) and low["uld"].n == 2  # only the lam=0.1 runs of the file
    assert low["contrast"].diff == pytest.approx(0.0) and low["teacher_top1"] is None
    assert missing["contrast"] is None and any("missing" in n for n in cells.notes)
    text = "\n".join(ArmRows(arms=ARMS).markdown(out, ["f1"]))
    assert "| baseline | 30.00 | 0.450 | 25.00 ± 0.00 | 20.00 ± 0.00 | +5.00 | -5.00 |" in text
    parts = {r["part"] for r in out["records"]}
    assert parts == {"arm:baseline", "arm:low dose", "arm:missing"}


def test_diagnostic_rows_and_figure(cells):
    out = DiagnosticRows(arms=ARMS[:1]).collect(cells, ["f1"])
    text = "\n".join(DiagnosticRows(arms=ARMS[:1]).markdown(out, ["f1"]))
    assert "| baseline | – / 0.700 | – / 0.400 | – / 0.200 | – / 3.0 |" in text  # λ=0 runs have no diagnostics
    arm_out = ArmRows(arms=ARMS).collect(cells, ["f1"])
    table = SimpleNamespace(panel=lambda kind: arm_out if kind is ArmRows else None)
    fig = arms_figure(table)
    points = [c for ax in fig.axes for c in ax.collections]
    assert len(fig.axes) == 2 and points  # the arms with an interval are drawn
    # both arms share the teacher margin: drawn side by side, named once each in the shared legend
    margins = [float(c.lines[0].get_xdata()[0]) for c in fig.axes[0].containers]
    assert len(margins) == 2 and margins[0] != margins[1] and sum(margins) / 2 == pytest.approx(5.0)
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["baseline", "low dose"]
    # no arm pairs two seeds with a seed interval here: questions-only bars, hollow markers
    row = arm_out["rows"][0]
    assert all(r.get("seed_contrast") is None for r in arm_out["rows"])
    bar = fig.axes[0].containers[0]
    assert bar.lines[0].get_markerfacecolor() == "white"
    assert sorted(bar.lines[2][0].get_segments()[0][:, 1]) == pytest.approx([row["contrast"].low, row["contrast"].high])
    assert "seeds + questions" in fig.texts[0].get_text()
    # with a seeds + questions interval, that one is drawn, filled
    row["seed_contrast"] = SimpleNamespace(diff=-5.0, low=-9.0, high=-1.0)
    bar = arms_figure(table).axes[0].containers[0]
    assert bar.lines[0].get_markerfacecolor() != "white"
    assert sorted(bar.lines[2][0].get_segments()[0][:, 1]) == pytest.approx([-9.0, -1.0])


def test_dodge_spreads_only_points_that_share_an_x():
    xs = _dodge([0.0, 0.0, 0.0, 10.0], width=0.01)
    assert xs[3] == 10.0  # alone at its x: unmoved
    assert xs[:3] == pytest.approx([-0.1, 0.0, 0.1])  # centred on the shared x, one step (1% of span) apart
    assert _dodge([2.0], width=0.01) == [2.0] and _dodge([], width=0.01) == []
    assert _dodge([3.0, 3.0], width=0.5) == pytest.approx([2.75, 3.25])  # zero span: steps of width


def test_run_rows_list_each_runs_best_step(cells):
    l0 = next(p for p in cells.done if p.run.id == "l0-2")
    l0.run.file("train_summary.json").write_text(json.dumps({"best_step": 110, "steps": 230, "best_val_loss": 0.7781}))
    out = RunRows(settings=("lambda0", "uld")).collect(cells, ["f1"])
    assert [(r["setting"], r["seed"]) for r in out["rows"]][:3] == [("lambda0", 1), ("lambda0", 2), ("uld", 1)]
    assert {r["setting"] for r in out["rows"]} == {"lambda0", "uld"}  # the teacher's run is not a student's
    assert len(out["rows"]) == 8 and len(out["records"]) == 8
    text = "\n".join(RunRows(settings=("lambda0", "uld")).markdown(out, ["f1"]))
    assert "| `l0-2` | lambda0 | 2 | 110 / 230 | 0.778 | 25.00 |" in text
    assert "| `l0-1` | lambda0 | 1 | – / – | – | 25.00 |" in text  # no summary: said, not invented
