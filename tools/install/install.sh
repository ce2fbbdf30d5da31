#!/usr/bin/env bash
# Idempotent set-up of the project's virtual environment (what `make demo` and `make test` call).
#
# Stack (DEVELOPERS.md): Python 3.11, torch 2.14.1 + torchvision 0.29.1, mmcv 2.1.0 with its compiled
# ops, mmengine 0.10.7, mmdet 3.3.0, mmsegmentation 1.2.2, timm 1.0.x.  mmcv 2.1.0 ships only as an
# sdist whose setup.py asks for -std=c++17 while torch 2.14's headers need C++20, so it is built here
# with that one flag changed (tools/install/mmcv_build.sh) -- or taken from a prebuilt wheel in $MMCV_WHEEL_DIR
# (default ../shared/wheels).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
VENV="${VENV:-$ROOT/.venv}"
PYTHON_BIN="${PYTHON_BIN:-python3.11}"
MMCV_WHEEL_DIR="${MMCV_WHEEL_DIR:-$ROOT/../shared/wheels}"
MMCV_BUILD_DIR="${MMCV_BUILD_DIR:-$HOME/.cache/mambaout-mmcv}"   # built wheel is kept here and reused
STAMP="$VENV/.mambaout-installed"
# shellcheck source=tools/install/mmcv_build.sh
source "$ROOT/tools/install/mmcv_build.sh"

log() { printf '[install] %s\n' "$*"; }

if ! command -v "$PYTHON_BIN" >/dev/null 2>&1; then
  echo "[install] $PYTHON_BIN not found: this stack needs CPython 3.11 (set PYTHON_BIN=/path/to/python3.11)." >&2
  exit 1
fi
[ -x "$VENV/bin/python" ] || { log "creating $VENV"; "$PYTHON_BIN" -m venv "$VENV"; }
PY="$VENV/bin/python"
# This machine's pip config names local indexes that lack most packages; drop pip's warning for each.
pip_install() {
  "$PY" -m pip install --disable-pip-version-check -q "$@" 2> >(grep -v 'is ignored: it is neither a file' >&2)
}

# Everything that decides what gets installed; the stamp skips the whole script when none of it changed.
want="$(cat "$ROOT/requirements.txt" "$ROOT/setup.py" "$ROOT/tools/install/install.sh" "$ROOT/tools/install/mmcv_build.sh" \
  | sha256sum | cut -c1-16)"
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$want" ] && "$PY" -c 'import mmcv.ops, mmdet, mmseg, timm' 2>/dev/null; then
  exit 0
fi

log "torch 2.14.1 + torchvision 0.29.1"
pip_install "torch==2.14.1" "torchvision==0.29.1"
pip_install "$SETUPTOOLS_WITH_PKG_RESOURCES" wheel ninja

if ! "$PY" -c 'import mmcv, mmcv.ops; assert mmcv.__version__ == "2.1.0"' 2>/dev/null; then
  if ls "$MMCV_WHEEL_DIR"/mmcv-2.1.0-cp311-*.whl >/dev/null 2>&1; then
    log "mmcv 2.1.0 from prebuilt wheel in $MMCV_WHEEL_DIR"
    pip_install --find-links "$MMCV_WHEEL_DIR" --only-binary mmcv "mmcv==2.1.0"
  else
    wheel=$(ls "$MMCV_BUILD_DIR"/mmcv-2.1.0-*.whl 2>/dev/null | head -n1 || true)
    if [ -z "$wheel" ]; then
      log "building mmcv 2.1.0 with its ops from source (10-25 min on 2 cores)"
      src="$(mktemp -d)"
      "$PY" -m pip download -q --disable-pip-version-check --no-deps --no-binary :all: "mmcv==2.1.0" -d "$src"
      wheel=$(build_mmcv_wheel "$PY" "$src"/mmcv-2.1.0.tar.gz "$MMCV_BUILD_DIR")
      rm -rf "$src"
    fi
    pip_install "$wheel"
  fi
fi

log "mmengine, mmdet, mmseg, timm, test tools"
pip_install -r "$ROOT/requirements.txt"
pip_install --no-deps --no-build-isolation -e "$ROOT"

"$PY" - <<'PY'
import mmcv, mmcv.ops, mmdet, mmseg, mmengine, timm, torch
print(f'[install] ok: torch {torch.__version__}, mmcv {mmcv.__version__} (ops), mmengine {mmengine.__version__}, '
      f'mmdet {mmdet.__version__}, mmseg {mmseg.__version__}, timm {timm.__version__}')
PY
echo "$want" > "$STAMP"
