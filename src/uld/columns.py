"""The columns of a results frame and the vocabulary of settings, shared by our runs and the authors'.

:func:`uld.results.load_results` (our store) and :func:`uld.reference.load_reference` (the authors'
numbers) both return frames with :data:`COLUMNS`, so the two meet cell by cell.
"""

from __future__ import annotations

from typing import Any

__all__ = ["COLUMNS", "SETTINGS", "METRICS", "setting_of", "frame"]

METRICS = ("f1", "em", "rouge1", "rouge2", "rougeL", "rougeLsum", "bertscore_f1", "bertscore_precision", "bertscore_recall")

COLUMNS = [
    "source",  # "ours" | "authors"
    "run_id",
    "run_dir",
    "experiment",  # config name
    "task",
    "teacher",  # registry short name; None for a student evaluated on its own
    "student",  # registry short name; None for a teacher evaluated on its own
    "setting",  # see SETTINGS
    "method",
    "lam",  # effective lambda: 0 for methods without a distillation term
    "seed",
    "train_fraction",
    "train_size",
    "test_size",
    "ot_cost",  # only for method "uld-ot"
    "shots",
    "target",  # "student" | "teacher"
    "split",
    "n",  # evaluated items
    "protocol",
    "checkpoint",
    "step",  # the authors' selected checkpoint step (ours: None)
    "metric",
    "value",  # x100
    "flag",  # a known defect of this number, else None
]

# Canonical names of what a row measures; tables and plots group on these.
SETTINGS = {
    "teacher": "teacher, few-shot",
    "student-few-shot": "student, few-shot",
    "student-zero-shot": "student, zero-shot",
    "sft-gold": "student, SFT on gold answers",
    "lambda0": "λ=0 (teacher text)",
    "uld": "ULD",
    "kd-kl": "KD (KL, same tokenizer)",
    "uld-ot": "ULD-OT",
}

def setting_of(method: str, lam: float | None, target: str, shots: int | None) -> str:
    """Canonical setting code (a key of :data:`SETTINGS`) for one evaluated model.

    ULD with lambda = 0 is cross-entropy on the teacher's text, the same objective as
    ``sft-teacher``: both are the paper's "λ=0" baseline.
    """
    if target == "teacher":
        return "teacher"
    if method == "none":
        return "student-few-shot" if (shots or 0) > 0 else "student-zero-shot"
    if method == "sft-teacher" or (method == "uld" and not lam):
        return "lambda0"
    return method


def frame(rows: list[dict[str, Any]]):
    """A DataFrame with :data:`COLUMNS` from row dicts (numeric columns as floats)."""
    import pandas as pd

    df = pd.DataFrame(rows, columns=COLUMNS)
    for col in ("lam", "train_fraction", "value"):
        df[col] = df[col].astype(float)
    return df
