"""One writer per run, finished runs never destroyed, nothing unpickled: through the real command line.

* Two ``uld run`` of one config started together: with ``--wait`` both succeed and the run is computed
  once (no duplicated log line); without it the second is refused with the holder's pid while the first
  holds the lock. The same for two ``uld generate``.
* ``uld train`` on a finished run changes nothing; ``--force`` retrains beside the old records: killed
  half-way, the old results are intact and the run still complete; finished, the new records replace
  them in one step and the evaluation is redone.
* No code path loads a pickle: ``torch.load``, ``pickle.load`` and ``allow_pickle=True`` appear nowhere
  in the package, and accelerate's pickling state loader is never called.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.integration.forked_uld import ForkedUld

REPO = Path(__file__).resolve().parents[2]
SMOKE = REPO / "experiments" / "smoke.yaml"
SHARED_DATA = REPO.parent / "shared" / "data"
DATA = SHARED_DATA if (SHARED_DATA / "squad").is_dir() else REPO / "tests" / "fixtures" / "data"


def _overrides(models: dict, store: Path, steps: int = 3) -> list[str]:
    return [
        f"teacher.path={models['teacher']}", f"student.path={models['student']}", f"data.dir={DATA}", f"output_dir={store}",
        "training.method=uld", "data.train_size=12", "data.test_size=4", "data.max_length=256", "generation.max_new_tokens=6",
        "generation.batch_size=4", "generation.top_k_signal=16", "training.batch_size=4", f"training.max_steps={steps}",
        "training.log_every=1", "training.optim.lr=1e-3", "evaluation.max_new_tokens=6", "evaluation.batch_size=4",
    ]


def _env(**extra) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", **extra)
    for k in ("ULD_FAULT_AT", "ULD_FAULT_LOG"):
        if k not in extra:
            env.pop(k, None)
    return env


def _uld(*args: str, **env) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "uld", *args], cwd=REPO, env=_env(**env), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _done(proc: subprocess.Popen, timeout: float = 600) -> tuple[int, str]:
    _, err = proc.communicate(timeout=timeout)
    return proc.returncode, err


def _files(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and not p.name.endswith(".lock")}


def _lines(path: Path) -> list[str]:
    return [line for line in path.read_text().splitlines() if line.strip()]


def _wait_for_lock(lock: Path, timeout: float = 120) -> dict:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if lock.exists() and lock.read_text().strip():
            return json.loads(lock.read_text())
        time.sleep(0.05)
    raise AssertionError(f"{lock} was never taken")


def test_two_runs_of_one_config_compute_it_once(tiny_models, tmp_path):
    store = tmp_path / "store"
    args = ["run", str(SMOKE), *_overrides(tiny_models, store)]
    first, second = _uld(*args, "--wait"), _uld(*args, "--wait")
    (rc1, err1), (rc2, err2) = _done(first), _done(second)
    assert rc1 == 0 and rc2 == 0, (err1[-2000:], err2[-2000:])
    (run,) = list((store / "runs").glob("smoke-*"))
    lines = _lines(run / "metrics.jsonl")
    assert len(lines) == len(set(lines)) == 4  # 3 train lines + 1 validation pass, written once
    assert json.loads((run / "train_summary.json").read_text())["steps"] == 3
    assert len(_lines(run / "eval" / "predictions.jsonl")) == 4


def test_a_second_writer_is_refused_naming_the_holder(tiny_models, tmp_path):
    store = tmp_path / "store"
    args = ["run", str(SMOKE), *_overrides(tiny_models, store, steps=12)]
    # the second command comes from a python that has imported the stack already, so it reaches the lock
    # within a second of asking: the first run need not train long to still hold it then
    second = ForkedUld(_env(), cwd=REPO)
    first = _uld(*args)
    try:
        holder = _wait_for_lock(next_lock(store, "runs"))
        log = tmp_path / "second.log"
        rc = second.run(args, log)
        err = log.read_text()
        assert rc == 2, err[-2000:]
        assert re.search(rf"uld: error: RunLocked: runs/smoke-\w+ is being computed by pid {holder['pid']} on .*; wait for it, or pass --wait",
                         err.strip().splitlines()[-1]), err[-1000:]
    finally:
        second.close()
        rc1, err1 = _done(first)
    assert rc1 == 0, err1[-2000:]
    (run,) = list((store / "runs").glob("smoke-*"))
    lines = _lines(run / "metrics.jsonl")
    assert len(lines) == len(set(lines))


def next_lock(store: Path, kind: str, timeout: float = 120) -> Path:
    deadline = time.time() + timeout
    while time.time() < deadline:
        locks = list((store / kind).glob(".*.lock")) if (store / kind).is_dir() else []
        locks = [p for p in locks if not p.name.endswith(".init.lock")]
        if locks:
            return locks[0]
        time.sleep(0.05)
    raise AssertionError(f"no lock under {store / kind}")


def test_a_second_generate_is_refused_naming_the_holder(tiny_models, tmp_path):
    store = tmp_path / "store"
    args = ["generate", str(SMOKE), *_overrides(tiny_models, store), "data.train_size=60", "generation.chunk_size=4"]
    first = _uld(*args)
    try:
        holder = _wait_for_lock(next_lock(store, "teacher"))
        rc, err = _done(_uld(*args))
        assert rc == 2 and f"is being computed by pid {holder['pid']}" in err.strip().splitlines()[-1], err[-1000:]
    finally:
        rc1, err1 = _done(first)
    assert rc1 == 0, err1[-2000:]
    rc, err = _done(_uld(*args))  # once the first is done, a rerun finds the stage complete
    assert rc == 0, err[-1000:]


@pytest.fixture(scope="module")
def finished(tiny_models, tmp_path_factory):
    # one finished run for both tests below: the first asserts it leaves the run as it found it, the
    # second (forced retraining) is the only one that changes it
    store = tmp_path_factory.mktemp("finished") / "store"
    rc, err = _done(_uld("run", str(SMOKE), *_overrides(tiny_models, store)))
    assert rc == 0, err[-2000:]
    (run,) = list((store / "runs").glob("smoke-*"))
    return store, run


def test_train_on_a_finished_run_changes_nothing(tiny_models, finished):
    store, run = finished
    before = _files(run)
    for extra in ([], ["--no-resume"], ["--resume"]):
        rc, err = _done(_uld("train", str(SMOKE), *_overrides(tiny_models, store), *extra))
        assert rc == 0, err[-1000:]
        assert "already finished" in err
    assert _files(run) == before


def test_forced_retraining_is_built_beside_and_swapped_in(tiny_models, finished):
    store, run = finished
    args = ["train", str(SMOKE), *_overrides(tiny_models, store), "--force"]
    # a retraining that finishes replaces the training records and retires the old evaluation
    points = run.parent / "points.log"
    rc, err = _done(_uld(*args, ULD_FAULT_LOG=str(points)))
    assert rc == 0, err[-1000:]
    assert not (run / "scores.json").exists() and not (run / "eval").exists()
    assert not list(run.glob(".staging-*")) and not (run / ".commit.json").exists()
    assert (run / "train_summary.json").is_file() and (run / "checkpoints" / "best" / "model.safetensors").is_file()
    staging_points = [int(line.split()[0]) for line in points.read_text().splitlines() if "/.staging-train/checkpoints/state" in line]
    assert staging_points
    rc, err = _done(_uld("run", str(SMOKE), *_overrides(tiny_models, store)))  # re-evaluate: back to a complete run
    assert rc == 0 and (run / "scores.json").is_file(), err[-1000:]
    # killed while the new student trains: the old records are all there, the run still complete
    before = _files(run)
    rc, _ = _done(_uld(*args, ULD_FAULT_AT=str(staging_points[0])))
    assert rc == 137
    assert {k: v for k, v in _files(run).items() if not k.startswith(".staging-")} == before
    assert (run / "scores.json").is_file()


def test_the_package_never_loads_a_pickle():
    src = REPO / "src" / "uld"
    offenders = []
    for path in sorted(src.rglob("*.py")):
        text = path.read_text()
        for pattern in (r"torch\.load\(", r"pickle\.loads?\(", r"allow_pickle\s*=\s*True", r"\.load_state\(", r"joblib\.load"):
            if re.search(pattern, text):
                offenders.append(f"{path.relative_to(REPO)}: {pattern}")
    assert not offenders, offenders
