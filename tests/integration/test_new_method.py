"""Adding a training method is one entry in ``uld.methods.METHODS``: the config accepts its name,
validation runs its check, training adds its term to the cross-entropy and logs it, and the results
store reports it as its own setting. Shown in a fresh interpreter with the entry added before the
config schema is built, as a line in the table would be."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DATA = REPO / "tests" / "fixtures" / "data"

SCRIPT = r'''
import sys
import uld.methods as m

# the one entry: ULD at twice the weight, logged as "uld2"
m.METHODS["uld-double"] = m.Method("uld-double", "CE + 2·λ·ULD", target="teacher",
                                   term=lambda x: 2 * m._uld(x), log_key="uld2", cached_signal=True,
                                   check=m._check_uld)
m.METHOD_NAMES = tuple(m.METHODS)

from uld.cli import main
sys.exit(main(sys.argv[1:]))
'''


def test_a_new_method_is_one_entry(tiny_models, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "ULD_MODELS_DIR": str(tmp_path / "none")}
    args = ["run", str(REPO / "experiments" / "smoke.yaml"), f"teacher.path={tiny_models['teacher']}",
            f"student.path={tiny_models['student']}", f"data.dir={DATA}", f"output_dir={tmp_path}", "data.train_size=8",
            "data.test_size=4", "generation.max_new_tokens=4", "generation.top_k_signal=8", "training.max_steps=2",
            "training.batch_size=4", "evaluation.max_new_tokens=4", "training.method=uld-double", "grid={}"]
    proc = subprocess.run([sys.executable, "-c", SCRIPT, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    (run,) = [p for p in (tmp_path / "runs").iterdir() if p.is_dir()]
    log = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in log if "uld2" in r]
    assert train and all(r["loss"] > r["ce"] for r in train)  # the term is added to the cross-entropy
    assert json.loads((run / "scores.json").read_text())["method"] == "uld-double"
    # the check of the entry runs in config validation: a mismatched temperature fails before any work
    bad = subprocess.run([sys.executable, "-c", SCRIPT, "config", str(REPO / "experiments" / "smoke.yaml"),
                          "training.method=uld-double", "training.distill.teacher_temperature=2.0", "grid={}"],
                         cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "training.distill.teacher_temperature" in bad.stderr
