#!/bin/bash
# Example SLURM job: one synchronised student trained data-parallel on 2 nodes x 4 GPUs.
# Read it as documentation and adapt the #SBATCH lines, module loads and paths to your cluster.
#
#   sbatch scripts/slurm_example.sh experiments/smoke.yaml training.method=uld
#
# srun starts ONE launcher per node; each `accelerate launch` starts one process per GPU of its node
# and all of them join one process group (rank 0 on the first node of the allocation). The global
# batch is training.batch_size x (GPUs in total) x training.grad_accum: lower training.batch_size or
# grad_accum to keep the paper's batch. A job killed by the time limit resumes from
# checkpoints/state when resubmitted: --resume below continues a saved state and starts fresh without one.
#SBATCH --job-name=uld-train
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=1          # one launcher per node
#SBATCH --gres=gpu:4
#SBATCH --cpus-per-task=32
#SBATCH --time=20:00:00
#SBATCH --output=logs/%x-%j.out
#SBATCH --signal=B:USR1@300          # optional: a warning 5 minutes before the time limit

set -euo pipefail
CONFIG=${1:?usage: sbatch scripts/slurm_example.sh CONFIG [overrides...]}
shift

# module load cuda/12.4             # cluster specific
source .venv/bin/activate
export HF_HUB_OFFLINE=1             # compute nodes usually have no internet: point at local folders
export ULD_MODELS_DIR=${ULD_MODELS_DIR:-$PWD/models}
export ULD_DATA_DIR=${ULD_DATA_DIR:-$PWD/../shared/data}
export OMP_NUM_THREADS=8

GPUS_PER_NODE=4
MAIN_ADDR=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
MAIN_PORT=29500

# The teacher stage (answers + cached signal) shards its chunks over the same processes, then the
# student trains; `uld run` would also evaluate (on the main process).
srun --kill-on-bad-exit=1 bash -c "accelerate launch \
    --config_file experiments/accelerate/ddp.yaml \
    --num_machines $SLURM_NNODES \
    --num_processes $((SLURM_NNODES * GPUS_PER_NODE)) \
    --machine_rank \$SLURM_NODEID \
    --main_process_ip $MAIN_ADDR \
    --main_process_port $MAIN_PORT \
    -m uld train --resume $CONFIG $*"
