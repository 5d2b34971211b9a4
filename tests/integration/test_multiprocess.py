"""The README's multi-process command, run as a user runs it: `accelerate launch ... -m uld ...` on 2 CPU processes.

One process group for every stage: the teacher stage shards its chunks, the student trains data-parallel
(both ranks checkpoint the same weights: each writes its RNG state and its weight digest), evaluation
shards the test items and one process writes every record. Against a 1-process run with the same global
batch (2 x 2 rows against 1 x 4):

* the teacher stage (answers and signal) is identical;
* the final student equals it within 5% of the training update: data parallelism averages the ranks'
  per-micro-batch mean losses, one process takes the mean over the whole batch's tokens, so the
  gradients differ slightly (measured: 1.6%);
* the 2-process evaluation's predictions and scores equal a 1-process evaluation of the same checkpoint;
* every log line and every command-line line is written once.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from safetensors.torch import load_file

REPO = Path(__file__).resolve().parents[2]
SMOKE = REPO / "experiments" / "smoke.yaml"
CPU_2PROC = REPO / "experiments" / "accelerate" / "cpu_2proc.yaml"
SHARED_DATA = REPO.parent / "shared" / "data"
DATA = SHARED_DATA if (SHARED_DATA / "squad").is_dir() else REPO / "tests" / "fixtures" / "data"

pytestmark = pytest.mark.ci


def _overrides(models: dict, store: Path, batch: int) -> list[str]:
    return [
        f"teacher.path={models['teacher']}", f"student.path={models['student']}", f"data.dir={DATA}", f"output_dir={store}",
        "training.method=uld", "data.train_size=12", "data.test_size=4", "data.max_length=256", "generation.max_new_tokens=6",
        "generation.batch_size=4", "generation.chunk_size=4", "generation.top_k_signal=16", f"training.batch_size={batch}",
        "training.max_steps=3", "training.optim.lr=1e-3", "evaluation.max_new_tokens=6", "evaluation.batch_size=4",
        "training.checkpoints.keep_state=true",
    ]


def _env() -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", ACCELERATE_USE_CPU="1")
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "ULD_FAULT_AT", "ULD_FAULT_LOG"):
        env.pop(k, None)
    return env


def _launch(*args: str) -> subprocess.CompletedProcess:
    accelerate = Path(sys.executable).with_name("accelerate")
    cmd = [str(accelerate), "launch", "--config_file", str(CPU_2PROC), "-m", "uld", *args]
    return subprocess.run(cmd, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=900)


def _single(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "uld", *args], cwd=REPO, env=_env(), capture_output=True, text=True, timeout=900)


@pytest.fixture(scope="module")
def stores(tiny_models, tmp_path_factory):
    two, one = tmp_path_factory.mktemp("two"), tmp_path_factory.mktemp("one")
    launched = _launch("run", str(SMOKE), *_overrides(tiny_models, two, batch=2))
    assert launched.returncode == 0, launched.stderr[-3000:]
    single = _single("run", str(SMOKE), *_overrides(tiny_models, one, batch=4))
    assert single.returncode == 0, single.stderr[-3000:]
    return two, one, launched, tiny_models


def _run(store: Path) -> Path:
    (run,) = list((store / "runs").glob("smoke-*"))
    return run


def _stage(store: Path) -> Path:
    (stage,) = [p for p in (store / "teacher").iterdir() if not p.name.startswith(".")]
    return stage


def test_both_ranks_are_one_group_and_hold_the_same_weights(stores):
    two, _, _, _ = stores
    run = _run(two)
    summary = json.loads((run / "train_summary.json").read_text())
    assert summary["num_processes"] == 2 and summary["global_batch"] == 4
    state = run / "checkpoints" / "state"
    digests = [json.loads((state / f"rng-{r}.json").read_text())["weights_sha256"] for r in (0, 1)]
    assert digests[0] == digests[1] and digests[0]  # rank 1 trained the same student as rank 0


def test_the_sharded_teacher_stage_equals_the_single_process_one(stores):
    two, one, _, _ = stores
    a, b = _stage(two), _stage(one)
    assert a.name == b.name
    pd.testing.assert_frame_equal(pd.read_parquet(a / "answers.parquet"), pd.read_parquet(b / "answers.parquet"))
    for name in ("probs.npy", "tail.npy"):
        np.testing.assert_array_equal(np.load(a / "signal" / name), np.load(b / "signal" / name))


def test_the_student_matches_a_single_process_run_with_the_same_global_batch(stores):
    two, one, _, models = stores
    w2 = load_file(_run(two) / "checkpoints" / "last" / "model.safetensors")
    w1 = load_file(_run(one) / "checkpoints" / "last" / "model.safetensors")
    w0 = load_file(models["student"] / "model.safetensors")
    diff = sum(float((w2[k] - w1[k]).pow(2).sum()) for k in w1) ** 0.5
    update = sum(float((w1[k] - w0[k]).pow(2).sum()) for k in w1 if k in w0) ** 0.5
    assert update > 0 and diff <= 0.05 * update, (diff, update)


def test_sharded_evaluation_equals_a_single_process_one(stores, tmp_path):
    two, _, _, models = stores
    copy = tmp_path / "store"
    shutil.copytree(two, copy)
    proc = _single("evaluate", str(SMOKE), *_overrides(models, copy, batch=2), "--force")  # the same run, 1 process
    assert proc.returncode == 0, proc.stderr[-2000:]
    sharded = (_run(two) / "eval" / "predictions.jsonl").read_text()
    assert sharded == (_run(copy) / "eval" / "predictions.jsonl").read_text() and len(sharded.splitlines()) == 4
    scores = [json.loads((_run(s) / "scores.json").read_text())["metrics"] for s in (two, copy)]
    assert scores[0] == scores[1]


def test_every_line_is_written_once(stores):
    two, _, launched, _ = stores
    run = _run(two)
    for name in ("metrics.jsonl", "eval/predictions.jsonl"):
        lines = [ln for ln in (run / name).read_text().splitlines() if ln.strip()]
        assert len(lines) == len(set(lines)), name
    assert launched.stdout.count("run: ") == 1, launched.stdout
    assert not (run / "env_history.jsonl").exists()


def test_a_table_under_two_processes_is_written_once(tmp_path):
    store = tmp_path / "store"
    shutil.copytree(REPO / "results" / "micro_h100" / "runs", store / "runs", ignore=shutil.ignore_patterns("checkpoints"))
    proc = _launch("table", "micro", "--report-only", "--store", str(store), "--out", str(tmp_path / "tables"))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.count("wrote ") == 5  # md, tex, csv, png, pdf: once each
    assert (tmp_path / "tables" / "table_micro.md").read_text() == (REPO / "results" / "micro_h100" / "tables" / "table_micro.md").read_text()
