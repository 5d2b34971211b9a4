"""Stage orchestration: teacher answers -> student training -> evaluation, for every grid point.

Stages talk only through files: the teacher stage writes ``results/teacher/<id>/``, a run folder records
which teacher folder it learned from in ``teacher.json``, training writes checkpoints, evaluation writes
predictions and ``scores.json``. Each stage skips work whose outputs already exist, so re-running a
config is idempotent and a killed job picks up where it stopped.

Under ``accelerate launch`` every process runs this same code: the teacher stage shards its chunks,
training is data-parallel, and evaluation runs on the main process while the others wait.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Iterable

from uld.config import ExperimentConfig, expand_grid
from uld.io import atomic_write_json
from uld.store import RunFolder

log = logging.getLogger(__name__)

STAGES = ("teacher", "train", "evaluate")
TEACHER_METHODS = {"sft-teacher", "uld", "kd-kl", "uld-ot"}


def needs_teacher_stage(cfg: ExperimentConfig) -> bool:
    return cfg.training.method in TEACHER_METHODS


def _state():
    from accelerate import PartialState

    return PartialState()


def run_point(
    cfg: ExperimentConfig,
    *,
    force: bool = False,
    stages: Iterable[str] = STAGES,
    resume: bool = True,
    force_resume: bool = False,
) -> RunFolder:
    """Run one grid point (no ``grid`` left in ``cfg``) through the requested stages."""
    stages = tuple(stages)
    unknown = set(stages) - set(STAGES)
    if unknown:
        raise ValueError(f"unknown stage(s) {sorted(unknown)}; choose from {STAGES}")
    state = _state()
    run = RunFolder.for_config(cfg)
    if run.exists("scores.json") and not force and "evaluate" in stages:
        log.info("run %s is complete; skipping (use --force to redo it)", run.id)
        return run
    if state.is_main_process:
        run.init(cfg)
    state.wait_for_everyone()

    teacher_dir = None
    if needs_teacher_stage(cfg) and ("teacher" in stages or "train" in stages):
        from uld.teacher import run_teacher_stage

        teacher_dir = Path(run_teacher_stage(cfg, force=force and "teacher" in stages))
        if state.is_main_process:
            atomic_write_json(run.file("teacher.json"), {"path": str(teacher_dir), "id": teacher_dir.name})
    if "train" in stages and cfg.training.method != "none":
        from uld.training import train

        train(cfg, run, teacher_dir, resume=resume and run.exists("checkpoints", "state"), force_resume=force_resume)
    state.wait_for_everyone()
    if "evaluate" in stages and state.is_main_process:
        from uld.evaluation import evaluate_run

        evaluate_run(cfg, run, force=force)
    state.wait_for_everyone()
    return run


def run_experiment(
    cfg: ExperimentConfig, *, force: bool = False, stages: Iterable[str] = STAGES, resume: bool = True, report: bool = True
) -> list[RunFolder]:
    """Run every point of ``cfg.grid`` (or the single config) and, for a grid, write a study report."""
    points = expand_grid(cfg)
    runs = []
    for i, point in enumerate(points, 1):
        log.info("[%d/%d] %s", i, len(points), RunFolder.for_config(point).id)
        runs.append(run_point(point, force=force, stages=stages, resume=resume))
    if report and "evaluate" in tuple(stages) and _state().is_main_process:
        paths = write_study_report(cfg, runs)
        for p in paths:
            print(f"wrote {p}")
    return runs


def write_study_report(cfg: ExperimentConfig, runs: list[RunFolder]) -> list[Path]:
    """Markdown table + bar plot of the study's runs (what varies across the grid vs the scores)."""
    import matplotlib

    matplotlib.use("Agg")
    import pandas as pd
    import seaborn as sns

    from uld.io import atomic_write_text

    varying = list(cfg.grid)
    rows = []
    for run in runs:
        if not run.exists("scores.json"):
            continue
        point = run.read_json("scores.json")
        from uld.config import load_config

        pcfg = load_config(run.file("config.yaml"))
        row = {"run": run.id}
        for key in varying:
            node = pcfg
            for part in key.split("."):
                node = getattr(node, part)
            row[key.split(".")[-1]] = node
        row.update({k: round(v, 2) for k, v in point.get("metrics", {}).items()})
        rows.append(row)
    if not rows:
        return []
    df = pd.DataFrame(rows)
    root = Path(cfg.output_dir)
    table = root / "tables" / f"{cfg.name}.md"
    header = f"# {cfg.description or cfg.name}\n\nOne row per run (folders under {root / 'runs'}).\n\n"
    atomic_write_text(table, header + df.to_markdown(index=False) + "\n")

    label_cols = [k.split(".")[-1] for k in varying] or ["run"]
    df["setting"] = df[label_cols].astype(str).agg(" / ".join, axis=1)
    metric_cols = [c for c in ("f1", "em", "rougeL", "bertscore_f1") if c in df.columns]
    long = df.melt(id_vars=["setting"], value_vars=metric_cols, var_name="metric", value_name="score")
    sns.set_theme(style="whitegrid")
    ax = sns.barplot(data=long, x="metric", y="score", hue="setting")
    ax.set_title(cfg.name)
    figure = root / "figures" / f"{cfg.name}.png"
    figure.parent.mkdir(parents=True, exist_ok=True)
    tmp = figure.with_name(f".{figure.name}.tmp.png")
    ax.figure.savefig(tmp, dpi=120, bbox_inches="tight")
    tmp.replace(figure)
    matplotlib.pyplot.close(ax.figure)
    return [table, figure]
