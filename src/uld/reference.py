"""The paper authors' own per-run scores (``results/reference/author_results.tsv``) as a results frame.

Their setting names are mapped onto ours (``d0`` -> λ=0, ``d1.5`` -> ULD, ``_0.25`` -> training
fraction, ``original(...)`` -> few-shot rows); the known defects of their files are flagged per number.
"""

from __future__ import annotations

import csv
import os
import re
from pathlib import Path
from typing import Any, Optional

from uld.columns import frame, setting_of
from uld.errors import ResultsError
from uld.io import repo_root

__all__ = ["load_reference", "reference_path", "REFERENCE_ENV", "AUTHOR_MODELS", "AUTHOR_TASKS", "AUTHOR_METRICS", "AUTHOR_DEFECTS"]

REFERENCE_ENV = "ULD_REFERENCE_TSV"
DEFAULT_REFERENCE = repo_root() / "results" / "reference" / "author_results.tsv"

# Names in the authors' result files -> our registry short names / task names (experiments/models.yaml).
AUTHOR_MODELS = {
    "Llama-2-7b-chat-hf": "llama-2-7b-chat",
    "Mistral-7B-Instruct-v0.2": "mistral-7b-instruct",
    "pythia-160m-deduped": "pythia-160m",
    "pythia-410m-deduped": "pythia-410m",
    "pythia-1b-deduped": "pythia-1b",
    "opt-350m": "opt-350m",
    "bloomz-560m": "bloomz-560m",
    "mt0-base": "mt0-base",
}
AUTHOR_TEACHERS = ("Llama-2-7b-chat-hf", "Mistral-7B-Instruct-v0.2")
AUTHOR_TASKS = {
    "squad": "squad",
    "qed": "qed",
    "FairytaleQA": "fairytaleqa",
    "pubmed_qa": "pubmedqa",
    "dialogsum": "dialogsum",
}
AUTHOR_METRICS = {
    "f1": "f1",
    "em": "em",
    "rouge1": "rouge1",
    "rouge2": "rouge2",
    "rougeL": "rougeL",
    "bertF1": "bertscore_f1",
    "bertP": "bertscore_precision",
    "bertR": "bertscore_recall",
}
# Known defects of the authors' files (see ../shared/README.md), keyed by
# (model, task, setting) and the metrics affected (None: every metric of the row).
AUTHOR_DEFECTS = {
    ("mistral-7b-instruct", "fairytaleqa", "teacher"): (
        None,
        "authors' file repeats the Mistral QED teacher numbers for this row",
    ),
    ("llama-2-7b-chat", "dialogsum", "teacher"): (
        ("bertscore_f1", "bertscore_precision", "bertscore_recall"),
        "authors' BERTScore for this row (8.63) looks broken",
    ),
}
_DISTILL_SETTING = re.compile(r"^d(?P<lam>\d+(?:\.\d+)?)(?:_(?P<frac>\d*\.\d+))?$")
_ORIGINAL_SETTING = re.compile(r"^original\((?P<title>titled|untitled)\)$")


def reference_path(path: str | os.PathLike | None = None) -> Path:
    """The authors' TSV: ``path``, else ``$ULD_REFERENCE_TSV``, else results/reference/ in the repo."""
    if path is not None:
        return Path(path)
    return Path(os.environ.get(REFERENCE_ENV, DEFAULT_REFERENCE))


def _num(text: str, path: Path, lineno: int, col: str) -> Optional[float]:
    if text in ("", "-", "None", "nan"):
        return None
    try:
        return float(text)
    except ValueError:
        raise ResultsError(f"{path}:{lineno}: column '{col}' is not a number: {text!r}") from None


def load_reference(path: str | os.PathLike | None = None):
    """The authors' per-run scores in the columns of :func:`load_results` (``source="authors"``).

    Mapping: dataset names -> our task names; model names -> registry short names; setting ``d0`` ->
    method ``sft-teacher`` (λ=0), ``d1.5`` -> ``uld`` with λ=1.5, a ``_0.25`` suffix -> train_fraction
    0.25; ``original(...)`` rows -> method ``none`` (teacher few-shot rows have target "teacher" and no
    student; student few-shot rows have no teacher). The teachers' rows are fractions in the authors'
    files and are scaled to x100 like every other row. Known defects are named in ``flag``.
    """
    path = reference_path(path)
    if not path.is_file():
        raise ResultsError(f"authors' reference file not found: {path} (set {REFERENCE_ENV})")
    rows: list[dict[str, Any]] = []
    with path.open(newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh, delimiter="\t")
        missing = {"student", "dataset", "teacher", "setting", "ckpt", "shots", "n", *AUTHOR_METRICS} - set(
            reader.fieldnames or []
        )
        if missing:
            raise ResultsError(f"{path}: missing columns {sorted(missing)}")
        for lineno, rec in enumerate(reader, start=2):
            rows.extend(_reference_rows(rec, path, lineno))
    return frame(rows)


def _reference_rows(rec: dict[str, str], path: Path, lineno: int) -> list[dict[str, Any]]:
    model_raw, task_raw, setting_raw = rec["student"], rec["dataset"], rec["setting"]
    if model_raw not in AUTHOR_MODELS:
        raise ResultsError(f"{path}:{lineno}: unknown model {model_raw!r} (add it to AUTHOR_MODELS)")
    if task_raw not in AUTHOR_TASKS:
        raise ResultsError(f"{path}:{lineno}: unknown dataset {task_raw!r}")
    model, task = AUTHOR_MODELS[model_raw], AUTHOR_TASKS[task_raw]
    shots = int(rec["shots"]) if rec["shots"] not in ("", "-") else None
    n = _num(rec["n"], path, lineno, "n")
    step = _num(rec["ckpt"], path, lineno, "ckpt")
    common = {
        "source": "authors",
        "run_id": f"authors:{model_raw}/{task_raw}/{rec['teacher']}/{setting_raw}",
        "run_dir": None,
        "experiment": "authors",
        "task": task,
        "seed": None,
        "train_size": None,
        "test_size": None,
        "ot_cost": None,
        "shots": shots,
        "split": "test",
        "n": int(n) if n is not None else None,
        "protocol": "authors",
        "checkpoint": None,
        "step": int(step) if step is not None else None,
    }
    scale = 1.0
    if (m := _DISTILL_SETTING.match(setting_raw)) is not None:
        teacher_raw = rec["teacher"]
        if teacher_raw not in AUTHOR_MODELS:
            raise ResultsError(f"{path}:{lineno}: unknown teacher {teacher_raw!r}")
        lam = float(m["lam"])
        method = "uld" if lam > 0 else "sft-teacher"
        frac = float(m["frac"]) if m["frac"] else 1.0
        common.update(teacher=AUTHOR_MODELS[teacher_raw], student=model, method=method, lam=lam,
                      train_fraction=frac, target="student", setting=setting_of(method, lam, "student", 0))
    elif _ORIGINAL_SETTING.match(setting_raw):
        is_teacher = model_raw in AUTHOR_TEACHERS
        target = "teacher" if is_teacher else "student"
        common.update(teacher=model if is_teacher else None, student=None if is_teacher else model,
                      method="none", lam=0.0, train_fraction=1.0, target=target,
                      setting=setting_of("none", 0.0, target, shots))
        scale = 100.0 if is_teacher else 1.0  # the teachers' rows are stored as fractions
    else:
        raise ResultsError(f"{path}:{lineno}: unknown setting {setting_raw!r}")

    defect = AUTHOR_DEFECTS.get((model, task, common["setting"]))
    out = []
    for col, metric in AUTHOR_METRICS.items():
        value = _num(rec[col], path, lineno, col)
        if value is None:
            continue
        if scale != 1.0 and not -1.0 <= value <= 1.0:
            raise ResultsError(f"{path}:{lineno}: teacher row {col}={value} is not a fraction")
        flag = None
        if defect is not None and (defect[0] is None or metric in defect[0]):
            flag = defect[1]
        value = round(value * scale, 10)  # 0.5301 * 100 -> 53.01, not 53.010000000000005
        out.append({**common, "metric": metric, "value": value, "flag": flag})
    return out
