#!/usr/bin/env bash
# GPU checks, in one go (under 10 minutes on one or more GPUs): the CUDA unit checks, then, with two or more
# GPUs, the README's multi-process command with DDP (experiments/accelerate/ddp.yaml) and FSDP
# (experiments/accelerate/fsdp.yaml) on tiny models, each compared with a one-GPU run of the same global batch.
#   bash scripts/check_gpu.sh            # from the repository root, with the project installed
# Prints one PASS/FAIL line per check and exits non-zero if any failed. The CPU versions of the same checks
# run in CI: tests/integration/test_multiprocess.py and test_fsdp.py.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
WORK=$(mktemp -d)
status=0
check() { local name=$1; shift; if "$@" > "$WORK/$name.log" 2>&1; then echo "PASS $name"; else echo "FAIL $name (log: $WORK/$name.log)"; tail -20 "$WORK/$name.log"; status=1; fi; }

ngpu=$($PY -c "import torch; print(torch.cuda.device_count())")
echo "GPUs: $ngpu ($($PY -c "import torch; print(torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'none')"))"
[ "$ngpu" -ge 1 ] || { echo "FAIL no CUDA device"; exit 1; }

check unit-gpu $PY -m pytest -q -p no:cacheprovider -m gpu tests/gpu

$PY - "$WORK/models" <<'PYEOF'
import sys
from uld.testing import build_tiny_pair
build_tiny_pair(sys.argv[1])
PYEOF
M=$WORK/models
DATA=../shared/data; [ -d "$DATA/squad" ] || DATA=tests/fixtures/data
common() { echo experiments/smoke.yaml teacher.path=$M/tiny-teacher student.path=$M/tiny-student data.dir=$DATA \
  training.method=uld data.train_size=12 data.test_size=4 generation.max_new_tokens=6 generation.top_k_signal=16 \
  training.max_steps=4 training.optim.lr=1e-3 evaluation.max_new_tokens=6 training.checkpoints.save_every=1; }

check one-gpu $PY -m uld run $(common) output_dir=$WORK/one training.batch_size=4
if [ "$ngpu" -ge 2 ]; then
  check ddp-2gpu accelerate launch --config_file experiments/accelerate/ddp.yaml --num_processes 2 -m uld run $(common) \
    output_dir=$WORK/ddp training.batch_size=2
  check fsdp-2gpu accelerate launch --config_file experiments/accelerate/fsdp.yaml --num_processes 2 -m uld run $(common) \
    output_dir=$WORK/fsdp training.batch_size=2
  check compare $PY - "$WORK" <<'PYEOF'
import glob, json, sys
from safetensors.torch import load_file
work = sys.argv[1]
def weights(name):
    (run,) = glob.glob(f"{work}/{name}/runs/smoke-*")
    return run, load_file(f"{run}/checkpoints/last/model.safetensors")
(_, one), (ddp_run, ddp), (fsdp_run, fsdp) = weights("one"), weights("ddp"), weights("fsdp")
for name, run in (("ddp", ddp_run), ("fsdp", fsdp_run)):
    assert json.load(open(f"{run}/train_summary.json"))["num_processes"] == 2, name
upd = sum(float((one[k] - load_file(glob.glob(f"{work}/models/tiny-student/model.safetensors")[0])[k]).pow(2).sum()) for k in one) ** 0.5
for name, w in (("ddp", ddp), ("fsdp", fsdp)):
    diff = sum(float((w[k] - one[k]).pow(2).sum()) for k in one) ** 0.5
    print(f"{name}: |w - w_1gpu| = {diff:.3g}, training update {upd:.3g}")
    assert diff <= 0.05 * upd, name
print("ddp vs fsdp max |dw|:", max(float((ddp[k] - fsdp[k]).abs().max()) for k in ddp))
PYEOF
else
  echo "SKIP multi-GPU checks (one GPU)"
fi
exit $status
