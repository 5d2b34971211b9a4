"""Kill the command line at every file-replace point; a rerun must end with an uninterrupted run's artefacts.

Every replace, folder swap, removal and log append of the package is a fault point (``uld.io``). A
reference run goes through the stages one command at a time (``uld run --stages teacher``, then
``train`` with a checkpoint every step, then ``evaluate``), keeping a snapshot of the store before each
and listing each stage's points with ``ULD_FAULT_LOG``. Each distinct point of the code (its kind,
before/after, and the file it touches with ids and chunk numbers abstracted) belongs to the stage that
first reaches it. A kill starts from the snapshot taken just before that stage: the stage's command runs
with ``ULD_FAULT_AT`` and dies there as a SIGKILL would (exit 137, no clean-up), the same command runs
again, and the store must then hold exactly what the reference held after that stage, and nothing left
over. (What a stage leaves decides everything after it, so an equal store after the rerun stands for an
equal end of the whole run.) Commands run in forks of one python that imported the stack once
(``forked_uld.py``), so a kill costs its stage's work, not a start-up and the stages before it.

The default test run kills at seven points spread over the stages; ``-m ci`` (CI) and ``-m slow`` kill at all of them.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from safetensors.torch import load_file

from tests.integration.forked_uld import ForkedUld

REPO = Path(__file__).resolve().parents[2]
SHARED_DATA = REPO.parent / "shared" / "data"
DATA = SHARED_DATA if (SHARED_DATA / "squad").is_dir() else REPO / "tests" / "fixtures" / "data"
UNSTABLE = {"tokens_per_s", "max_memory_mb", "wall_s", "resumed", "generation_seconds", "signal_seconds", "throughput",
            "since", "seconds"}
# the default run's sample: one or two points of each kind of change, stage by stage
# One point per stage, the evaluation's answer journal and the commit journal: the default run's smoke check of recovery. Every one of the
# 110 points (these included) is killed and recovered by the full sweep below, which CI runs (make test-ci).
SAMPLE = [
    ("replace", "before", "teacher/*/.done"),
    ("replace", "after", "runs/*/checkpoints/.state.old"),  # old state moved aside, new one not yet in place
    ("append", "after", "runs/*/eval/partial.0.jsonl"),  # an evaluation killed with some answers journaled
    ("replace", "after", "runs/*/eval"),  # half-way through the evaluation's commit
    ("remove", "after", "runs/*/.commit.json"),
]


STAGES = ("teacher", "train", "evaluate")


def _argv(models: dict, store: Path, stage: str) -> list[str]:
    return [
        "run", str(REPO / "experiments" / "smoke.yaml"),
        f"teacher.path={models['teacher']}", f"student.path={models['student']}", f"data.dir={DATA}",
        f"output_dir={store}", "training.method=uld", "data.train_size=12", "data.test_size=4", "data.max_length=256",
        "generation.max_new_tokens=6", "generation.batch_size=4", "generation.chunk_size=6", "generation.top_k_signal=16",
        "training.batch_size=4", "training.max_steps=3", "training.log_every=1", "training.checkpoints.save_every=1",
        "training.checkpoints.eval_every=1", "training.optim.lr=1e-3", "evaluation.max_new_tokens=6",
        "evaluation.batch_size=4", "--stages", stage,
    ]


@pytest.fixture(scope="module")
def uld():
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    for k in ("ULD_FAULT_AT", "ULD_FAULT_LOG"):
        env.pop(k, None)
    server = ForkedUld(env, cwd=REPO)
    yield server
    server.close()


def _run(uld: ForkedUld, models: dict, store: Path, stage: str, **env: str) -> tuple[int, str]:
    log = store.parent / f"{store.name}.{stage}.log"
    rc = uld.run(_argv(models, store, stage), log, **env)
    return rc, log.read_text()[-3000:]


def _site(line: str, store: Path) -> tuple[int, tuple[str, str, str]]:
    index, kind, phase, path = line.split(" ", 3)
    rel = Path(path).relative_to(store).as_posix()
    rel = re.sub(r"^(runs|teacher)/[^/]+", r"\1/*", rel)
    rel = re.sub(r"chunk-\d+", "chunk-N", rel)
    return int(index), (kind, phase, rel)


def _strip(obj):
    """Timings dropped (every store is restored at one path, so paths inside records agree as they are)."""
    if isinstance(obj, dict):
        return {k: _strip(v) for k, v in obj.items() if k not in UNSTABLE}
    if isinstance(obj, list):
        return [_strip(v) for v in obj]
    return obj


def _json(path: Path):
    return _strip(json.loads(path.read_text()))


def _jsonl(path: Path):
    return [_strip(json.loads(line)) for line in path.read_text().splitlines() if line.strip()]


def _files(store: Path) -> list[str]:
    return sorted(p.relative_to(store).as_posix() for p in store.rglob("*") if p.is_file())


def _same_store(a: Path, b: Path, stage: str) -> None:
    """Store b holds the files of a after ``stage`` with equal artefacts (timings aside), nothing a crash left."""
    left = [p for p in b.rglob("*") if re.search(r"(\.old$|\.tmp$|\.regen|/\.staging-|/\.trash|\.commit\.json)", p.as_posix())]
    assert not left, f"left over: {left}"
    fa, fb = _files(a), _files(b)
    assert fa == fb, f"files only in the rerun: {sorted(set(fb) - set(fa))}; missing: {sorted(set(fa) - set(fb))}"
    (ta,), (tb,) = ([p for p in (s / "teacher").iterdir() if not p.name.startswith(".")] for s in (a, b))
    (ra,), (rb,) = list((a / "runs").glob("smoke-*")), list((b / "runs").glob("smoke-*"))
    assert (ra / "config.yaml").read_text() == (rb / "config.yaml").read_text()
    assert _json(ra / "teacher.json") == _json(rb / "teacher.json")
    pd.testing.assert_frame_equal(pd.read_parquet(ta / "answers.parquet"), pd.read_parquet(tb / "answers.parquet"))
    for name in ("probs.npy", "tail.npy"):
        np.testing.assert_array_equal(np.load(ta / "signal" / name), np.load(tb / "signal" / name))
    pd.testing.assert_frame_equal(pd.read_parquet(ta / "signal" / "index.parquet"), pd.read_parquet(tb / "signal" / "index.parquet"))
    for name in ("stats.json", "signal/meta.json", ".done", "plan.json"):
        assert _json(ta / name) == _json(tb / name), name
    if stage == "teacher":
        return
    for sub in ("best", "last"):
        wa, wb = load_file(ra / "checkpoints" / sub / "model.safetensors"), load_file(rb / "checkpoints" / sub / "model.safetensors")
        assert wa.keys() == wb.keys() and all(bool((wa[k] == wb[k]).all()) for k in wa), sub
        assert (ra / "checkpoints" / sub / "README.md").read_text() == (rb / "checkpoints" / sub / "README.md").read_text()
    assert sorted(p.name for p in (rb / "checkpoints" / "state").iterdir()) == ["trainer.json"]
    for name in ("train_summary.json", "checkpoints/state/trainer.json"):
        assert _json(ra / name) == _json(rb / name), name
    assert _jsonl(ra / "metrics.jsonl") == _jsonl(rb / "metrics.jsonl")
    if stage == "train":
        return
    for name in ("scores.json", "eval/scores.json"):
        assert _json(ra / name) == _json(rb / name), name
    assert _jsonl(ra / "eval/predictions.jsonl") == _jsonl(rb / "eval/predictions.jsonl")


def _restore(snapshot: Path, store: Path) -> None:
    shutil.rmtree(store, ignore_errors=True)
    shutil.copytree(snapshot, store, symlinks=True)


@pytest.fixture(scope="module")
def reference(tiny_models, tmp_path_factory, uld):
    """The uninterrupted run, stage by stage: the store's snapshot before and after each stage (each taken
    at the one path every kill then works in) and, for each distinct point, the stage and index where the
    run first reaches it."""
    root = tmp_path_factory.mktemp("faults")
    store = root / "store"
    store.mkdir()
    snapshots: dict[str, Path] = {}
    sites: "OrderedDict[tuple, tuple[str, int]]" = OrderedDict()
    for stage in STAGES:
        shutil.copytree(store, root / f"before-{stage}", symlinks=True)
        snapshots[f"before-{stage}"] = root / f"before-{stage}"
        log = root / f"{stage}.points"
        rc, out = _run(uld, tiny_models, store, stage, ULD_FAULT_LOG=str(log))
        assert rc == 0, out
        for line in log.read_text().splitlines():
            index, site = _site(line, store)
            sites.setdefault(site, (stage, index))  # the first time the code reaches that point
        shutil.copytree(store, root / f"after-{stage}", symlinks=True)
        snapshots[f"after-{stage}"] = root / f"after-{stage}"
    return store, snapshots, sites


def _kill_and_recover(uld, tiny_models, reference, site) -> None:
    store, snapshots, sites = reference
    stage, index = sites[site]
    _restore(snapshots[f"before-{stage}"], store)
    rc, out = _run(uld, tiny_models, store, stage, ULD_FAULT_AT=str(index))
    assert rc == 137, f"{site}: expected the kill at point {index} of the {stage} stage, got rc {rc}: {out}"
    rc, out = _run(uld, tiny_models, store, stage)
    assert rc == 0, f"{site} ({stage} point {index}): the rerun failed:\n{out}"
    _same_store(snapshots[f"after-{stage}"], store, stage)


def test_the_reference_run_passes_every_kind_of_fault_point(reference):
    _, _, sites = reference
    kinds = {(k, p) for k, p, _ in sites}
    assert {("replace", "before"), ("replace", "after"), ("swap", "before"), ("swap", "after"), ("append", "before"),
            ("append", "after"), ("remove", "before"), ("remove", "after")} <= kinds
    missing = [s for s in SAMPLE if s not in sites]
    assert not missing, f"the sample names points the run no longer reaches: {missing}"
    assert len(sites) > 60


@pytest.mark.parametrize("site", SAMPLE, ids=lambda s: f"{s[0]}-{s[1]}-{s[2]}")
def test_a_kill_at_a_sampled_point_recovers(uld, tiny_models, reference, site):
    _kill_and_recover(uld, tiny_models, reference, site)


@pytest.mark.slow
@pytest.mark.ci  # CI runs it after the default run (make test-ci)
def test_a_kill_at_every_point_recovers(uld, tiny_models, reference):
    """All distinct fault points (110 today: 30 in the teacher stage, 54 in training, 26 in evaluation); reports every one that fails, not just the first."""
    failures = []
    for site in reference[2]:
        try:
            _kill_and_recover(uld, tiny_models, reference, site)
        except AssertionError as exc:
            failures.append(f"{site}: {str(exc)[:400]}")
    assert not failures, f"{len(failures)} of {len(reference[2])} points did not recover:\n" + "\n".join(failures)
