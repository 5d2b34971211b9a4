"""Where two arms differ: group contrasts against a naive loop, answer shapes against hand counts, and the
panel on the committed strong-teacher arm (its groups add back up to the whole-set contrast)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from uld.reporting.breakdown import (BreakdownRows, answer_agreement, answer_shape, grouped_contrasts, length_bucket,
                                     question_type)
from uld.reporting.stats import seed_paired_contrast, seed_question_ci

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("question, kind", [
    ("What team won Super Bowl 50?", "what"),
    ("In what year did the war end?", "what"),
    ("Which NFL team represented the AFC?", "which"),
    ("Whose idea was it?", "who"),
    ("To whom did he write?", "who"),
    ("How many points did they score?", "how many"),
    ("How much did it cost?", "how much"),
    ("How did the treaty change the borders?", "how"),
    ("When was the university founded?", "when"),
    ("Where is the stadium?", "where"),
    ("Why did the strike begin?", "why"),
    ("The Broncos beat the Panthers by how many points?", "how many"),
    ("Name the city that hosted the game.", "other"),
    ("", "other"),
])
def test_question_type(question, kind):
    assert question_type(question) == kind


def test_length_bucket():
    assert [length_bucket(n) for n in (0, 1, 2, 3, 4, 5, 6, 40)] == ["1", "1", "2", "3", "4-5", "4-5", "6+", "6+"]


def test_grouped_contrasts_match_a_naive_loop():
    rng = np.random.default_rng(0)
    ids = [f"q{i}" for i in range(30)]
    a, b = rng.normal(50, 20, (4, 30)), rng.normal(48, 20, (4, 30))
    groups = {q: ("x" if i % 3 == 0 else "y") for i, q in enumerate(ids)}
    groups["q29"] = "lonely"  # one question: a mean, no interval
    rows = {g.group: g for g in grouped_contrasts(ids, a, b, groups, by="kind", order=("y",))}
    assert [g.group for g in grouped_contrasts(ids, a, b, groups, by="kind", order=("y",))] == ["y", "x", "lonely"]
    for name, row in rows.items():
        cols = [j for j, q in enumerate(ids) if groups[q] == name]
        assert row.n_items == len(cols)
        assert row.a == pytest.approx(np.mean([a[s][j] for s in range(4) for j in cols]))
        assert row.diff == pytest.approx(np.mean([a[s][j] - b[s][j] for s in range(4) for j in cols]))
        if name == "lonely":
            assert row.ci is None
        else:
            ref = seed_question_ci(a[:, cols], b[:, cols])
            assert (row.ci.low, row.ci.high) == pytest.approx((ref.low, ref.high))
    # the groups' differences, weighted by their sizes, are the whole set's
    whole = sum(g.n_items * g.diff for g in rows.values()) / len(ids)
    assert whole == pytest.approx(float((a - b).mean()))
    with pytest.raises(KeyError):
        grouped_contrasts(ids, a, b, {q: "x" for q in ids[:-1]}, by="kind")
    with pytest.raises(ValueError, match="30 questions"):
        grouped_contrasts(ids, a[:, :5], b[:, :5], groups, by="kind")


def _row(qid, prediction, *refs):
    return {"id": qid, "prediction": prediction, "references": list(refs)}


def test_answer_shape_counts_by_hand():
    run1 = [_row("1", "The Denver Broncos", "Denver Broncos"), _row("2", "", "1990"), _row("3", "in 1990", "1990")]
    run2 = [_row("1", "Denver", "Denver Broncos"), _row("2", "1990.", "1990"), _row("3", "the year 1990", "1990")]
    shape = answer_shape([run1, run2])
    # normalized words: [denver broncos]=2 ("the" dropped), []=0, [in 1990]=2, [denver]=1, [1990]=1, [year 1990]=2
    assert shape.n_runs == 2 and shape.n_answers == 6
    assert shape.mean_words == pytest.approx(8 / 6)
    assert shape.empty_rate == pytest.approx(1 / 6)
    # first words of the 5 answered: denver, in, denver, 1990, year; span starts wrong: in, year
    assert shape.span_start_error_rate == pytest.approx(2 / 5)
    assert shape.first_words == pytest.approx({"denver": 0.4, "in": 0.2, "1990": 0.2, "year": 0.2})
    with pytest.raises(ValueError):
        answer_shape([[]])


def test_answer_agreement_pairs_by_id_and_normalizes():
    a = [_row("1", "The Broncos"), _row("2", "1990"), _row("3", "Paris")]
    b = [_row("3", "London"), _row("1", "broncos."), _row("2", "1990")]
    assert answer_agreement(a, b) == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="1 ids differ|2 ids differ"):
        answer_agreement(a, b[:2])


def _strong_arm_cells():
    from uld.reporting.seeds import _Cells
    from uld.reporting.spec import plan_table

    plan = plan_table("headroom", store_root=REPO / "results")
    done = [p for p in plan.points if p.source.stem == "headroom_1_strong" and p.complete]
    if len(done) < 6 or not all(p.run.exists("eval", "predictions.jsonl") for p in done):
        pytest.skip("the strong-teacher arm is not committed")
    return _Cells(plan, ("f1",))


def test_panel_on_the_committed_strong_arm_adds_up_to_the_whole_contrast(shared_data_dir, monkeypatch):
    monkeypatch.setenv("ULD_DATA_DIR", str(shared_data_dir))
    cells = _strong_arm_cells()
    panel = BreakdownRows(uld="headroom_1_strong", lambda0="headroom_1_strong")
    out = panel.collect(cells, ("f1",))
    bd = out["breakdown"]
    assert bd is not None, out["note"]
    assert bd.seeds == [1, 2, 3] and bd.n_items == 500
    arm = [p for p in cells.done if p.source.stem == "headroom_1_strong"]
    whole = seed_paired_contrast([p.run for p in arm if p.info["setting"] == "uld"],
                                 [p.run for p in arm if p.info["setting"] == "lambda0"])
    for by, rows in bd.groups.items():
        assert sum(g.n_items for g in rows) == 500, by
        assert sum(g.n_items * g.diff for g in rows) / 500 == pytest.approx(whole.diff), by
    assert {g.group for g in bd.groups["question type"]} <= {"what", "which", "who", "when", "where", "why",
                                                             "how many", "how much", "how", "other"}
    assert 0 < bd.mean_agreement < 1
    text = "\n".join(panel.markdown(out, ("f1",)))
    assert "| what |" in text and "Span-start errors" in text and "Same answer from both arms" in text
    assert panel.latex(out, ("f1",))
    # a group where both arms answered alike everywhere has no interval, not a zero-width one
    same = [g for rows in bd.groups.values() for g in rows if g.ci is not None and g.ci.se == 0]
    assert all(f"| {g.group} | {g.n_items:,} |" in text and "no variation" in text for g in same)
    assert "[0.00, 0.00]" not in text


def test_panel_without_data_says_what_it_needs(monkeypatch, tmp_path):
    cells = _strong_arm_cells()
    monkeypatch.setenv("ULD_DATA_DIR", str(tmp_path / "nowhere"))
    out = BreakdownRows(uld="headroom_1_strong", lambda0="headroom_1_strong").collect(cells, ("f1",))
    assert out["breakdown"] is None and "ULD_DATA_DIR" in out["note"]
    out = BreakdownRows(uld="no_such_file", lambda0="headroom_1_strong").collect(cells, ("f1",))
    assert out["breakdown"] is None and "No finished runs" in out["note"]
