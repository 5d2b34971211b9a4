"""FSDP through the documented command, on two CPU processes (gloo), with a sharded resume.

``accelerate launch --config_file experiments/accelerate/cpu_fsdp_2proc.yaml -m uld run ...`` shards the
student with FSDP2 (accelerate does not shard CPU processes; uld.training.parallel does). It computes what
data parallelism computes, up to float rounding; killed after a checkpoint (the main process dies, the
launcher stops the other) and launched again, it resumes the sharded run from the gathered state and ends
with the uninterrupted run's weights; its checkpoints are ordinary Hugging Face folders.
GPU FSDP (experiments/accelerate/fsdp.yaml) is checked on a GPU machine by scripts/check_gpu.sh.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

REPO = Path(__file__).resolve().parents[2]
SMOKE = REPO / "experiments" / "smoke.yaml"
SHARED_DATA = REPO.parent / "shared" / "data"
DATA = SHARED_DATA if (SHARED_DATA / "squad").is_dir() else REPO / "tests" / "fixtures" / "data"

pytestmark = pytest.mark.ci


def _overrides(models: dict, store: Path) -> list[str]:
    return [
        f"teacher.path={models['teacher']}", f"student.path={models['student']}", f"data.dir={DATA}", f"output_dir={store}",
        "training.method=uld", "data.train_size=12", "data.test_size=4", "data.max_length=256", "generation.max_new_tokens=6",
        "generation.batch_size=4", "generation.chunk_size=4", "generation.top_k_signal=16", "training.batch_size=2",
        "training.max_steps=4", "training.optim.lr=1e-3", "training.checkpoints.save_every=1", "evaluation.max_new_tokens=6",
        "evaluation.batch_size=4",
    ]


def _launch(config: str, models: dict, store: Path, **env) -> subprocess.CompletedProcess:
    full = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", ACCELERATE_USE_CPU="1", **env)
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", *(k for k in ("ULD_FAULT_AT", "ULD_FAULT_LOG") if k not in env)):
        full.pop(k, None)
    cmd = [str(Path(sys.executable).with_name("accelerate")), "launch", "--config_file",
           str(REPO / "experiments" / "accelerate" / config), "-m", "uld", "run", str(SMOKE), *_overrides(models, store)]
    return subprocess.run(cmd, cwd=REPO, env=full, capture_output=True, text=True, timeout=900)


def _weights(store: Path, sub: str = "last") -> dict:
    (run,) = list((store / "runs").glob("smoke-*"))
    return load_file(run / "checkpoints" / sub / "model.safetensors")


@pytest.fixture(scope="module")
def fsdp(tiny_models, tmp_path_factory):
    store = tmp_path_factory.mktemp("fsdp")
    proc = _launch("cpu_fsdp_2proc.yaml", tiny_models, store, ULD_FAULT_LOG=str(store.parent / f"{store.name}-points-{{rank}}.log"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    return store, proc


def test_fsdp_shards_and_computes_what_ddp_computes(fsdp, tiny_models, tmp_path):
    store, proc = fsdp
    assert "FSDP2 on 2 CPU processes" in proc.stderr
    (run,) = list((store / "runs").glob("smoke-*"))
    assert json.loads((run / "train_summary.json").read_text())["num_processes"] == 2
    ddp = tmp_path / "ddp"
    assert _launch("cpu_2proc.yaml", tiny_models, ddp).returncode == 0
    a, b = _weights(store), _weights(ddp)
    assert a.keys() == b.keys()
    assert max(float((a[k] - b[k]).abs().max()) for k in a) < 1e-5  # float rounding only


def test_a_killed_fsdp_run_resumes_to_the_same_weights(fsdp, tiny_models, tmp_path):
    store, _ = fsdp
    points = (store.parent / f"{store.name}-points-0.log").read_text().splitlines()
    swaps = [int(line.split()[0]) for line in points if line.split()[1:3] == ["swap", "after"] and line.endswith("checkpoints/state")]
    assert len(swaps) >= 3
    killed = tmp_path / "killed"
    proc = _launch("cpu_fsdp_2proc.yaml", tiny_models, killed, ULD_FAULT_AT=str(swaps[1]))  # after the 2nd of 4 states
    assert proc.returncode != 0
    (run,) = list((killed / "runs").glob("smoke-*"))
    assert json.loads((run / "checkpoints" / "state" / "trainer.json").read_text())["position"]["global_step"] == 2
    again = _launch("cpu_fsdp_2proc.yaml", tiny_models, killed)
    assert again.returncode == 0, again.stderr[-3000:]
    assert json.loads((run / "train_summary.json").read_text())["resumed"] is True
    a, b = _weights(store), _weights(killed)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_the_fsdp_checkpoint_is_a_hugging_face_folder(fsdp):
    from transformers import AutoModelForCausalLM

    store, _ = fsdp
    (run,) = list((store / "runs").glob("smoke-*"))
    model = AutoModelForCausalLM.from_pretrained(run / "checkpoints" / "best", use_safetensors=True)
    weights = _weights(store, "best")
    assert all(torch.equal(p.detach(), weights[n]) for n, p in model.named_parameters() if n in weights)
