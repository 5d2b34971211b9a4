"""Kill the real command line at every file-replace point; a rerun must end with an uninterrupted run's artefacts.

Every replace, folder swap, removal and log append of the package is a fault point (``uld.io``). A
reference ``uld run`` (teacher stage, training with a checkpoint every step, evaluation) lists them with
``ULD_FAULT_LOG``; each distinct point of the code (its kind, before/after, and the file it touches with
ids and chunk numbers abstracted) is then hit by a run with ``ULD_FAULT_AT``, which dies there as a
SIGKILL would (exit 137, no clean-up), and the same command is run again. The store must then hold
exactly what the reference run wrote, and nothing left over.

The default test run kills at seven points spread over the stages; ``-m ci`` (CI) and ``-m slow`` kill at all of them.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from safetensors.torch import load_file

REPO = Path(__file__).resolve().parents[2]
SHARED_DATA = REPO.parent / "shared" / "data"
DATA = SHARED_DATA if (SHARED_DATA / "squad").is_dir() else REPO / "tests" / "fixtures" / "data"
UNSTABLE = {"tokens_per_s", "max_memory_mb", "wall_s", "resumed", "generation_seconds", "signal_seconds", "throughput",
            "since", "seconds"}
# the default run's sample: one or two points of each kind of change, stage by stage
SAMPLE = [
    ("replace", "before", "teacher/*/signal/index.parquet"),
    ("replace", "before", "teacher/*/.done"),
    ("append", "after", "runs/*/metrics.jsonl"),
    ("replace", "after", "runs/*/checkpoints/.state.old"),  # old state moved aside, new one not yet in place
    ("replace", "before", "runs/*/train_summary.json"),
    ("replace", "after", "runs/*/eval"),  # half-way through the evaluation's commit
    ("remove", "after", "runs/*/.commit.json"),
]


def _argv(models: dict, store: Path) -> list[str]:
    return [
        sys.executable, "-m", "uld", "run", str(REPO / "experiments" / "smoke.yaml"),
        f"teacher.path={models['teacher']}", f"student.path={models['student']}", f"data.dir={DATA}",
        f"output_dir={store}", "training.method=uld", "data.train_size=12", "data.test_size=4", "data.max_length=256",
        "generation.max_new_tokens=6", "generation.batch_size=4", "generation.chunk_size=6", "generation.top_k_signal=16",
        "training.batch_size=4", "training.max_steps=3", "training.log_every=1", "training.checkpoints.save_every=1",
        "training.checkpoints.eval_every=1", "training.optim.lr=1e-3", "evaluation.max_new_tokens=6",
        "evaluation.batch_size=4",
    ]


def _run(models: dict, store: Path, **env) -> subprocess.CompletedProcess:
    full = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", **env)
    for k in ("ULD_FAULT_AT", "ULD_FAULT_LOG"):
        if k not in env:
            full.pop(k, None)
    return subprocess.run(_argv(models, store), cwd=REPO, env=full, capture_output=True, text=True, timeout=600)


def _site(line: str, store: Path) -> tuple[int, tuple[str, str, str]]:
    index, kind, phase, path = line.split(" ", 3)
    rel = Path(path).relative_to(store).as_posix()
    rel = re.sub(r"^(runs|teacher)/[^/]+", r"\1/*", rel)
    rel = re.sub(r"chunk-\d+", "chunk-N", rel)
    return int(index), (kind, phase, rel)


def _strip(obj, root: str):
    """Timings dropped, the store's own path (recorded in summaries) abstracted."""
    if isinstance(obj, dict):
        return {k: _strip(v, root) for k, v in obj.items() if k not in UNSTABLE}
    if isinstance(obj, list):
        return [_strip(v, root) for v in obj]
    return obj.replace(root, "<store>") if isinstance(obj, str) else obj


def _store_of(path: Path) -> str:
    return str(next(p for p in path.parents if (p / "runs").is_dir() or (p / "teacher").is_dir()))


def _json(path: Path):
    return _strip(json.loads(path.read_text()), _store_of(path))


def _jsonl(path: Path):
    root = _store_of(path)
    return [_strip(json.loads(line), root) for line in path.read_text().splitlines() if line.strip()]


def _same_store(a: Path, b: Path) -> None:
    """The artefacts of two stores are equal (timings aside), and b holds nothing a crash left behind."""
    (ta,), (tb,) = ([p for p in (s / "teacher").iterdir() if not p.name.startswith(".")] for s in (a, b))
    pd.testing.assert_frame_equal(pd.read_parquet(ta / "answers.parquet"), pd.read_parquet(tb / "answers.parquet"))
    for name in ("probs.npy", "tail.npy"):
        np.testing.assert_array_equal(np.load(ta / "signal" / name), np.load(tb / "signal" / name))
    pd.testing.assert_frame_equal(pd.read_parquet(ta / "signal" / "index.parquet"), pd.read_parquet(tb / "signal" / "index.parquet"))
    for name in ("stats.json", "signal/meta.json", ".done", "plan.json"):
        assert _json(ta / name) == _json(tb / name), name
    (ra,), (rb,) = list((a / "runs").glob("smoke-*")), [p for p in (b / "runs").glob("smoke-*")]
    for sub in ("best", "last"):
        wa, wb = load_file(ra / "checkpoints" / sub / "model.safetensors"), load_file(rb / "checkpoints" / sub / "model.safetensors")
        assert wa.keys() == wb.keys() and all(bool((wa[k] == wb[k]).all()) for k in wa), sub
        assert (ra / "checkpoints" / sub / "README.md").read_text() == (rb / "checkpoints" / sub / "README.md").read_text()
    assert sorted(p.name for p in (rb / "checkpoints" / "state").iterdir()) == ["trainer.json"]
    for name in ("train_summary.json", "scores.json", "eval/scores.json", "teacher.json", "checkpoints/state/trainer.json"):
        assert _json(ra / name) == _json(rb / name), name
    for name in ("metrics.jsonl", "eval/predictions.jsonl"):
        assert _jsonl(ra / name) == _jsonl(rb / name), name
    assert (ra / "config.yaml").read_text().replace(str(a), "<store>") == (rb / "config.yaml").read_text().replace(str(b), "<store>")
    left = [p for p in b.rglob("*") if re.search(r"(\.old$|\.tmp$|\.regen|/\.staging-|/\.trash|\.commit\.json)", p.as_posix())]
    assert not left, f"left over: {left}"


@pytest.fixture(scope="module")
def reference(tiny_models, tmp_path_factory):
    store = tmp_path_factory.mktemp("reference")
    log = store.parent / f"{store.name}.points"
    proc = _run(tiny_models, store, ULD_FAULT_LOG=str(log))
    assert proc.returncode == 0, proc.stderr[-3000:]
    sites: "OrderedDict[tuple, int]" = OrderedDict()
    for line in log.read_text().splitlines():
        index, site = _site(line, store)
        sites.setdefault(site, index)  # the first time the code reaches that point
    return store, sites


def _kill_and_recover(tiny_models, tmp_path, reference, site) -> None:
    store_ref, sites = reference
    index = sites[site]
    store = tmp_path / f"kill-{index}"
    killed = _run(tiny_models, store, ULD_FAULT_AT=str(index))
    assert killed.returncode == 137, f"{site}: expected the kill at point {index}, got rc {killed.returncode}: {killed.stderr[-2000:]}"
    again = _run(tiny_models, store)
    assert again.returncode == 0, f"{site} (point {index}): the rerun failed:\n{again.stderr[-3000:]}"
    _same_store(store_ref, store)


def test_the_reference_run_passes_every_kind_of_fault_point(reference):
    _, sites = reference
    kinds = {(k, p) for k, p, _ in sites}
    assert {("replace", "before"), ("replace", "after"), ("swap", "before"), ("swap", "after"), ("append", "before"),
            ("append", "after"), ("remove", "before"), ("remove", "after")} <= kinds
    missing = [s for s in SAMPLE if s not in sites]
    assert not missing, f"the sample names points the run no longer reaches: {missing}"
    assert len(sites) > 60


@pytest.mark.parametrize("site", SAMPLE, ids=lambda s: f"{s[0]}-{s[1]}-{s[2]}")
def test_a_kill_at_a_sampled_point_recovers(tiny_models, tmp_path, reference, site):
    _kill_and_recover(tiny_models, tmp_path, reference, site)


@pytest.mark.slow
@pytest.mark.ci  # about half an hour: CI runs it after the default run (make test-ci)
def test_a_kill_at_every_point_recovers(tiny_models, tmp_path, reference):
    """All distinct fault points (about 90); reports every one that fails, not just the first."""
    failures = []
    for site in reference[1]:
        try:
            _kill_and_recover(tiny_models, tmp_path, reference, site)
        except AssertionError as exc:
            failures.append(f"{site}: {str(exc)[:400]}")
    assert not failures, f"{len(failures)} of {len(reference[1])} points did not recover:\n" + "\n".join(failures)
