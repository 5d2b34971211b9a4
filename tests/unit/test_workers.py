"""How many worker processes a launch uses when none were asked for (uld.workers)."""

from __future__ import annotations

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
