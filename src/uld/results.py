"""The one-DataFrame view of a results store: one row per finished run x task x metric.

:func:`load_results` flattens every finished run (``scores.json`` present) into :data:`uld.columns.COLUMNS`;
``source="authors"`` gives the paper authors' numbers in the same columns (:mod:`uld.reference`), so
the two compare cell by cell. :func:`describe_config` says what a run (or a planned grid point)
measures; :func:`load_training_logs` joins every training log with it.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any, Iterable, Literal, Optional

from uld.columns import COLUMNS, SETTINGS, frame, setting_of
from uld.config import ExperimentConfig, from_dict, to_dict
from uld.errors import ConfigError, ResultsError
from uld.ids import run_id
from uld.io import read_json, read_jsonl
from uld.methods import METHODS
from uld.reference import load_reference
from uld.store import RunFolder, iter_runs

__all__ = ["describe_config", "load_results", "load_runs", "load_training_logs", "COLUMNS", "SETTINGS", "setting_of"]


def _get(d: dict, dotted: str, default: Any = None) -> Any:
    node: Any = d
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return default
        node = node[part]
    return node


def _check_scores(obj: Any, path: Path) -> dict:
    if not isinstance(obj, dict):
        raise ResultsError(f"{path}: expected a JSON object, got {type(obj).__name__}")
    metrics = obj.get("metrics")
    if not isinstance(metrics, dict):
        raise ResultsError(f"{path}: field 'metrics' must be an object of metric -> number")
    for k, v in metrics.items():
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float))):
            raise ResultsError(f"{path}: metric '{k}' must be a number, got {v!r}")
    return obj


def _check_agrees(run: RunFolder, cfg: dict, scores: dict, scores_path: Path) -> None:
    """A record must belong to the folder and the config it sits beside."""
    if run.path.parent.name == "runs":
        try:  # the dict already read, validated as run.config() would: one parse of config.yaml per run
            want = run_id(from_dict(ExperimentConfig, cfg, source=str(run.file("config.yaml"))))
        except ConfigError as exc:
            raise ResultsError(str(exc)) from None
        if want != run.id:
            raise ResultsError(f"{run.file('config.yaml')}: this config's run id is {want}, not the folder's {run.id}")
    if scores.get("run_id") not in (None, run.id):
        raise ResultsError(f"{scores_path}: written for run {scores['run_id']}, found in {run.id}")
    task = _get(cfg, "data.task")
    if scores.get("task") not in (None, task):
        raise ResultsError(f"{scores_path}: scores task {scores['task']!r} but the run's config says {task!r}")


def describe_config(cfg: dict[str, Any] | ExperimentConfig, target: str | None = None) -> dict[str, Any]:
    """What a run measures, from its (resolved) config: the identity columns of :data:`COLUMNS`.

    Used both for finished runs and for grid points that have not run yet, so a table can place a
    grid point in its cell before any result exists.
    """
    if isinstance(cfg, ExperimentConfig):
        cfg = to_dict(cfg)
    target = target or _get(cfg, "evaluation.target", "student")
    method = _get(cfg, "training.method", "uld")
    # a method without a distillation term trains with no λ, whatever the config says of it
    known = METHODS.get(method)
    lam = 0.0 if known is not None and not known.distills else float(_get(cfg, "training.lam", 0.0) or 0.0)
    shots = _get(cfg, "evaluation.shots", 0) if target == "student" else _get(cfg, "data.teacher_shots")
    teacher = _get(cfg, "teacher.name") or None
    student = _get(cfg, "student.name") or None
    # a model evaluated on its own does not depend on the other side of the pair
    if target == "teacher":
        student = None
    elif method in ("none", "sft-gold"):
        teacher = None
    return {
        "experiment": _get(cfg, "name"),
        "task": _get(cfg, "data.task"),
        "teacher": teacher,
        "student": student,
        "setting": setting_of(method, lam, target, shots),
        "method": method,
        "lam": lam,
        "seed": _get(cfg, "training.seed"),
        "train_fraction": float(_get(cfg, "data.train_fraction", 1.0)),
        "train_size": _get(cfg, "data.train_size"),
        "test_size": _get(cfg, "data.test_size"),
        "ot_cost": _get(cfg, "training.ot.cost") if method == "uld-ot" else None,
        "shots": shots,
        "target": target,
    }


def _rows_for_run(run: RunFolder) -> list[dict[str, Any]]:
    if not run.exists("config.yaml"):  # a table names this folder, and its scores cannot say what they measured
        raise ResultsError(f"{run.path} has scores.json but no config.yaml: its numbers cannot be placed in a cell")
    cfg = run.config_dict()
    scores_path = run.file(RunFolder.FINAL)
    scores = _check_scores(read_json(scores_path), scores_path)
    _check_agrees(run, cfg, scores, scores_path)
    base = {"source": "ours", "run_id": run.id, "run_dir": str(run.path)}
    base.update(describe_config(cfg, target=scores.get("target")))
    if scores.get("task"):
        base["task"] = scores["task"]
    base.update(
        split=scores.get("split"),
        n=scores.get("n"),
        protocol=scores.get("protocol"),
        checkpoint=scores.get("checkpoint"),
        step=None,
        flag=None,
    )
    rows = []
    for metric, value in scores["metrics"].items():
        if value is None:
            continue
        rows.append({**base, "metric": metric, "value": float(value)})
    return rows


def load_runs(runs: Iterable[RunFolder], *, on_error: Literal["raise", "warn"] = "raise"):
    """The rows of exactly these run folders (:data:`COLUMNS`), as :func:`load_results` gives them.

    A table passes the folders its plan names, so it reads its own runs and nothing else of the store.
    An unfinished run (no ``scores.json``, or a change half done) or a folder not there gives no rows.
    """
    rows: list[dict[str, Any]] = []
    for run in runs:
        if not run.is_complete:
            continue
        try:
            rows.extend(_rows_for_run(run))
        except ResultsError as exc:
            if on_error == "raise":
                raise
            warnings.warn(str(exc), stacklevel=2)
    return frame(rows)


def load_results(
    root: str | os.PathLike = "results",
    source: Literal["ours", "authors", "both"] = "ours",
    *,
    reference: str | os.PathLike | None = None,
    on_error: Literal["raise", "warn"] = "raise",
):
    """One pandas DataFrame over all finished runs: one row per run x task x metric (:data:`COLUMNS`).

    ``root`` is a store root (its ``runs/`` is read), a single run folder, or any folder holding run
    folders at any depth. ``source="authors"`` gives the authors' numbers (:func:`load_reference`),
    ``"both"`` stacks the two. A malformed record raises :class:`ResultsError` naming the file, or with
    ``on_error="warn"`` is skipped with a warning.
    """
    import pandas as pd

    if source not in ("ours", "authors", "both"):
        raise ValueError(f"source must be 'ours', 'authors' or 'both', got {source!r}")
    frames = []
    if source in ("ours", "both"):
        frames.append(load_runs(iter_runs(root), on_error=on_error))
    if source in ("authors", "both"):
        frames.append(load_reference(reference))
    if len(frames) == 1:
        return frames[0]
    return pd.concat(frames, ignore_index=True)


_LOG_INFO = ("task", "teacher", "student", "setting", "method", "lam", "train_fraction", "ot_cost", "seed")


def load_training_logs(root: str | os.PathLike = "results", run_ids: Optional[list[str]] = None):
    """Every ``metrics.jsonl`` line of the store's runs, joined with what the run is.

    Columns: the log keys (step, epoch, split, loss, ce, uld, lr, tokens_per_s, ...) plus run_id,
    run_dir, task, teacher, student, setting, method, lam, train_fraction, ot_cost, seed. Unfinished
    runs are included: their curves are exactly what one looks at while they train.
    """
    import pandas as pd

    wanted = set(run_ids) if run_ids is not None else None
    frames = []
    for run in iter_runs(root, complete_only=False):
        if wanted is not None and run.id not in wanted:
            continue
        if not run.exists("metrics.jsonl"):
            continue
        records = read_jsonl(run.file("metrics.jsonl"))
        if not records:
            continue
        desc = describe_config(run.config_dict(), target="student")
        info = {"run_id": run.id, "run_dir": str(run.path)}
        info.update({k: desc[k] for k in _LOG_INFO})
        df = pd.DataFrame(records)
        for k, v in info.items():
            df[k] = v
        frames.append(df)
    if not frames:
        return pd.DataFrame(columns=["run_id", "run_dir", *_LOG_INFO, "step", "epoch", "split", "loss", "ce", "uld"])
    return pd.concat(frames, ignore_index=True)
