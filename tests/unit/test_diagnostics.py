"""Diagnostics: span-start errors and answer length from predictions, teacher-forced confidence on the
gold answer against a direct computation, and the top-1 of a cached teacher signal."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from uld.config import ModelConfig
from uld.diagnostics import answer_confidence, prediction_stats, signal_confidence
from uld.models import load_model, load_tokenizer, resolve_model
from uld.signal import write_signal


def test_prediction_stats_counts_span_start_errors_on_normalized_words():
    rows = [
        {"prediction": "Denver Broncos", "references": ["Denver Broncos"]},  # right start
        {"prediction": "the Denver Broncos", "references": ["Denver Broncos"]},  # articles are normalized away
        {"prediction": "Carolina Panthers", "references": ["Denver Broncos", "the Broncos"]},  # wrong start
        {"prediction": "", "references": ["Levi's Stadium"]},  # empty: counted apart, not a span-start error
    ]
    s = prediction_stats(rows)
    assert s["n"] == 4 and s["empty"] == 1 and s["span_start_errors"] == 1
    assert s["span_start_error_rate"] == pytest.approx(1 / 3)
    assert s["mean_answer_words"] == pytest.approx((2 + 2 + 2 + 0) / 4)


@pytest.fixture(scope="module")
def student(tiny_models):
    r = resolve_model(ModelConfig(name="tiny", path=str(tiny_models["student"])))
    torch.manual_seed(0)
    return load_model(r).eval(), load_tokenizer(r)


def test_answer_confidence_matches_a_direct_forward(student):
    model, tok = student
    rows = []
    for prompt, answer in (("Context: a b c. Question: x? Answer:", " b c"), ("Question: hi? Answer:", " hello there")):
        p, a = tok(prompt).input_ids, tok(answer, add_special_tokens=False).input_ids + [tok.eos_token_id]
        rows.append((p + a, [-100] * len(p) + a))
    got = answer_confidence(model, tok, rows, batch_size=2)
    first_top, first_gold, all_top = [], [], []
    for ids, labels in rows:
        with torch.no_grad():
            probs = model(input_ids=torch.tensor([ids])).logits[0].float().softmax(-1)
        start = next(i for i, y in enumerate(labels) if y != -100)
        cols = list(range(start - 1, len(ids) - 1))  # the positions that predict the answer tokens
        first_top.append(float(probs[cols[0]].max()))
        first_gold.append(float(probs[cols[0], ids[start]]))
        all_top.append(float(torch.stack([probs[c].max() for c in cols]).mean()))
    assert got["n"] == 2
    assert got["first_token_top1"] == pytest.approx(np.mean(first_top), abs=1e-5)
    assert got["first_token_p_gold"] == pytest.approx(np.mean(first_gold), abs=1e-5)
    assert got["answer_top1"] == pytest.approx(np.mean(all_top), abs=1e-5)
    assert 0.0 <= got["first_token_top1_below_0.5"] <= 1.0


def test_signal_confidence_reads_the_first_position_of_each_answer(tmp_path):
    k = 4
    rows = [(np.array([[0.9, 0.05, 0, 0], [0.6, 0.2, 0, 0]], np.float16), np.zeros(2, np.float32)),
            (np.array([[0.3, 0.3, 0.2, 0.1]], np.float16), np.zeros(1, np.float32))]
    write_signal(tmp_path / "signal", ["a", "b"], rows, k=k, temperature=0.5)
    c = signal_confidence(tmp_path)
    assert c["k"] == k and c["temperature"] == 0.5 and c["answers"] == 2 and c["positions"] == 3
    assert c["first_token_top1"] == pytest.approx((0.9 + 0.3) / 2, abs=1e-3)
    assert c["first_token_top1_below_0.5"] == pytest.approx(0.5)
    assert c["answer_top1"] == pytest.approx((0.9 + 0.6 + 0.3) / 3, abs=1e-3)


def test_diagnose_missing_skips_runs_whose_weights_are_not_in_the_store(tmp_path, monkeypatch):
    # a committed store keeps scores and predictions, not checkpoints: a table built on it must not
    # report those runs as failed diagnostics, while runs that have their weights are still diagnosed
    from types import SimpleNamespace

    from uld import diagnostics
    from uld.config import load_config
    from uld.store import RunFolder

    def point(name: str, *, weights: bool, target: str = "student"):
        cfg = load_config(overrides=[f"evaluation.target={target}"])
        run = RunFolder(tmp_path / "runs" / name)
        run.path.mkdir(parents=True)
        (run.path / "scores.json").write_text("{}")
        if weights:
            (run.path / "checkpoints" / cfg.evaluation.checkpoint).mkdir(parents=True)
        return SimpleNamespace(cfg=cfg, run=run)

    calls = []
    monkeypatch.setattr(diagnostics, "diagnose_run", lambda cfg, run, force=False: calls.append(run.id))
    points = [point("no-weights", weights=False), point("weights", weights=True),
              point("teacher-eval", weights=False, target="teacher")]
    assert diagnostics.diagnose_missing(points) == []
    assert calls == ["weights", "teacher-eval"]  # the teacher is evaluated from the registry, not a checkpoint
