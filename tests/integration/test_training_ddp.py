"""Two data-parallel CPU processes (accelerate launch, gloo) train ONE synchronised student.

Checks: both ranks hold bit-identical weights at every checkpoint, and the loss curve matches a
single-process run with the same global batch (2 processes x 2 rows vs 1 process x 4 rows). The curves
are close, not identical: a micro-batch's CE is a mean over its own answer tokens, so averaging two
half-batches weighs tokens slightly differently from one full batch.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.unit.test_training import make_config, new_run, read_metrics, reset_accelerate, teacher_stage, write_data

REPO = Path(__file__).resolve().parents[2]

WORKER = textwrap.dedent(
    '''
    import hashlib, sys
    from pathlib import Path
    from uld.config import load_config
    from uld.store import RunFolder
    from uld import training as TR
    from uld.training import loop

    cfg = load_config(sys.argv[1] + "/config.yaml")
    run, stage, out = RunFolder(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
    real_save = loop.save_hf

    def save_and_fingerprint(accelerator, model, tokenizer, dest, extra, card=None):
        # every rank fingerprints its own copy of the weights whenever a checkpoint is written
        sd = accelerator.unwrap_model(model).state_dict()
        h = hashlib.sha256(b"".join(sd[k].detach().cpu().contiguous().numpy().tobytes() for k in sorted(sd)))
        (out / f"{dest.name}-step{extra['step']}-rank{accelerator.process_index}.sha").write_text(h.hexdigest())
        real_save(accelerator, model, tokenizer, dest, extra, card)

    loop.save_hf = save_and_fingerprint
    summary = TR.train(cfg, run, stage)
    from accelerate import PartialState

    (out / f"summary-rank{PartialState().process_index}.txt").write_text(str(summary["num_processes"]))
    '''
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(autouse=True)
def _fresh_accelerate():
    reset_accelerate()
    yield
    reset_accelerate()


def test_two_cpu_processes_train_one_synchronised_student(tmp_path, tiny_models):
    from uld.training import train

    write_data(tmp_path)
    # 12 train rows, global batch 4 -> 3 optimizer steps per epoch, 6 in all; 3 val rows (uneven over 2 ranks)
    common = dict(method="uld", epochs=2, save_every=3, eval_every=3, lr=1e-3)
    cfg2 = make_config(tmp_path, tiny_models, batch_size=2, **common)
    cfg1 = make_config(tmp_path, tiny_models, batch_size=4, **common)
    stage = teacher_stage(cfg1)

    run2 = new_run(cfg2, tmp_path / "ddp")
    out = tmp_path / "fingerprints"
    out.mkdir()
    worker = tmp_path / "worker.py"
    worker.write_text(WORKER)
    env = dict(os.environ, ACCELERATE_USE_CPU="1", OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
               PYTHONPATH=str(REPO / "src") + os.pathsep + os.environ.get("PYTHONPATH", ""))
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
           str(REPO / "experiments" / "accelerate" / "cpu_2proc.yaml"), "--main_process_port", str(_free_port()),
           str(worker), str(run2.path), str(stage), str(out)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    assert (out / "summary-rank0.txt").read_text() == (out / "summary-rank1.txt").read_text() == "2"

    shas = sorted(out.glob("*.sha"))
    by_ckpt: dict[str, set[str]] = {}
    ranks: dict[str, set[str]] = {}
    for p in shas:
        key, rank = p.stem.rsplit("-", 1)
        by_ckpt.setdefault(key, set()).add(p.read_text())
        ranks.setdefault(key, set()).add(rank)
    assert {"last-step3", "last-step6"} <= set(by_ckpt)
    for key, hashes in by_ckpt.items():
        assert ranks[key] == {"rank0", "rank1"} and len(hashes) == 1, f"ranks disagree at {key}"
    assert by_ckpt["last-step3"] != by_ckpt["last-step6"]  # the weights did move

    run1 = new_run(cfg1, tmp_path / "single")
    s1 = train(cfg1, run1, stage)
    s2 = run2.read_json("train_summary.json")
    assert s2["num_processes"] == 2 and s2["global_batch"] == s1["global_batch"] == 4
    assert s2["total_steps"] == s1["total_steps"] == 6
    m1, m2 = read_metrics(run1), read_metrics(run2)
    for split in ("train", "val"):
        a = [r for r in m1 if r["split"] == split]
        b = [r for r in m2 if r["split"] == split]
        assert [r["step"] for r in a] == [r["step"] for r in b]
        for x, y in zip(a, b):
            assert y["loss"] == pytest.approx(x["loss"], rel=1e-2), (split, x["step"])
    train1 = [r["loss"] for r in m1 if r["split"] == "train"]
    assert train1[-1] < train1[0]  # a real curve, not a flat line matched trivially
