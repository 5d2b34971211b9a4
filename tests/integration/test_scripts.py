"""The benchmark scripts run (on tiny inputs), so a library change cannot silently break them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
FIXTURE_DATA = REPO / "tests" / "fixtures" / "data"


def _run(args: list[str], tmp_path: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def test_bench_losses_quick(tmp_path):
    out = tmp_path / "losses"
    _run(["scripts/bench_losses.py", "--quick", "--methods", "ce,exact,topk,loop", "--out", str(out)], tmp_path)
    results = json.loads(out.with_suffix(".json").read_text())["results"]
    assert results
    for config in results:
        by_method = {m["method"]: m for m in config["methods"]}
        assert {"ce", "exact", "topk", "loop"} <= set(by_method)
        # exact ULD and the paper-style loop compute the same number
        assert abs(by_method["exact"]["loss"] - by_method["loop"]["loss"]) < 1e-4
        assert all(m["time_s"] > 0 for m in config["methods"])
    assert "x CE" in out.with_suffix(".md").read_text()


def test_bench_teacher_on_a_tiny_teacher(tmp_path, tiny_models):
    _run(["scripts/bench_teacher.py", "--model-dir", str(tiny_models["teacher"]), "--data-dir", str(FIXTURE_DATA),
          "--n-items", "3", "--batch-sizes", "1", "2", "--max-new-tokens", "3", "--top-k", "8", "--out", str(tmp_path)],
         tmp_path)
    result = json.loads((tmp_path / "teacher.json").read_text())
    configs = {(g["dtype"], g["batch_size"], g["share_prefix"]) for g in result["generation"]}
    assert configs == {(d, 1, False) for d in ("float32", "bfloat16")} | {(d, 2, s) for d in ("float32", "bfloat16") for s in (False, True)}
    fp32 = [g for g in result["generation"] if g["dtype"] == "float32"]
    assert all(g["equal_to_own_bs1"] == "3/3" for g in fp32)  # batching never changes a greedy fp32 answer
    assert [r["share_prefix"] for r in result["signal_pass"]["runs"]] == [False, True]
    assert result["signal_pass"]["max_abs_prob_difference_shared_vs_plain"] < 1e-4
    assert "tokens/s" in (tmp_path / "teacher.md").read_text()


def test_bench_throughput_quick_on_tiny_models(tmp_path, tiny_models):
    cmd = ["scripts/bench_throughput.py", "--quick", "--student", str(tiny_models["student"]), "--teacher",
           str(tiny_models["teacher"]), "--data-dir", str(FIXTURE_DATA), "--out", str(tmp_path),
           "--work-dir", str(tmp_path / "work")]
    _run(cmd, tmp_path)
    res = json.loads((tmp_path / "throughput.json").read_text())
    phases = json.loads((tmp_path / "work" / "phases.json").read_text())
    assert set(phases) == {"roofline", "model_load", "evaluation", "training", "teacher"}
    # a rerun in the same work folder resumes: every phase is read back, nothing measured again
    again = _run(cmd, tmp_path)
    assert again.stdout.count("measured before") == 5
    assert json.loads((tmp_path / "throughput.json").read_text())["evaluation"] == res["evaluation"]
    assert set(res["roofline"]) == {f"{p}_matmul_gflops_{t}t" for p in ("fp32", "bf16") for t in (1, 2)}
    assert all(v > 0 for v in res["roofline"].values())
    ev, tr, sr = res["evaluation"], res["training"], res["student_run"]
    for key in ("baseline_items_per_s", "fast_items_per_s", "speedup", "bf16_agreement", "bf16_f1_delta"):
        assert isinstance(ev[key], float), key
    assert 0 <= ev["bf16_autocast"]["agreement"] <= 1 and ev["bf16_autocast"]["items_per_s"] > 0
    assert ev["fp32_identical"] is True  # batch size and sorting never change an fp32 greedy answer
    assert ev["speedup"] == pytest.approx(ev["fast_items_per_s"] / ev["baseline_items_per_s"], rel=0.01)
    assert tr["baseline_tokens_per_s"] > 0 and tr["fast_tokens_per_s"] > 0 and tr["max_loss_rel_diff"] < 1e-3
    assert tr["side_by_side"]["one_run_two_threads_tokens_per_s"] > 0 and tr["side_by_side"]["speedup"] > 0
    assert sr["estimated"] is True and sr["speedup"] == pytest.approx(sr["baseline_s"] / sr["fast_s"], rel=0.01)
    for name in ("model_load", "evaluation_fp32", "evaluation_bf16", "training_step_baseline", "training_step_fast",
                 "validation", "checkpoint_save", "teacher_generation", "signal_pass"):
        assert res["stages"][name]["wall_s"] >= 0, name
    assert "roofline_fraction" in res["stages"]["training_step_fast"]
    assert "useful tokens/s" in (tmp_path / "throughput.md").read_text()


def test_eval_precision_compares_recipes_with_fp32(tmp_path, tiny_models):
    out = tmp_path / "precision.json"
    cmd = ["scripts/eval_precision.py", "--checkpoint", str(tiny_models["student"]), "--questions", "4", "--batch-size", "2",
           "--max-new-tokens", "3", "--threads", "1", "--data-dir", str(FIXTURE_DATA), "--out", str(out)]
    proc = _run(cmd + ["--recipes", "fp32,bf16,autocast-mlp-fp32,fp32-share-prefix"], tmp_path)
    rows = json.loads(out.read_text())["recipes"]
    assert list(rows) == ["fp32", "bf16", "autocast-mlp-fp32", "fp32-share-prefix"] and "identical" in proc.stdout
    assert rows["fp32"]["identical"] == 1.0 and rows["fp32"]["f1_delta"] == 0.0 and rows["fp32"]["speedup"] == 1.0
    assert all(0.0 <= r["identical"] <= 1.0 and r["items_per_s"] > 0 for r in rows.values())
    bad = subprocess.run([sys.executable, *cmd, "--recipes", "fp32,fp8"], cwd=REPO, capture_output=True, text=True)
    assert bad.returncode == 2 and "unknown ['fp8']" in bad.stderr


def test_other_scripts_have_help(tmp_path):
    for script in ("scripts/bench_training.py", "scripts/bench_throughput.py", "scripts/build_notebooks.py",
                   "scripts/eval_precision.py"):
        assert "usage" in _run([script, "--help"], tmp_path).stdout
