#!/usr/bin/env bash
# Usage: tools/dist_run.sh SCRIPT NPROC ARGS...   (what dist_train.sh and dist_test.sh call)
# Runs tools/SCRIPT in NPROC processes per node with torchrun. Multi-node: NNODES, NODE_RANK, MASTER_ADDR
# and PORT as for torchrun. Without CUDA the processes use gloo (mambaout_tools/launch.py).
set -euo pipefail
SCRIPT=$1
NPROC=$2
PYTHON=${PYTHON:-python}

PYTHONPATH="$(dirname "$0")/..${PYTHONPATH:+:$PYTHONPATH}" \
"$PYTHON" -m torch.distributed.run \
    --nnodes="${NNODES:-1}" \
    --node_rank="${NODE_RANK:-0}" \
    --master_addr="${MASTER_ADDR:-127.0.0.1}" \
    --nproc_per_node="$NPROC" \
    --master_port="${PORT:-29500}" \
    "$(dirname "$0")/$SCRIPT" "${@:3}" --launcher pytorch
