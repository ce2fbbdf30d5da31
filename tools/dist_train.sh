#!/usr/bin/env bash
# Usage: tools/dist_train.sh CONFIG GPUS [train.py args...]   (NNODES, NODE_RANK, MASTER_ADDR, PORT: see dist_run.sh)
set -euo pipefail
exec "$(dirname "$0")/dist_run.sh" train.py "$2" "$1" "${@:3}"
