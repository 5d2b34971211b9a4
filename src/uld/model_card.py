"""Model cards: the ``README.md`` every saved checkpoint carries, so a student can go to the Hub as it is.

A card says what the weights are (student, teacher, method, λ, data, the run id that reproduces them)
and, once the run is evaluated, how they score. Training writes it into every checkpoint folder;
evaluation rewrites the evaluated checkpoint's card with the scores. Publishing is then one command::

    huggingface-cli upload <user>/<repo> results/runs/<run_id>/checkpoints/best
"""

from __future__ import annotations

from typing import Any, Optional

from uld.config import ExperimentConfig
from uld.methods import get_method
from uld.models import load_registry

__all__ = ["model_card"]

_HUB_DATASETS = {"squad": "rajpurkar/squad", "qed": "google-research-datasets/qed", "fairytaleqa": "GEM/FairytaleQA",
                 "pubmedqa": "qiaojin/PubMedQA", "dialogsum": "knkarthick/dialogsum"}
_METRIC_NAMES = {"f1": "token F1", "em": "exact match", "rouge1": "ROUGE-1", "rouge2": "ROUGE-2", "rougeL": "ROUGE-L",
                 "bertscore_f1": "BERTScore F1"}


def _hub_id(name: str) -> str:
    entry = load_registry().get(name)
    return entry.hub_id if entry is not None else name


def model_card(cfg: ExperimentConfig, run_id: str, *, step: Optional[int] = None, scores: Optional[dict[str, Any]] = None,
               checkpoint: str = "best") -> str:
    """Markdown (with Hub metadata) describing one checkpoint of run ``run_id``."""
    t = cfg.training
    method = get_method(t.method)
    student, teacher = _hub_id(cfg.student.name), _hub_id(cfg.teacher.name) if method.needs_teacher_stage else None
    lam = t.lam if method.distills else 0.0
    meta = ["---", f"base_model: {student}", f"datasets:\n- {_HUB_DATASETS.get(cfg.data.task, cfg.data.task)}",
            "tags:\n- distillation\n- universal-logit-distillation\n- uld-repro", "---", ""]
    what = {"teacher": f"trained on the answers of `{teacher}`" + (f" with {method.name} (λ = {lam:g})" if method.distills else " (λ = 0)"),
            "gold": "fine-tuned on the dataset's reference answers", "none": "not trained"}[method.target]
    if cfg.teacher.from_run and method.needs_teacher_stage:
        what += f" (the teacher's weights are run `{cfg.teacher.from_run}` of the same store)"
    rows = [
        ("student", f"`{student}`"),
        ("teacher", f"`{teacher}`" if teacher else "–"),
        ("method", f"{method.name}: {method.summary}"),
        ("λ", f"{lam:g}"),
        ("task", cfg.data.task + (f", training rows {cfg.data.train_start}–{cfg.data.train_start + cfg.data.train_size}"
                                  + (f" of the pool shuffled with seed {cfg.data.sample_seed}"
                                     if cfg.data.pool_order == "shuffled" else "")
                                  if cfg.data.train_size else "")),
        ("epochs / batch / lr", f"{t.epochs:g} / {t.batch_size} / {t.optim.lr_preset or t.optim.lr:}"),
        ("precision", {"no": "fp32", "bf16": "bf16 mixed", "fp16": "fp16 mixed"}[t.mixed_precision]),
        ("checkpoint", checkpoint + (f" (optimizer step {step})" if step is not None else "")),
        ("run id", f"`{run_id}`"),
    ]
    lines = meta + [f"# {cfg.student.name}: {cfg.data.task}, {method.name}", "",
                    f"`{student}` {what}, with the Universal Logit Distillation reproduction `uld-repro`.", "",
                    "| | |", "|:--|:--|"] + [f"| {k} | {v} |" for k, v in rows] + [""]
    if scores:
        metrics = scores.get("metrics", {})
        lines += [f"## Scores ({scores.get('task')}, {scores.get('n')} test items, greedy, ×100)", "", "| metric | score |", "|:--|--:|"]
        lines += [f"| {_METRIC_NAMES.get(k, k)} | {v:.2f} |" for k, v in metrics.items() if isinstance(v, (int, float))]
        lines.append("")
    else:
        lines += ["Not evaluated yet: `uld evaluate` writes the scores here.", ""]
    lines += ["## Reproduce", "", "```bash", f"uld config <the experiment yaml> --ids   # lists {run_id}", "uld run <the experiment yaml>", "```",
              "", "The run folder `results/runs/" + run_id + "/` holds the resolved config, the training log and the predictions."]
    return "\n".join(lines) + "\n"
