"""How many worker processes a launch uses when none were asked for (uld.workers)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from uld.errors import ConfigError
from uld.workers import default_workers, map_in_workers, resolve_workers


@pytest.fixture(autouse=True)
def _no_env(monkeypatch):
    monkeypatch.delenv("ULD_WORKERS", raising=False)


def test_two_workers_on_a_cpu_only_machine_with_points_to_spare():
    assert default_workers(2, cores=2, accelerator=False, launched=False) == 2
    assert default_workers(12, cores=16, accelerator=False, launched=False) == 2


@pytest.mark.parametrize("n_points, cores, accelerator, launched", [
    (1, 2, False, False),   # one point: nothing to put beside it
    (0, 2, False, False),
    (4, 1, False, False),   # one core
    (4, 2, True, False),    # an accelerator does the work; points queue for it
    (4, 2, False, True),    # accelerate launch: its processes are the parallelism
])  # fmt: skip
def test_one_worker_otherwise(n_points, cores, accelerator, launched):
    assert default_workers(n_points, cores=cores, accelerator=accelerator, launched=launched) == 1


def test_environment_variable_wins_and_is_checked(monkeypatch):
    monkeypatch.setenv("ULD_WORKERS", "3")
    assert default_workers(1, cores=1, accelerator=True, launched=True) == 3
    for bad in ("zero", "0", "-2"):
        monkeypatch.setenv("ULD_WORKERS", bad)
        with pytest.raises(ConfigError, match="ULD_WORKERS"):
            default_workers(4)


def test_an_explicit_count_is_kept_and_checked():
    assert resolve_workers(1, 10) == 1 and resolve_workers(3, 1) == 3
    with pytest.raises(ConfigError, match="at least 1, got 0"):
        resolve_workers(0, 4)


def _square_or_fail(x: int) -> int:
    if x == 3:
        raise ValueError("three")
    return x * x


def test_map_in_workers_keeps_order_and_raises_after_every_job():
    assert map_in_workers(_square_or_fail, [(1,), (2,), (4,)], 2) == [1, 4, 16]
    assert map_in_workers(_square_or_fail, [(5,)], 2) == [25]  # one job: no pool
    with pytest.raises(ValueError, match="three"):
        map_in_workers(_square_or_fail, [(1,), (3,), (4,)], 2)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="parent-death signal is Linux-only")
def test_workers_die_with_a_killed_parent(tmp_path):
    """A `uld run` killed for memory must not leave its workers (each holding a model) running."""
    (tmp_path / "sleeper.py").write_text(
        "import os, time\n"
        "def job(folder):\n"
        "    open(os.path.join(folder, str(os.getpid())), 'w').close()\n"
        "    time.sleep(120)\n"
    )
    (tmp_path / "pids").mkdir()
    parent = subprocess.Popen(
        [sys.executable, "-c", "import sys, sleeper; from uld.workers import map_in_workers; "
                               "map_in_workers(sleeper.job, [(sys.argv[1],), (sys.argv[1],)], 2)", str(tmp_path / "pids")],
        env={**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])})
    deadline = time.time() + 60
    while len(list((tmp_path / "pids").iterdir())) < 2 and time.time() < deadline:
        time.sleep(0.2)
    pids = [int(p.name) for p in (tmp_path / "pids").iterdir()]
    assert len(pids) == 2, "workers did not start"
    parent.send_signal(signal.SIGKILL)
    parent.wait()
    deadline = time.time() + 15
    while any(_alive(p) for p in pids) and time.time() < deadline:
        time.sleep(0.2)
    assert not any(_alive(p) for p in pids)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"  # a zombie has exited
    except FileNotFoundError:
        return False


def test_a_shared_teacher_stage_is_computed_once_before_the_workers_start(tmp_path, monkeypatch):
    """Ten points of one teacher stage: the stage runs once in the launching process (all its cores),
    not in one worker while the other waits on its lock; finished or forced points change that as documented."""
    from pathlib import Path

    import uld.pipeline
    from uld.config import expand_grid, load_config
    from uld.store import RunFolder

    repo = Path(__file__).resolve().parents[2]
    cfg = load_config(repo / "experiments" / "powered" / "powered_2_main.yaml", [f"output_dir={tmp_path}"])
    events = []
    monkeypatch.setattr(uld.pipeline, "run_teacher_stage",
                        lambda point, **kw: events.append(("stage", RunFolder.for_config(point, kind="teacher").id, kw))
                        or tmp_path / "stage")
    monkeypatch.setattr(uld.pipeline, "map_in_workers", lambda fn, jobs, workers: events.append(("workers", len(jobs))) or [])

    uld.pipeline.run_experiment(cfg, workers=2)
    stage_id = RunFolder.for_config(expand_grid(cfg)[0], kind="teacher").id
    assert events == [("stage", stage_id, {"wait": True}), ("workers", 10)]

    events.clear()
    uld.pipeline.run_experiment(cfg, workers=2, stages=("evaluate",))  # no stage needs the teacher's answers
    assert events == [("workers", 10)]
    events.clear()
    uld.pipeline.run_experiment(cfg, workers=2, force=True)  # each forced point redoes the stage itself
    assert events == [("workers", 10)]

    for point in expand_grid(cfg):  # every run finished: nothing left to need the stage
        run = RunFolder.for_config(point)
        run.init(point)
        (run.path / "scores.json").write_text('{"metrics": {"f1": 1.0}}')
    assert uld.pipeline.shared_teacher_stages(expand_grid(cfg)) == []


def test_a_table_computes_its_shared_teacher_stage_before_the_workers(tmp_path, monkeypatch):
    """`uld table` (launch_missing) does the same; a failing stage is logged and left to the points."""
    from pathlib import Path

    import uld.pipeline
    import uld.tables
    from uld.config import expand_grid, load_config
    from uld.reporting.spec import GridPoint, TablePlan
    from uld.store import RunFolder

    repo = Path(__file__).resolve().parents[2]
    cfg = load_config(repo / "experiments" / "powered" / "powered_2_main.yaml", [f"output_dir={tmp_path}"])
    plan = TablePlan(spec=None, preset="full", store_root=tmp_path,
                     points=[GridPoint(p, Path("powered_2_main.yaml"), RunFolder.for_config(p), {}) for p in expand_grid(cfg)])
    events = []

    def stage(point, **kw):
        events.append("stage")
        raise RuntimeError("no teacher here")

    monkeypatch.setattr(uld.pipeline, "run_teacher_stage", stage)
    monkeypatch.setattr(uld.tables, "map_in_workers",
                        lambda fn, jobs, workers: events.append(("workers", len(jobs))) or [("failed", "x", [])] * len(jobs))
    report = uld.tables.launch_missing(plan, workers=2)
    assert events == ["stage", ("workers", 10)] and len(report.failed) == 10
