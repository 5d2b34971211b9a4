"""Building a table end to end: plan its grid, run what is missing, render from the store.

This is what ``uld table NAME`` and every ``paper_tables/table_<name>.py`` script do::

    plan = plan_table(spec, preset="paper", store_root="results")   # grid point -> run folder
    launch_missing(plan)                                            # uld.pipeline, one point at a time
    table = spec.collect(plan)                                      # numbers from the store only
    table.write("results/tables")                                   # markdown, LaTeX, cells CSV (+ figure)

It sits above the pipeline (it launches runs) and above reporting (it renders), so reporting itself
never starts a computation: ``--report-only`` renders without the training stack.
"""

from __future__ import annotations

import argparse
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

from uld.distributed import dist, on_main
from uld.errors import ConfigError, RunLocked
from uld.reporting.figures import RESULTS_ENV, figures_dir
from uld.reporting.spec import PRESETS, TablePlan, TableSpec, load_spec, plan_table
from uld.workers import WORKERS_ENV, map_in_workers, resolve_workers

log = logging.getLogger(__name__)

__all__ = ["LaunchReport", "BuiltTable", "launch_missing", "build_table", "table_arg_parser", "table_script"]


@dataclass
class LaunchReport:
    launched: list[str] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)  # (run id, error)
    busy: list[tuple[str, str]] = field(default_factory=list)  # (run id, holder): computed by another process


def _run(cfg: Any, force: bool = False) -> Any:
    from uld.pipeline import run_experiment  # the training stack: only when a run is launched, not for --report-only

    return run_experiment(cfg, force=force)


def _attempt(runner: Callable[..., Any], cfg: Any, run_id: str, force: bool) -> tuple[str, str, list[str]]:
    """One point through ``runner``: ``("ran" | "busy" | "failed", message, run ids written)``."""
    try:
        folders = runner(cfg, force=force) or []
    except RunLocked as exc:
        return "busy", str(exc), []
    except Exception as exc:  # keep going: one broken point should not cost the other runs
        log.exception("run %s failed", run_id)
        return "failed", f"{type(exc).__name__}: {exc}", []
    return "ran", "", [Path(f.path).name for f in folders]


def launch_missing(plan: TablePlan, *, force: bool = False, runner: Optional[Callable[..., Any]] = None,
                   workers: Optional[int] = None) -> LaunchReport:
    """Run every grid point without results (``force``: every point) through the pipeline.

    A point another process is computing is left to it (recorded as busy); a failing point is recorded
    and the others still run; the table then shows "–" for them. So two launchers of one table share its
    grid between them.

    ``workers > 1`` runs the points in that many worker processes, the machine's cores split between
    them (``torch.set_num_threads``): on a small CPU several runs side by side use the cores better than
    one run on all of them. ``None`` takes :func:`uld.workers.default_workers` (2 on a CPU-only machine
    with two or more points to run, else 1). A teacher stage shared by points is computed once, before
    the workers start, on every core. ``runner`` must then be a module-level function (it travels to the
    workers by pickling).
    """
    runner = runner or _run
    report = LaunchReport()
    todo = plan.points if force else plan.missing()
    workers = resolve_workers(workers, len(todo))
    if workers > 1 and dist().world > 1:
        raise ConfigError("--workers starts its own processes: do not combine it with `accelerate launch`")
    if workers == 1 or len(todo) < 2:
        outcomes = []
        for i, point in enumerate(todo, 1):
            log.info("[%d/%d] %s (%s)", i, len(todo), point.run.id, point.source.name)
            outcomes.append(_attempt(runner, point.cfg, point.run.id, force))
    else:
        if runner is _run and not force:
            from uld.pipeline import shared_teacher_stages

            try:
                shared_teacher_stages([p.cfg for p in todo])
            except Exception:  # each point then meets the failure itself and is recorded as failed
                log.exception("a shared teacher stage failed")
        outcomes = map_in_workers(_attempt, [(runner, p.cfg, p.run.id, force) for p in todo], workers)
    for point, (status, message, produced) in zip(todo, outcomes):
        if status == "busy":
            report.busy.append((point.run.id, message))
        elif status == "failed":
            report.failed.append((point.run.id, message))
        elif point.run.is_complete:
            if produced and point.run.id not in produced:
                log.warning("pipeline wrote %s, the table expects %s: run ids disagree", sorted(produced), point.run.id)
            report.launched.append(point.run.id)
        else:
            report.failed.append((point.run.id, f"no scores.json in {point.run.path} after the run"))
    return report


@dataclass
class BuiltTable:
    """What :func:`build_table` did: the table, where it was written, and what ran."""

    table: Any
    paths: dict[str, Path]
    plan: TablePlan
    launch: Optional[LaunchReport] = None

    @property
    def ok(self) -> bool:
        return self.launch is None or not self.launch.failed

    def __iter__(self):
        """The written files, so ``for path in build_table(...)`` reads naturally."""
        return iter(self.paths.values())


def build_table(
    spec: TableSpec | str,
    *,
    report_only: bool = False,
    preset: str = "paper",
    store_root: str | os.PathLike = "results",
    force: bool = False,
    out_dir: str | os.PathLike | None = None,
    reference: str | os.PathLike | None = None,
    runner: Optional[Callable[..., Any]] = None,
    overrides: Optional[list[str]] = None,
    workers: Optional[int] = None,
) -> BuiltTable:
    """Plan the table's grid, run what is missing (unless ``report_only``), write md / tex / csv.

    ``force`` re-runs every grid point; it contradicts ``report_only``. Tables go to ``out_dir``
    (default ``<store_root>/tables``), a seed table's figure to ``out_dir`` too when it is given, else
    to ``<store_root>/figures``.
    """
    if report_only and force:
        raise ConfigError("--force re-runs the grid; it cannot be combined with --report-only")
    spec = load_spec(spec) if isinstance(spec, str) else spec
    plan = plan_table(spec, preset=preset, store_root=store_root, overrides=overrides)
    launch = None if report_only else launch_missing(plan, force=force, runner=runner, workers=workers)
    if launch is not None and getattr(spec, "diagnose", False):
        from uld.diagnostics import diagnose_missing  # torch: only when runs were launched

        launch.failed += on_main(lambda: diagnose_missing(plan.points)) or []
    out = Path(out_dir) if out_dir is not None else Path(store_root) / "tables"
    table = spec.collect(plan, reference=reference)
    # an explicit out_dir is where everything goes, figures included: the store is only read
    figs = out if out_dir is not None else figures_dir(store_root)
    kwargs = {"figures_dir": figs} if getattr(spec, "figure", None) is not None else {}
    paths = on_main(lambda: table.write(out, store_root=Path(store_root), **kwargs))
    return BuiltTable(table=table, paths=paths, plan=plan, launch=launch)


def table_arg_parser(spec: TableSpec, description: str | None = None) -> argparse.ArgumentParser:
    """The command line every ``paper_tables/table_*.py`` script (and ``uld table``) shares."""
    p = argparse.ArgumentParser(prog=f"table_{spec.name}.py", description=description or spec.title)
    p.add_argument("--report-only", action="store_true", help="only read the store; run nothing")
    p.add_argument("--preset", choices=PRESETS, default="paper", help="paper grid, or the small CPU grid")
    p.add_argument("--store", default=os.environ.get(RESULTS_ENV, "results"), help="results store root (default: results)")
    p.add_argument("--force", action="store_true", help="re-run grid points that already have results")
    p.add_argument("--out", default=None, help="where tables go (default: <store>/tables)")
    p.add_argument("--workers", type=int, default=None,
                   help="missing runs side by side in this many processes, the cores split between them (default: "
                   f"${WORKERS_ENV}, else 2 on a CPU-only machine with 2+ cores and 2+ runs to do, else 1)")
    return p


def _lost_runs(plan: TablePlan) -> list[str]:
    """A line per cell without a run that a changed schema default separated from its run."""
    from uld.config import explicit_keys
    from uld.store import default_drift, finished_configs

    missing = plan.missing()
    runs = finished_configs(plan.store_root) if missing else {}
    lines = []
    for p in missing:
        for folder, diffs in default_drift(p.cfg, runs, explicit_keys(p.source)):
            fields = ", ".join(f"'{k}' (the run's {a!r}, today's default {b!r})" for k, a, b in diffs)
            lines.append(f"  LOST {p.run.id} ({p.source.name}): runs/{folder} differs only in defaults that changed since "
                         f"it ran: {fields}; set them in {p.source.name} to use it")
    return lines


def table_script(spec: TableSpec | str, argv: Sequence[str] | None = None, description: str | None = None) -> int:
    """Body of every ``paper_tables/table_*.py`` (and ``uld table``): parse, build, report. Exit code."""
    spec = load_spec(spec) if isinstance(spec, str) else spec
    parser = table_arg_parser(spec, description)
    args = parser.parse_args(argv)
    if args.report_only and args.force:
        parser.error("--force re-runs grid points; it cannot be combined with --report-only")
    if args.workers is not None and args.workers < 1:
        parser.error(f"--workers must be at least 1, got {args.workers}")
    built = build_table(spec, report_only=args.report_only, preset=args.preset, store_root=args.store, force=args.force,
                        out_dir=args.out, workers=args.workers)
    if not dist().is_main:
        return 0 if built.ok else 1
    print(built.plan.summary())
    for point in built.plan.missing():  # each an empty cell of the table
        state = "unfinished" if point.run.path.is_dir() else "no folder"
        print(f"  no results: {point.run.path} ({state}; {point.source.name})")
    for line in _lost_runs(built.plan):
        print(line)
    if built.launch is not None:
        print(f"launched {len(built.launch.launched)} runs; {len(built.launch.failed)} failed; "
              f"{len(built.launch.busy)} being computed by another process")
        for run_id, error in built.launch.failed:
            print(f"  FAILED {run_id}: {error}")
        for run_id, holder in built.launch.busy:
            print(f"  busy {run_id}: {holder}")
    for path in built.paths.values():
        print(f"wrote {path}")
    return 0 if built.ok else 1
