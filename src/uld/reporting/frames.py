"""The frames behind the analysis notebooks (which only read the store and plot these).

Each takes ``load_results(store, source="both")`` (our runs and the authors' numbers, one row per run x
task x metric) and returns a tidy frame for one kind of figure: ours beside the authors' per cell, the
training-fraction and student-size series, the cost ablation, the training curves.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import pandas as pd

from uld.reporting.compare import KEY_FIELDS, cell_key

__all__ = ["STUDENT_PARAMS", "paired", "fraction_frame", "size_frame", "cost_frame", "curves_frame"]

# Parameter counts (approximate, from the model cards) for the student-size plots.
STUDENT_PARAMS = {
    "pythia-160m": 160e6,
    "pythia-410m": 410e6,
    "pythia-1b": 1.0e9,
    "opt-350m": 350e6,
    "bloomz-560m": 560e6,
    "mt0-base": 580e6,
    "smollm2-135m-instruct": 135e6,
    "gemma-3-270m": 270e6,
    "qwen2.5-0.5b-instruct": 494e6,
}


def _pair_label(df: Any) -> Any:
    return df["teacher"].fillna("–") + " → " + df["student"].fillna("–")


def paired(df: Any, metrics: Sequence[str] | None = None) -> Any:
    """Ours beside the authors' per cell: one row per cell key x metric with both numbers.

    ``df`` is ``load_results(..., source="both")``. Our runs in one cell are averaged. Columns:
    KEY_FIELDS, metric, ours, authors, diff, n_runs, flag.
    """
    if metrics is not None:
        df = df[df["metric"].isin(metrics)]
    df = df.copy()
    df["key"] = [cell_key(r) for r in df.to_dict("records")]
    ours = df[df["source"] == "ours"].groupby(["key", "metric"]).agg(ours=("value", "mean"), n_runs=("value", "size"))
    authors = df[df["source"] == "authors"].groupby(["key", "metric"]).agg(authors=("value", "first"), flag=("flag", "first"))
    out = ours.join(authors, how="inner").reset_index()
    if out.empty:
        return pd.DataFrame(columns=[*KEY_FIELDS, "metric", "ours", "authors", "diff", "n_runs", "flag"])
    out[list(KEY_FIELDS)] = pd.DataFrame(out["key"].tolist(), index=out.index)
    out["diff"] = out["ours"] - out["authors"]
    return out.drop(columns="key")[[*KEY_FIELDS, "metric", "ours", "authors", "diff", "n_runs", "flag"]]


def _mean_per(df: Any, by: list[str]) -> Any:
    return df.groupby(by, dropna=False, as_index=False).agg(value=("value", "mean"), n_runs=("value", "size"))


def _store_name(run_dir: Any) -> str:
    """The store a run folder lives in (``<store>/runs/<id>``): our series from different stores (the same
    grid on other hardware) stay apart. Empty for the authors' rows, which have no folder."""
    if not isinstance(run_dir, str) or not run_dir:
        return ""
    parts = Path(run_dir).parts
    return parts[-3] if len(parts) >= 3 and parts[-2] == "runs" else ""


def _fraction_panel(row: dict) -> str:
    """Whose series, at what scale: ours train on ``train_size`` items of the task (the micro studies) or
    its whole training split, the authors' on the paper's training set with 7B teachers; the two never
    share a panel."""
    if row["source"] == "authors":
        return f"authors: {row['task']}, the paper's training set\n{row['pair']}"
    size = f"{int(row['train_size'])} training items" if pd.notna(row["train_size"]) else "whole training split"
    where = f", {row['store']}" if row["store"] else ""
    return f"ours: {row['task']}, {size}{where}\n{row['pair']}"


def fraction_frame(df: Any, metric: str = "f1") -> Any:
    """λ=0 and ULD scores against the training fraction, for every (source, store, task, pair) whose runs
    vary the fraction; ``df`` may stack ``load_results`` of several stores (each stays its own series).
    Columns: source, store, task, teacher, student, train_size, setting, train_fraction, value, n_runs,
    pair, panel (:func:`_fraction_panel`: "ours: ..." or "authors: ...", with the scale)."""
    sub = df[(df["metric"] == metric) & df["setting"].isin(["lambda0", "uld"])].copy()
    sub["store"] = sub["run_dir"].map(_store_name) if "run_dir" in sub else ""
    by = ["source", "store", "task", "teacher", "student", "train_size", "setting", "train_fraction"]
    out = _mean_per(sub, by)
    series = ["source", "store", "task", "teacher", "student", "train_size"]
    varied = out.groupby(series, dropna=False)["train_fraction"].transform("nunique") > 1
    out = out[varied].copy()
    out["pair"] = _pair_label(out)
    out["panel"] = [_fraction_panel(r) for r in out.to_dict("records")] if len(out) else out["pair"]
    return out.sort_values(by).reset_index(drop=True)


def size_frame(df: Any, metric: str = "f1") -> Any:
    """Student few-shot / λ=0 / ULD scores against the student's parameter count, for every (source,
    task, teacher) series with more than one student. Full training set only."""
    sub = df[(df["metric"] == metric) & df["setting"].isin(["student-few-shot", "lambda0", "uld"])]
    sub = sub[(sub["train_fraction"] == 1.0) & sub["student"].isin(list(STUDENT_PARAMS))]
    out = _mean_per(sub, ["source", "task", "teacher", "student", "setting"])
    # the few-shot rows have no teacher: attach them to every teacher the student was distilled from
    fewshot = out[out["setting"] == "student-few-shot"].drop(columns="teacher")
    distilled = out[out["setting"] != "student-few-shot"]
    teachers = distilled[["source", "task", "student", "teacher"]].drop_duplicates()
    out = pd.concat([distilled, fewshot.merge(teachers, on=["source", "task", "student"])], ignore_index=True)
    out["params"] = out["student"].map(STUDENT_PARAMS)
    out["panel"] = out["task"] + "\nteacher " + out["teacher"].fillna("–")
    n_students = out.groupby(["source", "task", "teacher"])["student"].transform("nunique")
    return out[n_students > 1].sort_values(["source", "task", "teacher", "setting", "params"]).reset_index(drop=True)


def cost_frame(df: Any, metric: str = "f1") -> Any:
    """Closed-form ULD and ULD-OT per cost for every (source, task, pair) where OT was run.
    Column ``cost``: "closed form", "uniform", "levenshtein", "embedding"."""
    sub = df[(df["metric"] == metric) & df["setting"].isin(["uld", "uld-ot"]) & (df["train_fraction"] == 1.0)].copy()
    sub["cost"] = sub["ot_cost"].where(sub["setting"] == "uld-ot", "closed form")
    out = _mean_per(sub, ["source", "task", "teacher", "student", "cost"])
    has_ot = out.groupby(["task", "teacher", "student"])["cost"].transform(lambda c: (c != "closed form").any())
    out = out[has_ot].copy()
    out["pair"] = _pair_label(out)
    out["panel"] = out["task"] + "\n" + out["pair"]
    order = {c: i for i, c in enumerate(["closed form", "uniform", "levenshtein", "embedding"])}
    out["cost_rank"] = out["cost"].map(order).fillna(len(order))
    return out.sort_values(["task", "pair", "source", "cost_rank"]).drop(columns="cost_rank").reset_index(drop=True)


def curves_frame(logs: Any, settings: Sequence[str] = ("lambda0", "uld")) -> Any:
    """Training-log lines (``load_training_logs``) of the given settings in long form for plotting:
    one row per (run, step, split, quantity) with quantity in loss / ce / uld; a ``best`` column marks
    the step with the lowest validation loss of each run (the checkpoint the paper keeps)."""
    logs = logs[logs["setting"].isin(settings)].copy()
    if logs.empty:
        return pd.DataFrame(columns=["run_id", "task", "teacher", "student", "setting", "train_fraction",
                                     "step", "epoch", "split", "quantity", "value", "best", "pair", "panel"])
    quantities = [q for q in ("loss", "ce", "uld") if q in logs.columns]
    ids = ["run_id", "task", "teacher", "student", "setting", "train_fraction", "step", "epoch", "split"]
    for c in ids:
        if c not in logs.columns:
            logs[c] = None
    long = logs.melt(id_vars=ids, value_vars=quantities, var_name="quantity", value_name="value").dropna(subset=["value"])
    val = long[(long["split"] == "val") & (long["quantity"] == "loss")]
    best_step = val.loc[val.groupby("run_id")["value"].idxmin(), ["run_id", "step"]] if not val.empty else val[["run_id", "step"]]
    best = set(map(tuple, best_step.to_numpy().tolist()))
    long["best"] = [(r, s) in best for r, s in zip(long["run_id"], long["step"])]
    long["pair"] = _pair_label(long)
    long["panel"] = long["task"] + "\n" + long["pair"]
    return long.reset_index(drop=True)
