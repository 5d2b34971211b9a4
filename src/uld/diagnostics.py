"""Why a model answers as it does: how confident it is where an answer starts, and where answers go wrong.

For a finished run, ``diagnose_run`` writes ``<run>/diagnostics.json`` with two kinds of numbers over
the run's evaluation questions:

- from its predictions (no model needed): mean answer length in words, the share of empty answers, and
  *span-start errors*: non-empty answers whose first normalized word is the first word of no normalized
  reference (the answer starts at the wrong place of the passage);
- from its model, teacher-forced on each question's gold answer (the first reference) with the exact
  prompt it was evaluated with: the top-1 probability and the probability of the gold token at the
  first answer position, and both averaged over the answer's positions (its EOS included, as in the
  distillation loss).

For a teacher stage, :func:`signal_confidence` reads the cached signal: the teacher's top-1
probability on its own answers at the first answer token and over all answer tokens, at the signal's
temperature (how peaked the distributions were that ULD matched).
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import torch

from uld.config import ExperimentConfig
from uld.data import encode_pair, encode_teacher_pair, get_task, test_split
from uld.errors import EvaluationError
from uld.evaluation import checkpoint_folder, evaluation_model, run_prompts
from uld.io import atomic_write_json, read_jsonl
from uld.metrics import normalize_answer, span_start_error
from uld.models import bind_run_models, load_model, load_tokenizer
from uld.signal import TeacherSignalStore, answer_logits
from uld.store import RunFolder

log = logging.getLogger(__name__)

__all__ = ["DIAGNOSTICS_FILE", "prediction_stats", "answer_confidence", "signal_confidence", "diagnose_run"]

DIAGNOSTICS_FILE = "diagnostics.json"


def prediction_stats(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Answer length, empty answers and span-start errors of prediction records (``prediction``, ``references``)."""
    lengths, empty, starts_wrong = [], 0, 0
    for row in rows:
        lengths.append(len(normalize_answer(str(row["prediction"])).split()))
        wrong = span_start_error(row["prediction"], row["references"])
        empty += wrong is None
        starts_wrong += bool(wrong)
    n = len(rows)
    answered = n - empty
    return {"n": n, "mean_answer_words": float(np.mean(lengths)) if n else None, "empty": empty,
            "span_start_errors": starts_wrong, "span_start_error_rate": starts_wrong / answered if answered else None}


@torch.no_grad()
def answer_confidence(model, tokenizer, encoded: Sequence[tuple[list[int], list[int]]], *, batch_size: int = 8) -> dict[str, Any]:
    """Teacher-forced confidence on ``(input_ids, labels)`` rows (labels -100 off the answer).

    Per row: the top-1 probability and p(gold token) at the first answer position, and their means over
    the answer positions; the returned means are over rows, plus the share of rows whose first-position
    top-1 is below 0.5. Rows are padded on the left (position ids follow the mask).
    """
    if model.config.is_encoder_decoder:
        raise EvaluationError("answer confidence is measured for decoder-only models only")
    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    first_top, first_gold, all_top, all_gold = [], [], [], []
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i][0]))
    for b in range(0, len(order), batch_size):
        rows = [encoded[i] for i in order[b : b + batch_size]]
        width = max(len(x) for x, _ in rows)
        ids = torch.full((len(rows), width), pad, dtype=torch.long)
        attn = torch.zeros_like(ids)
        labels = torch.full_like(ids, -100)
        for r, (x, y) in enumerate(rows):
            ids[r, width - len(x) :], attn[r, width - len(x) :], labels[r, width - len(x) :] = torch.tensor(x), 1, torch.tensor(y)
        logits, mask = answer_logits(model, ids.to(device), attn.to(device), labels.to(device))
        first = width - logits.shape[1]
        # column t predicts token t + 1
        targets = torch.cat([labels[:, 1:], torch.full((len(rows), 1), -100)], dim=1)[:, first:].to(device)
        probs = logits.float().softmax(-1)
        top = probs.max(-1).values
        gold = probs.gather(-1, targets.clamp_min(0).unsqueeze(-1)).squeeze(-1)
        for r in range(len(rows)):
            cols = mask[r].nonzero().flatten()
            if len(cols) == 0:
                continue
            first_top.append(float(top[r, cols[0]]))
            first_gold.append(float(gold[r, cols[0]]))
            all_top.append(float(top[r, cols].mean()))
            all_gold.append(float(gold[r, cols].mean()))
    n = len(first_top)
    mean = (lambda v: float(np.mean(v)) if v else None)
    return {"n": n, "first_token_top1": mean(first_top), "first_token_p_gold": mean(first_gold),
            "first_token_top1_below_0.5": (sum(v < 0.5 for v in first_top) / n) if n else None,
            "answer_top1": mean(all_top), "answer_p_gold": mean(all_gold)}


def signal_confidence(path: str | Path) -> dict[str, Any]:
    """Top-1 probability of a cached teacher signal (a teacher-stage folder or its ``signal/``)."""
    store = TeacherSignalStore(path)
    top1 = np.asarray(store.probs[:, 0], dtype=np.float32)
    firsts = [offset for offset, length, _ in store._index.values() if length > 0]
    return {"k": store.k, "temperature": store.temperature, "answers": len(firsts), "positions": int(len(top1)),
            "first_token_top1": float(top1[firsts].mean()) if firsts else None,
            "first_token_top1_below_0.5": float((top1[firsts] < 0.5).mean()) if firsts else None,
            "answer_top1": float(top1.mean()) if len(top1) else None}


def _gold_pairs(cfg: ExperimentConfig, task, examples, prompts, tokenizer, teacher: bool) -> list[tuple[list[int], list[int]]]:
    pairs = []
    for ex, prompt in zip(examples, prompts):
        gold = task.gold_answer(ex)
        if teacher:
            enc = encode_teacher_pair(tokenizer, prompt, gold)
        else:
            enc = encode_pair(tokenizer, prompt, gold, max_length=cfg.data.max_length, context=ex.context or None)
        pairs.append((list(enc.input_ids), list(enc.labels)))
    return pairs


def diagnose_run(cfg: ExperimentConfig, run: RunFolder, *, force: bool = False, batch_size: Optional[int] = None) -> dict[str, Any]:
    """``<run>/diagnostics.json`` for a finished run (computed once; ``force`` recomputes). Returns the record."""
    if not run.is_complete:
        raise EvaluationError(f"{run.path}: the run has no scores.json yet; evaluate it before diagnosing it")
    if run.exists(DIAGNOSTICS_FILE) and not force:
        return run.read_json(DIAGNOSTICS_FILE)
    cfg = bind_run_models(cfg)
    teacher = cfg.evaluation.target == "teacher"
    resolved, folder, checkpoint = evaluation_model(cfg, run, None)
    tokenizer = load_tokenizer(resolved)
    task = get_task(cfg.data.task)
    examples = test_split(cfg.data)
    prompts, _, _ = run_prompts(cfg, task, examples, resolved, tokenizer)
    model = load_model(resolved, device=cfg.device).eval()
    confidence = answer_confidence(model, tokenizer, _gold_pairs(cfg, task, examples, prompts, tokenizer, teacher),
                                   batch_size=batch_size or cfg.evaluation.batch_size)
    record = {"run_id": run.id, "target": cfg.evaluation.target, "model": resolved.describe(), "checkpoint": checkpoint,
              "items": len(examples), "gold": "first reference", "dtype": resolved.dtype,
              "predictions": prediction_stats(read_jsonl(run.file("eval", "predictions.jsonl"))),
              "confidence_on_gold": confidence}
    if not teacher and run.exists("teacher.json"):
        stage = run.path.parent.parent / "teacher" / str(run.read_json("teacher.json").get("id", ""))
        if (stage / "signal").is_dir():
            record["teacher_signal"] = signal_confidence(stage)
    atomic_write_json(run.file(DIAGNOSTICS_FILE), _finite(record))
    return record


def _finite(obj: Any) -> Any:
    """NaN/inf as None, so the JSON is strict."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_finite(v) for v in obj]
    return obj


def diagnose_missing(points: Sequence[Any], *, force: bool = False) -> list[tuple[str, str]]:
    """``diagnose_run`` for every finished grid point without diagnostics; ``(run id, error)`` of those that failed.

    A finished run whose checkpoint is not in the store (a committed store keeps scores and predictions,
    not weights) is skipped with a log line: there is nothing to diagnose, and nothing went wrong."""
    failed = []
    for p in points:
        if not p.run.is_complete or (p.run.exists(DIAGNOSTICS_FILE) and not force):
            continue
        weights = checkpoint_folder(p.cfg, p.run)
        if weights is not None and not weights.is_dir():
            log.info("no diagnostics for %s: its checkpoint %s is not in the store", p.run.id, weights)
            continue
        log.info("diagnostics for %s", p.run.id)
        try:
            diagnose_run(p.cfg, p.run, force=force)
        except Exception as exc:  # one broken run should not cost the others their diagnostics
            log.exception("diagnostics of %s failed", p.run.id)
            failed.append((p.run.id, f"{type(exc).__name__}: {exc}"))
    return failed
