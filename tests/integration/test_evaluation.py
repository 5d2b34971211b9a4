"""End to end on tiny random models: predictions and scores appear, and are reproducible."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from uld.config import EvaluationConfig, ExperimentConfig, from_dict
from uld.evaluation import EvaluationError, evaluate_checkpoint, evaluate_run, generate_predictions
from uld.generation import keep_first_line
from uld.store import RunFolder

FAST = dict(metrics=["f1", "em", "rouge"], max_new_tokens=8, batch_size=3)


def _rows(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "eval" / "predictions.jsonl").read_text().splitlines()]


def test_keep_first_line():
    assert keep_first_line("\n  Paris\nLyon") == "Paris"
    assert keep_first_line("  \n \n") == ""
    assert keep_first_line("one line ") == "one line"


def test_generate_predictions_order_and_batching(tiny_models):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = tiny_models["student"]
    tok = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder)
    prompts = ["Context: a\nQuestion: b?\nAnswer:", "Context: The Eiffel Tower is in Paris, France.\nAnswer:", "x"]
    one = generate_predictions(model, tok, prompts, max_new_tokens=6, batch_size=1, progress=False)
    three = generate_predictions(model, tok, prompts, max_new_tokens=6, batch_size=3, progress=False)
    assert one == three  # left padding and length sorting do not change greedy outputs or their order
    assert all("\n" not in p for p in one)
    whole = generate_predictions(model, tok, prompts, max_new_tokens=6, batch_size=2, first_line=False, progress=False)
    assert [keep_first_line(w) for w in whole] == one


def test_evaluate_checkpoint_writes_reproducible_records(tiny_models, shared_data_dir, tmp_path):
    cfg = EvaluationConfig(**FAST)
    first = evaluate_checkpoint(tiny_models["student"], "squad", data_dir=shared_data_dir, test_size=5,
                                out_dir=tmp_path / "a", eval_cfg=cfg, device="cpu")
    assert first["n"] == 5 and first["task"] == "squad" and first["split"] == "test"
    assert set(first["metrics"]) >= {"f1", "em", "rouge1", "rouge2", "rougeL", "rougeLsum"}
    assert all(0.0 <= v <= 100.0 for v in first["metrics"].values())
    stored = json.loads((tmp_path / "a" / "scores.json").read_text())
    assert stored == json.loads((tmp_path / "a" / "eval" / "scores.json").read_text())
    assert stored["metrics"] == pytest.approx(first["metrics"])
    rows = _rows(tmp_path / "a")
    assert len(rows) == 5 and len({r["id"] for r in rows}) == 5
    for r in rows:
        assert {"id", "prompt_hash", "prediction", "references", "f1", "em", "rouge1"} <= set(r)
        assert r["references"] and all(isinstance(x, str) for x in r["references"])
    # the stored per-example scores give back the corpus numbers
    assert 100 * sum(r["f1"] for r in rows) / 5 == pytest.approx(first["metrics"]["f1"])

    second = evaluate_checkpoint(tiny_models["student"], "squad", data_dir=shared_data_dir, test_size=5,
                                 out_dir=tmp_path / "b", eval_cfg=cfg, device="cpu")
    assert _rows(tmp_path / "b") == rows
    assert second["metrics"] == first["metrics"]


def test_evaluation_precision_field(tiny_models, shared_data_dir, tmp_path, monkeypatch):
    """dtype=float32 is today's path exactly (same records); bfloat16 loads the weights in bf16 and says so."""
    from uld import evaluation

    base = evaluate_checkpoint(tiny_models["student"], "squad", data_dir=shared_data_dir, test_size=5,
                               out_dir=tmp_path / "a", eval_cfg=EvaluationConfig(**FAST), device="cpu")
    fp32 = evaluate_checkpoint(tiny_models["student"], "squad", data_dir=shared_data_dir, test_size=5,
                               out_dir=tmp_path / "b", eval_cfg=EvaluationConfig(**FAST, dtype="float32"), device="cpu")
    assert _rows(tmp_path / "b") == _rows(tmp_path / "a") and fp32["metrics"] == base["metrics"]
    assert "dtype" not in base["generation"] and fp32["generation"]["dtype"] == "float32"
    seen = []
    real_generate = evaluation.greedy_generate
    monkeypatch.setattr(evaluation, "greedy_generate",
                        lambda model, *a, **k: seen.append(next(model.parameters()).dtype) or real_generate(model, *a, **k))
    bf16 = evaluate_checkpoint(tiny_models["student"], "squad", data_dir=shared_data_dir, test_size=5,
                               out_dir=tmp_path / "c", eval_cfg=EvaluationConfig(**FAST, dtype="bfloat16"), device="cpu")
    assert seen == [torch.bfloat16] and bf16["generation"]["dtype"] == "bfloat16"
    assert len(_rows(tmp_path / "c")) == 5


def test_evaluation_share_prefix_field(tiny_models, shared_data_dir, tmp_path, monkeypatch):
    """share_prefix reaches the decoder, is recorded, and gives today's answers on the tiny fp32 student."""
    from uld import evaluation

    base = evaluate_checkpoint(tiny_models["student"], "squad", data_dir=shared_data_dir, test_size=5,
                               out_dir=tmp_path / "a", eval_cfg=EvaluationConfig(**FAST), device="cpu")
    seen = []
    real_generate = evaluation.greedy_generate
    monkeypatch.setattr(evaluation, "greedy_generate",
                        lambda *a, **k: seen.append(k["share_prefix"]) or real_generate(*a, **k))
    shared = evaluate_checkpoint(tiny_models["student"], "squad", data_dir=shared_data_dir, test_size=5,
                                 out_dir=tmp_path / "b", eval_cfg=EvaluationConfig(**FAST, share_prefix=True), device="cpu")
    assert seen == [True] and shared["generation"]["share_prefix"] is True and "share_prefix" not in base["generation"]
    assert [r["prediction"] for r in _rows(tmp_path / "b")] == [r["prediction"] for r in _rows(tmp_path / "a")]


def test_encoder_decoder_checkpoint(tiny_models, shared_data_dir, tmp_path):
    rec = evaluate_checkpoint(tiny_models["seq2seq"], "dialogsum", data_dir=shared_data_dir, test_size=3,
                              out_dir=tmp_path, eval_cfg=EvaluationConfig(**FAST), device="cpu")
    assert rec["n"] == 3 and rec["model"]["arch"] == "encoder-decoder"
    assert all(len(r["references"]) == 3 for r in _rows(tmp_path))  # DialogSum: three test summaries


def test_checkpoint_without_tokenizer_files(tiny_models, shared_data_dir, tmp_path):
    bare = tmp_path / "bare"
    bare.mkdir()
    for name in ("config.json", "model.safetensors", "generation_config.json"):
        if (tiny_models["student"] / name).exists():
            shutil.copy(tiny_models["student"] / name, bare / name)
    with pytest.raises(EvaluationError, match="--tokenizer"):
        evaluate_checkpoint(bare, "squad", data_dir=shared_data_dir, test_size=2, out_dir=tmp_path / "o",
                            eval_cfg=EvaluationConfig(**FAST))
    rec = evaluate_checkpoint(bare, "squad", data_dir=shared_data_dir, test_size=2, out_dir=tmp_path / "o",
                              tokenizer=str(tiny_models["student"]), eval_cfg=EvaluationConfig(**FAST), device="cpu")
    assert rec["n"] == 2


def _config(tmp_path, tiny_models, shared_data_dir, **evaluation) -> ExperimentConfig:
    return from_dict(ExperimentConfig, {
        "name": "eval-test",
        "teacher": {"name": "tiny-teacher", "path": str(tiny_models["teacher"])},
        "student": {"name": "tiny-student", "path": str(tiny_models["student"])},
        "data": {"task": "qed", "dir": str(shared_data_dir), "test_size": 3, "train_size": 40},
        "training": {"method": "none"},
        "evaluation": {**FAST, **evaluation},
        "output_dir": str(tmp_path),
        "device": "cpu",
    })


def test_evaluate_run_student_and_resume(tiny_models, shared_data_dir, tmp_path):
    cfg = _config(tmp_path, tiny_models, shared_data_dir)
    run = RunFolder.for_config(cfg).init(cfg)
    rec = evaluate_run(cfg, run)
    assert rec["target"] == "student" and rec["protocol"] == "authors" and rec["n"] == 3
    assert all(len(r["references"]) == 1 for r in _rows(run.path))  # QED, authors: the first span
    mtime = run.file("scores.json").stat().st_mtime_ns
    assert evaluate_run(cfg, run) == rec  # skipped: already evaluated
    assert run.file("scores.json").stat().st_mtime_ns == mtime


def test_evaluate_run_teacher_few_shot(tiny_models, shared_data_dir, tmp_path):
    cfg = _config(tmp_path, tiny_models, shared_data_dir, target="teacher")
    cfg.data.teacher_shots = 2
    run = RunFolder.for_config(cfg).init(cfg)
    rec = evaluate_run(cfg, run)
    assert rec["target"] == "teacher" and len(rec["shot_ids"]) == 2
    assert rec["model"]["name"] == "tiny-teacher"
    from uld.data import get_task, test_split
    from uld.evaluation import build_prompts, prompt_hash

    student = {prompt_hash(p) for p in build_prompts(get_task("qed"), test_split(cfg.data))}
    teacher = {r["prompt_hash"] for r in _rows(run.path)}
    assert len(teacher) == 3 and not (teacher & student)  # chat-rendered few-shot prompts, not the student's


def test_missing_checkpoint_is_a_clear_error(tiny_models, shared_data_dir, tmp_path):
    cfg = _config(tmp_path, tiny_models, shared_data_dir)
    cfg.training.method = "uld"
    run = RunFolder.for_config(cfg).init(cfg)
    with pytest.raises(EvaluationError, match="checkpoint folder .* does not exist"):
        evaluate_run(cfg, run)


def test_a_killed_evaluation_resumes_with_the_answers_it_had(tiny_models, shared_data_dir, tmp_path, monkeypatch):
    """Killed after its first batch, an evaluation resumes with the unanswered questions only and writes
    the records of an uninterrupted one; the journal is gone once the results are committed."""
    import uld.evaluation as ev

    cfg = _config(tmp_path / "a", tiny_models, shared_data_dir)
    cfg.data.test_size = 8
    whole = RunFolder.for_config(cfg).init(cfg)
    evaluate_run(cfg, whole)

    cfg_b = _config(tmp_path / "b", tiny_models, shared_data_dir)
    cfg_b.data.test_size = 8
    run = RunFolder.for_config(cfg_b).init(cfg_b)
    calls, append = [], ev.AnswerJournal.append

    def dies_after_one_batch(self, answers):
        if calls:
            raise KeyboardInterrupt("killed")
        calls.append(len(answers))
        append(self, answers)

    monkeypatch.setattr(ev.AnswerJournal, "append", dies_after_one_batch)
    with pytest.raises(KeyboardInterrupt):
        evaluate_run(cfg_b, run)
    assert calls == [3] and not run.is_complete  # batch_size 3: three answers journaled, then the kill
    journal = run.file("eval", "partial.0.jsonl")
    assert len(journal.read_text().splitlines()) == 1 + 3
    monkeypatch.setattr(ev.AnswerJournal, "append", append)

    asked: list[int] = []
    generate = ev.generate_predictions
    monkeypatch.setattr(ev, "generate_predictions", lambda model, tok, prompts, **kw: asked.append(len(prompts)) or generate(model, tok, prompts, **kw))
    rec = evaluate_run(cfg_b, run)
    assert asked == [5]  # only the questions without an answer
    assert [r["prediction"] for r in _rows(run.path)] == [r["prediction"] for r in _rows(whole.path)]
    assert rec["metrics"] == whole.read_json("scores.json")["metrics"]
    assert not journal.exists()


def test_answer_journal_keeps_only_answers_of_the_same_weights_and_settings(tmp_path):
    from uld.evaluation import AnswerJournal

    folder = tmp_path / "eval"
    a = AnswerJournal(folder, {"model": "m", "weights": {"model.safetensors": [1, 2]}}, rank=0)
    assert a.load() == {}
    a.append([("q1/h", "Paris"), ("q2/h", "")])
    # another process of a launch, same fingerprint: its answers count too
    AnswerJournal(folder, a.fingerprint, rank=1).append([("q3/h", "1990")])
    assert AnswerJournal(folder, a.fingerprint, rank=0).load() == {"q1/h": "Paris", "q2/h": "", "q3/h": "1990"}
    # a kill mid-append: the torn line is dropped and the next answer starts a line of its own
    with open(a.path, "a") as fh:
        fh.write('{"key": "q4/h", "ans')
    again = AnswerJournal(folder, a.fingerprint, rank=0)
    assert again.load() == {"q1/h": "Paris", "q2/h": "", "q3/h": "1990"}
    again.append([("q4/h", "Rome")])
    assert again.load()["q4/h"] == "Rome"
    # retrained weights (new modification time): nothing is reused, and this process's stale file goes
    stale = AnswerJournal(folder, {"model": "m", "weights": {"model.safetensors": [1, 3]}}, rank=0)
    assert stale.load() == {} and not a.path.exists()
    assert (folder / "partial.1.jsonl").exists()  # another process's file is not this one's to remove
