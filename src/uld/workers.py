"""Grid points side by side: how many worker processes a launch uses, and running jobs in them.

On a small CPU one training run does not use two cores well (its small matmuls, the optimizer and the
decoding loop leave a second thread idle much of the time), so several runs side by side, the cores
split between them, finish a grid sooner than the same runs one after another on all cores
(``results/benchmarks/throughput.json``, ``student_run``). On an accelerator, or under ``accelerate
launch`` (whose processes are already the parallelism), points run one at a time.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Any, Callable, Optional, Sequence

from uld.errors import ConfigError

__all__ = ["WORKERS_ENV", "default_workers", "map_in_workers", "resolve_workers"]

WORKERS_ENV = "ULD_WORKERS"
"""Environment variable: the number of workers when ``--workers`` is not given (``1`` restores one run at a time)."""


def _accelerator_present() -> bool:
    import torch

    return bool(torch.cuda.is_available() or (hasattr(torch, "xpu") and torch.xpu.is_available())
                or torch.backends.mps.is_available())


def default_workers(n_points: int, *, cores: Optional[int] = None, accelerator: Optional[bool] = None,
                    launched: Optional[bool] = None) -> int:
    """Workers for ``n_points`` missing grid points when none were asked for.

    ``ULD_WORKERS`` when set; otherwise 2 on a machine with no accelerator, at least two cores and at
    least two points to run, outside ``accelerate launch``; else 1. Two, not one per core: each worker
    holds a student (and its optimizer) in memory, and two is what was measured to pay.
    """
    env = os.environ.get(WORKERS_ENV, "").strip()
    if env:
        try:
            value = int(env)
        except ValueError:
            raise ConfigError(f"{WORKERS_ENV}={env!r}: expected a whole number of worker processes") from None
        if value < 1:
            raise ConfigError(f"{WORKERS_ENV}={env!r}: expected at least 1")
        return value
    if n_points < 2:
        return 1
    if launched is None:
        from uld.distributed import launched as _launched

        launched = _launched()
    if launched:
        return 1
    if (cores if cores is not None else (os.cpu_count() or 1)) < 2:
        return 1
    if accelerator if accelerator is not None else _accelerator_present():
        return 1
    return 2


def resolve_workers(asked: Optional[int], n_points: int) -> int:
    """``asked`` (from ``--workers``) checked, or the default for ``n_points`` points."""
    if asked is None:
        return default_workers(n_points)
    if asked < 1:
        raise ConfigError(f"workers must be at least 1, got {asked}")
    return asked


def die_with_parent() -> None:
    """Ask Linux to kill this process when its parent dies. A pool worker otherwise outlives a parent
    killed for memory and keeps its model (gigabytes) until someone finds it. Elsewhere: nothing."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes
    import signal

    PR_SET_PDEATHSIG = 1
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):
        return
    if os.getppid() == 1:  # the parent died before the request was in place
        os._exit(1)


def _worker_init(threads: int) -> None:
    import torch

    die_with_parent()

    torch.set_num_threads(threads)
    logging.basicConfig(level=logging.INFO, format=f"[worker {os.getpid()}] %(message)s")


def map_in_workers(fn: Callable[..., Any], jobs: Sequence[tuple], workers: int) -> list[Any]:
    """``[fn(*job) for job in jobs]`` in ``workers`` spawned processes, the machine's cores split between
    them; results in the order of ``jobs``. ``fn`` must be a module-level function (it is pickled). An
    exception of a job is raised here once every job has finished, so one failure costs no other run."""
    if workers < 2 or len(jobs) < 2:
        return [fn(*job) for job in jobs]
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    workers = min(workers, len(jobs))
    threads = max(1, (os.cpu_count() or 1) // workers)
    logging.getLogger("uld").info("%d points in %d worker processes of %d thread(s) each", len(jobs), workers, threads)
    # spawn, not fork: a forked copy of a process that already ran torch's thread pools can hang
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"), initializer=_worker_init,
                             initargs=(threads,)) as pool:
        futures = [pool.submit(fn, *job) for job in jobs]
    # the pool has waited for every job: the first failure is raised only now
    return [f.result() for f in futures]
