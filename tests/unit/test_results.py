"""Results store: atomic records under crashes, concurrent writers, idempotent run folders, the flat view."""

from __future__ import annotations

import csv
import json
import multiprocessing as mp
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pandas as pd
import pytest

from uld.config import ExperimentConfig, apply_overrides, from_dict, load_config
from uld.ids import run_id
from uld.columns import COLUMNS
from uld.errors import ResultsError, RunLocked
from uld.io import append_jsonl, atomic_write_json, atomic_write_text, read_jsonl
from uld.reference import load_reference
from uld.results import load_results, load_training_logs
from uld.store import RunFolder, find_run

REPO = Path(__file__).resolve().parents[2]
FIXTURE = REPO / "tests" / "fixtures" / "store"
TSV = REPO / "results" / "reference" / "author_results.tsv"


def _cfg(**overrides) -> ExperimentConfig:
    base = {"name": "t", "teacher.name": "llama-2-7b-chat", "student.name": "pythia-410m", "data.task": "squad"}
    base.update(overrides)
    return apply_overrides(ExperimentConfig(), base)


def _write_run(root: Path, cfg: ExperimentConfig, metrics: dict, target: str = "student") -> RunFolder:
    cfg.output_dir = str(root)
    run = RunFolder.for_config(cfg).init(cfg)
    run.write_json("scores.json", {"task": cfg.data.task, "split": "test", "n": 10, "target": target,
                                   "protocol": "authors", "checkpoint": "best", "model": {}, "metrics": metrics})
    return run


# ---- atomic writes under a crash -----------------------------------------------------------------


def test_failed_rename_leaves_old_record_and_no_temp(tmp_path, monkeypatch):
    target = tmp_path / "scores.json"
    atomic_write_json(target, {"metrics": {"f1": 1.0}})

    def boom(src, dst):
        raise OSError("disk gone")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError, match="disk gone"):
        atomic_write_json(target, {"metrics": {"f1": 2.0}})
    assert json.loads(target.read_text()) == {"metrics": {"f1": 1.0}}
    assert [p.name for p in tmp_path.iterdir()] == ["scores.json"]


def test_crash_mid_write_leaves_no_partial_record(tmp_path, monkeypatch):
    target = tmp_path / "scores.json"

    def boom(fd):
        raise OSError("power cut")  # after the text went into the temp file, before the rename

    monkeypatch.setattr(os, "fsync", boom)
    with pytest.raises(OSError, match="power cut"):
        atomic_write_text(target, "x" * 100_000)
    assert not target.exists()
    assert list(tmp_path.iterdir()) == []


def test_hard_kill_before_rename_is_invisible_to_readers(tmp_path):
    """A process that dies between writing and renaming (no cleanup runs) leaves only a dot temp file."""
    cfg = _cfg()
    run = _write_run(tmp_path, cfg, {"f1": 50.0})
    code = textwrap.dedent(
        f"""
        import os
        from uld.io import atomic_write_json
        os.replace = lambda src, dst: os._exit(9)
        atomic_write_json({str(run.file('scores.json'))!r}, {{"task": "squad", "metrics": {{"f1": 99.0}}}})
        """
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True)
    assert proc.returncode == 9
    assert json.loads(run.file("scores.json").read_text())["metrics"] == {"f1": 50.0}
    leftovers = [p.name for p in run.path.iterdir() if p.name.endswith(".tmp")]
    assert len(leftovers) == 1 and leftovers[0].startswith(".scores.json.")
    df = load_results(tmp_path)
    assert df["value"].tolist() == [50.0]


def test_torn_last_jsonl_line_is_skipped(tmp_path):
    p = tmp_path / "metrics.jsonl"
    p.write_text('{"step": 1}\n{"step": 2}\n{"ste')
    with pytest.warns(UserWarning, match="incomplete last line"):
        assert read_jsonl(p) == [{"step": 1}, {"step": 2}]
    p.write_text('{"step": 1}\nnot json\n{"step": 3}\n')
    with pytest.raises(ResultsError, match=r"metrics.jsonl:2"):
        read_jsonl(p)


# ---- concurrent writers --------------------------------------------------------------------------


def _append_lines(path: str, worker: int, n: int) -> None:
    for i in range(n):
        append_jsonl(path, {"worker": worker, "i": i, "pad": "y" * 500})


def _write_own_run(root: str, worker: int) -> None:
    cfg = _cfg(**{"training.seed": worker})
    _write_run(Path(root), cfg, {"f1": float(worker)})


def _run_workers(target, args_list):
    ctx = mp.get_context("fork")
    procs = [ctx.Process(target=target, args=a) for a in args_list]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert all(p.exitcode == 0 for p in procs)


def test_concurrent_appends_keep_every_line_whole(tmp_path):
    path = str(tmp_path / "metrics.jsonl")
    _run_workers(_append_lines, [(path, w, 50) for w in range(4)])
    lines = read_jsonl(path)
    assert len(lines) == 200
    assert {(r["worker"], r["i"]) for r in lines} == {(w, i) for w in range(4) for i in range(50)}


def test_concurrent_jobs_writing_runs_all_land(tmp_path):
    _run_workers(_write_own_run, [(str(tmp_path), w) for w in range(4)])
    df = load_results(tmp_path)
    assert sorted(df["seed"].tolist()) == [0, 1, 2, 3]
    assert sorted(df["value"].tolist()) == [0.0, 1.0, 2.0, 3.0]


def _hold_lock(path: str, ready, release) -> None:
    with RunFolder(path).lock():
        ready.set()
        release.wait(30)


def test_run_lock_excludes_a_second_process(tmp_path):
    ctx = mp.get_context("fork")
    ready, release = ctx.Event(), ctx.Event()
    p = ctx.Process(target=_hold_lock, args=(str(tmp_path / "run"), ready, release))
    p.start()
    try:
        assert ready.wait(30)
        with pytest.raises(RunLocked):
            with RunFolder(tmp_path / "run").lock(blocking=False):
                pass
    finally:
        release.set()
        p.join(30)
    with RunFolder(tmp_path / "run").lock(blocking=False):  # released with the process
        pass


# ---- run ids and idempotent run folders ----------------------------------------------------------


def test_run_id_follows_what_is_computed():
    a = _cfg()
    assert run_id(a) == run_id(_cfg())
    assert run_id(a) != run_id(_cfg(**{"training.lam": 0.5}))
    assert run_id(a) == run_id(_cfg(output_dir="/elsewhere", **{"evaluation.batch_size": 3}))
    assert run_id(a).startswith("t-")


def test_init_is_idempotent_and_refuses_a_different_config(tmp_path):
    cfg = _cfg(output_dir=str(tmp_path))
    run = RunFolder.for_config(cfg).init(cfg)
    first = run.file("config.yaml").read_text()
    RunFolder.for_config(cfg).init(cfg)
    assert run.file("config.yaml").read_text() == first
    assert run.config() == cfg
    with pytest.raises(ResultsError, match="different config"):
        RunFolder(run.path).init(_cfg(**{"training.optim.lr": 5e-6}))
    assert find_run(cfg).path == run.path


# ---- the flat view -------------------------------------------------------------------------------


def test_load_results_one_row_per_metric_with_run_descriptors(tmp_path):
    uld = _write_run(tmp_path, _cfg(**{"training.method": "uld", "training.lam": 1.5}), {"f1": 70.0, "rougeL": 71.0})
    lam0 = _write_run(tmp_path, _cfg(**{"training.method": "sft-teacher"}), {"f1": 60.0})
    teach = _write_run(tmp_path, _cfg(**{"training.method": "none", "evaluation.target": "teacher"}), {"f1": 80.0}, "teacher")
    RunFolder(tmp_path / "runs" / "unfinished").init(_cfg(name="unfinished"))  # no scores.json: not a result
    df = load_results(tmp_path)
    assert list(df.columns) == COLUMNS
    assert len(df) == 4
    row = df[(df.run_id == uld.id) & (df.metric == "rougeL")].iloc[0]
    assert (row.setting, row.method, row.lam, row.value, row.teacher, row.student) == (
        "uld", "uld", 1.5, 71.0, "llama-2-7b-chat", "pythia-410m")
    row = df[df.run_id == lam0.id].iloc[0]
    assert (row.setting, row.lam) == ("lambda0", 0.0)  # effective lambda of CE-only training
    row = df[df.run_id == teach.id].iloc[0]
    assert (row.setting, row.target) == ("teacher", "teacher") and pd.isna(row.student)
    assert Path(row.run_dir) == teach.path


def test_load_results_names_the_bad_file(tmp_path):
    run = _write_run(tmp_path, _cfg(), {"f1": 1.0})
    run.write_json("scores.json", {"task": "squad", "metrics": {"f1": "high"}})
    with pytest.raises(ResultsError, match=r"scores\.json.*'f1'"):
        load_results(tmp_path)
    with pytest.warns(UserWarning, match="scores.json"):
        assert load_results(tmp_path, on_error="warn").empty


def test_load_results_reads_a_single_run_or_any_folder(tmp_path):
    run = _write_run(tmp_path / "a", _cfg(), {"f1": 1.0})
    assert load_results(run.path)["run_id"].tolist() == [run.id]
    assert load_results(tmp_path)["run_id"].tolist() == [run.id]  # found below tmp_path/a/runs


def _raw_tsv() -> list[dict[str, str]]:
    with TSV.open() as fh:
        return list(csv.DictReader(fh, delimiter="\t"))


def test_reference_maps_names_settings_and_scales():
    df = load_reference(TSV)
    raw = _raw_tsv()
    assert len(df) == 8 * len(raw)  # 8 metrics per row; the derived "squad" average is not kept
    assert set(df.task) == {"squad", "qed", "fairytaleqa", "pubmedqa", "dialogsum"}
    # a ULD row at a training fraction
    r = next(r for r in raw if r["student"] == "pythia-410m-deduped" and r["dataset"] == "FairytaleQA" and r["setting"] == "d1.5_0.25")
    got = df[(df.student == "pythia-410m") & (df.task == "fairytaleqa") & (df.train_fraction == 0.25) & (df.method == "uld")]
    assert got.set_index("metric").value["f1"] == float(r["f1"])
    assert got.set_index("metric").value["bertscore_f1"] == float(r["bertF1"])
    assert set(got.lam) == {1.5} and set(got.teacher) == {"llama-2-7b-chat"}
    # lambda = 0 is the teacher-text baseline
    got = df[(df.student == "opt-350m") & (df.task == "squad") & (df.teacher == "mistral-7b-instruct") & (df.setting == "lambda0")]
    assert set(got.method) == {"sft-teacher"} and set(got.lam) == {0.0}
    # teacher rows are fractions in the authors' file: scaled to x100
    r = next(r for r in raw if r["student"] == "Llama-2-7b-chat-hf" and r["dataset"] == "squad")
    got = df[(df.setting == "teacher") & (df.teacher == "llama-2-7b-chat") & (df.task == "squad")].set_index("metric")
    assert got.value["f1"] == pytest.approx(100 * float(r["f1"]))
    assert got.student.isna().all() and set(got.target) == {"teacher"}
    # student few-shot rows have no teacher
    got = df[(df.setting == "student-few-shot") & (df.student == "bloomz-560m") & (df.task == "squad")]
    assert got.teacher.isna().all() and set(got.method) == {"none"} and set(got.shots) == {3}


def test_reference_flags_the_known_defects():
    df = load_reference(TSV)
    mistral = df[(df.setting == "teacher") & (df.teacher == "mistral-7b-instruct")]
    fairy = mistral[mistral.task == "fairytaleqa"].set_index("metric").value
    qed = mistral[mistral.task == "qed"].set_index("metric").value
    assert (fairy - qed).abs().max() < 0.01  # the defect itself: the row repeats QED (to 4 decimals)
    assert mistral[mistral.task == "fairytaleqa"].flag.notna().all()
    assert mistral[mistral.task == "qed"].flag.isna().all()
    llama_dlg = df[(df.setting == "teacher") & (df.teacher == "llama-2-7b-chat") & (df.task == "dialogsum")].set_index("metric")
    assert llama_dlg.value["bertscore_f1"] == pytest.approx(8.626176739484072)
    assert llama_dlg.flag["bertscore_f1"] and llama_dlg.flag.isna()["f1"]
    assert df.flag.notna().sum() == 8 + 3


def test_reference_errors_name_file_and_line(tmp_path):
    bad = tmp_path / "bad.tsv"
    lines = TSV.read_text().splitlines()
    bad.write_text("\n".join([lines[0], lines[1].replace("d0", "d_weird")]) + "\n")
    with pytest.raises(ResultsError, match=r"bad\.tsv:2.*d_weird"):
        load_reference(bad)


def test_load_results_both_sources(tmp_path):
    _write_run(tmp_path, _cfg(), {"f1": 1.0})
    df = load_results(tmp_path, source="both", reference=TSV)
    assert set(df.source) == {"ours", "authors"}
    with pytest.raises(ValueError, match="source"):
        load_results(tmp_path, source="theirs")


def test_training_logs_join_run_descriptors(tmp_path):
    run = _write_run(tmp_path, _cfg(**{"training.method": "sft-teacher"}), {"f1": 1.0})
    for step in (10, 20):
        run.append_jsonl("metrics.jsonl", {"step": step, "epoch": step / 20, "split": "train", "loss": 1.0, "ce": 1.0, "uld": 0.0})
    logs = load_training_logs(tmp_path)
    assert logs["step"].tolist() == [10, 20]
    assert set(logs.setting) == {"lambda0"} and set(logs.run_id) == {run.id}


def test_fixture_store_is_current():
    """Every fixture run sits at the run id its config hashes to (else regenerate the fixture)."""
    stale = []
    for folder in sorted((FIXTURE / "runs").iterdir()):
        cfg = RunFolder(folder).config()
        if run_id(cfg) != folder.name:
            stale.append(folder.name)
    assert not stale, f"stale fixture runs {stale}: run python tests/fixtures/store/make_fixture_store.py"
    assert json.loads((FIXTURE / "STORE.json").read_text())["fixture"] is True
