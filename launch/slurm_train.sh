#!/usr/bin/env bash
# Multi-host training on N nodes x 8 H100 (one JAX process per node, 8 GPUs each).
#   sbatch --nodes=4 launch/slurm_train.sh configs/1m.py runs/paper [--config.x.y=value ...]
# Settings live in the config file; this script only sets the environment. jax.distributed
# reads the coordinator, process count and ranks from SLURM (lctx.train.init_distributed).
#SBATCH --job-name=lctx-train
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=64
#SBATCH --exclusive
#SBATCH --output=logs/%x-%j.out
set -euo pipefail
CONFIG=${1:?usage: sbatch --nodes=N launch/slurm_train.sh CONFIG WORKDIR [overrides...]}
WORKDIR=${2:?usage: sbatch --nodes=N launch/slurm_train.sh CONFIG WORKDIR [overrides...]}
shift 2
cd "${SLURM_SUBMIT_DIR:-$(dirname "$0")/..}"
mkdir -p logs "$WORKDIR"
source "$(dirname "$0")/h100_env.sh"
echo "[launch] $(date -Is) job ${SLURM_JOB_ID:-local} nodes ${SLURM_JOB_NUM_NODES:-1}: $CONFIG -> $WORKDIR $*"
# Rerunning the same command resumes from the workdir's last checkpoint (requeue-safe).
srun --kill-on-bad-exit=1 python3 -m lctx.train --config="$CONFIG" --workdir="$WORKDIR" "$@"
