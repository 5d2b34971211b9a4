"""Stage orchestration: teacher answers -> student training -> evaluation, for every grid point.

Stages talk only through files: the teacher stage writes ``results/teacher/<id>/``, a run folder records
which teacher folder it learned from in ``teacher.json``, training writes checkpoints, evaluation writes
predictions and ``scores.json``. Each stage skips work whose outputs already exist, so re-running a
config is idempotent and a killed job picks up where it stopped.

One writer per run: a grid point is computed under its run lock. A second process asking for the same
point gets :class:`uld.errors.RunLocked` naming the holder (``wait=True``: it waits, then finds the work
done). A teacher stage shared by several points is waited for, so two launchers of one grid cooperate:
each computes the points the other does not hold.

Under ``accelerate launch`` every process runs this same code in one process group: the teacher stage
shards its chunks, training is data-parallel, evaluation shards the test items; the main process
takes the locks and writes the shared records.
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path
from typing import Iterable, Optional

from uld.config import ExperimentConfig, expand_grid
from uld.errors import ConfigError
from uld.distributed import dist, on_main
from uld.evaluation import evaluate_run
from uld.ids import teacher_stage_id
from uld.io import atomic_write_json
from uld.methods import get_method
from uld.store import RunFolder
from uld.teacher import run_teacher_stage
from uld.training import train
from uld.workers import map_in_workers, resolve_workers

log = logging.getLogger(__name__)

__all__ = ["STAGES", "run_point", "run_experiment", "needs_teacher_stage", "shared_teacher_stages"]

STAGES = ("teacher", "train", "evaluate")


def needs_teacher_stage(cfg: ExperimentConfig) -> bool:
    return get_method(cfg.training.method).needs_teacher_stage


def run_point(
    cfg: ExperimentConfig,
    *,
    force: bool | Iterable[str] = False,
    stages: Iterable[str] = STAGES,
    resume: bool = True,
    force_resume: bool = False,
    wait: bool = False,
) -> RunFolder:
    """Run one grid point (no ``grid`` left in ``cfg``) through the requested stages, under its lock.

    ``force``: redo stages whose outputs exist (True: every stage asked for; or the names of the stages
    to redo, e.g. ``{"train"}`` retrains a student on the existing teacher answers).
    """
    stages = tuple(stages)
    unknown = set(stages) - set(STAGES)
    if unknown:
        raise ValueError(f"unknown stage(s) {sorted(unknown)}; choose from {STAGES}")
    redo = set(stages) if force is True else set() if force is False else set(force)
    d = dist()
    run = RunFolder.for_config(cfg)
    # a final record that no longer reads (emptied, truncated) is not "done": the evaluation runs again
    for name, why in on_main(lambda: run.damaged() if run.is_complete else [], d) or []:
        log.warning("%s; evaluating the run again", why)
        redo.add("evaluate")

    def finished() -> bool:
        return run.is_complete and not redo and "evaluate" in stages

    if on_main(finished, d):
        log.info("run %s is complete; skipping (use --force to redo it)", run.id)
        for p in on_main(run.clean_leftovers, d) or []:
            log.info("removed %s, left by an interrupted writer", p)
        return run
    with contextlib.ExitStack() as held:
        on_main(lambda: held.enter_context(run.lock(blocking=wait)), d)
        on_main(lambda: run.init(cfg), d)
        if on_main(finished, d):  # another process finished it while this one waited
            return run
        teacher_dir = None
        if needs_teacher_stage(cfg) and ("teacher" in stages or "train" in stages):
            # a stage is shared by many runs: wait for a process already computing it
            teacher_dir = Path(run_teacher_stage(cfg, force="teacher" in redo, wait=True))
            on_main(lambda: _record_teacher(run, teacher_dir), d)
        if "train" in stages:
            train(cfg, run, teacher_dir, resume=resume, force="train" in redo, force_resume=force_resume)
        d.barrier()
        if "evaluate" in stages:
            evaluate_run(cfg, run, force="evaluate" in redo or "train" in redo)
        d.barrier()
    return run


def _record_teacher(run: RunFolder, teacher_dir: Path) -> None:
    """``teacher.json``: the teacher stage the run learns from (its path relative to the store, so a
    moved store stays consistent); written once, rewritten only if the stage changes."""
    record = {"id": teacher_dir.name, "path": f"teacher/{teacher_dir.name}"}
    if not run.exists("teacher.json") or run.read_json("teacher.json").get("id") != record["id"]:
        atomic_write_json(run.file("teacher.json"), record)


def shared_teacher_stages(points: Iterable[ExperimentConfig], *, stages: Iterable[str] = STAGES) -> list[Path]:
    """Compute here, once each, the unfinished teacher stages that the unfinished ``points`` need; the
    stage folders. Called before points go to worker processes: there a stage shared by the points would
    run in one worker, on its share of the cores, while the other workers wait on its lock. A stage
    another process is computing is waited for, as :func:`run_point` does."""
    done, out = set(), []
    if not ({"teacher", "train"} & set(stages)):
        return out
    for point in points:
        if not needs_teacher_stage(point) or RunFolder.for_config(point).is_complete:
            continue
        stage_id = teacher_stage_id(point)
        if stage_id not in done:
            done.add(stage_id)
            out.append(Path(run_teacher_stage(point, wait=True)))
    return out


def run_experiment(
    cfg: ExperimentConfig, *, force: bool = False, stages: Iterable[str] = STAGES, resume: bool = True, wait: bool = False,
    workers: Optional[int] = 1,
) -> list[RunFolder]:
    """Run every point of ``cfg.grid`` (or the single config); the run folders, in grid order.

    ``workers``: points side by side in that many processes (``None``: :func:`uld.workers.default_workers`
    for the points not yet finished). It writes runs only: a grid's study report is written by ``uld run``
    and a table by ``uld.tables``, both above this layer, so running a grid never reaches up to the
    reporting stack.
    """
    points = expand_grid(cfg)
    stages = tuple(stages)
    todo = sum(1 for p in points if force or not RunFolder.for_config(p).is_complete)
    workers = resolve_workers(workers, todo)
    if workers > 1 and len(points) > 1:
        if dist().world > 1:
            raise ConfigError("--workers starts its own processes: do not combine it with `accelerate launch`")
        if not force:  # a forced point redoes its stage in its own worker, as it would one after another
            shared_teacher_stages(points, stages=stages)
        return map_in_workers(_point_job, [(p, force, stages, resume, wait) for p in points], workers)
    runs = []
    for i, point in enumerate(points, 1):
        log.info("[%d/%d] %s", i, len(points), RunFolder.for_config(point).id)
        runs.append(run_point(point, force=force, stages=stages, resume=resume, wait=wait))
    return runs


def _point_job(point: ExperimentConfig, force: bool, stages: tuple, resume: bool, wait: bool) -> RunFolder:
    """One grid point in a worker process (module level: it is pickled)."""
    log.info("%s", RunFolder.for_config(point).id)
    return run_point(point, force=force, stages=stages, resume=resume, wait=wait)
