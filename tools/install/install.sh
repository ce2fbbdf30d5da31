#!/usr/bin/env bash
# Idempotent set-up of the project's virtual environment (what `make demo` and `make test` call).
#
# Default stack: Python 3.11, torch 2.14.1 + torchvision 0.29.1, mmcv 2.1.0 with its compiled ops, then
# requirements.txt (mmengine 0.10.7, mmdet 3.3.0, mmsegmentation 1.2.2, timm 1.0.x, ONNX and test tools).
# Another supported stack comes from variables (Python 3.10-3.12, torch 2.1-2.14):
#
#   PYTHON_BIN=python3.10 TORCH=2.1.2 TORCHVISION=0.16.2 VENV=.venv-py310 bash tools/install/install.sh
#
#   PYTHON_BIN      interpreter the venv is made with (default python3.11)
#   TORCH           torch version from PyPI (default 2.14.1); numpy stays < 2 for torch < 2.3 (built against numpy 1)
#   TORCHVISION     default: the release that matches TORCH (0.<minor+15>.*)
#   VENV            where (default .venv in the repository)
#   MMCV_WHEEL_DIR  prebuilt mmcv wheels (default ../shared/wheels): <dir>/mmcv-2.1.0-<python tag>-*.whl is built
#                   against torch 2.14.1, <dir>/torch-<TORCH>/mmcv-2.1.0-<python tag>-*.whl against TORCH
#   MMCV_BUILD_DIR  where an mmcv built from source is kept and reused, per stack (default ~/.cache/mambaout-mmcv)
#
# mmcv 2.1.0 ships only as an sdist; it is built (tools/install/mmcv_build.sh) with the C++ standard the chosen
# torch builds extensions with. On a machine with an NVIDIA GPU, tools/install/cuda_setup.py checks the driver
# against torch's CUDA before anything is installed, builds mmcv's CUDA ops where nvcc's CUDA major equals
# torch's, and runs mmcv's nms and RoIAlign on the GPU at the end.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
DEFAULT_TORCH=2.14.1 DEFAULT_TORCHVISION=0.29.1
VENV="${VENV:-$ROOT/.venv}"
PYTHON_BIN="${PYTHON_BIN:-python3.11}"
TORCH="${TORCH:-$DEFAULT_TORCH}"
MMCV_WHEEL_DIR="${MMCV_WHEEL_DIR:-$ROOT/../shared/wheels}"
MMCV_BUILD_DIR="${MMCV_BUILD_DIR:-$HOME/.cache/mambaout-mmcv}"
STAMP="$VENV/.mambaout-installed"
# shellcheck source=tools/install/mmcv_build.sh
source "$ROOT/tools/install/mmcv_build.sh"

log() { printf '[install] %s\n' "$*"; }
die() { printf 'install.sh: error: %s\n' "$*" >&2; exit 2; }

# --- the stack asked for: one error for what is not supported -----------------------------------------------
[[ "$TORCH" =~ ^2\.([0-9]+)\.[0-9]+$ ]] || die "TORCH=$TORCH: give a full torch release such as 2.14.1 or 2.1.2"
torch_minor="${BASH_REMATCH[1]}"
[ "$torch_minor" -ge 1 ] && [ "$torch_minor" -le 14 ] \
  || die "TORCH=$TORCH is not supported: torch 2.1-2.14 are (e.g. TORCH=2.1.2 TORCHVISION=0.16.2, or the default 2.14.1)"
if [ "$TORCH" = "$DEFAULT_TORCH" ]; then
  TORCHVISION="${TORCHVISION:-$DEFAULT_TORCHVISION}"
fi
TORCHVISION="${TORCHVISION:-0.$((torch_minor + 15)).*}"   # torchvision 0.16 goes with torch 2.1, ..., 0.29 with 2.14
[[ "$TORCHVISION" =~ ^0\.$((torch_minor + 15))\. ]] \
  || die "TORCHVISION=$TORCHVISION does not match TORCH=$TORCH: torch 2.$torch_minor needs torchvision 0.$((torch_minor + 15)).x"
python_version="$("$PYTHON_BIN" -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null)" \
  || die "$PYTHON_BIN does not run here: set PYTHON_BIN=/path/to/python3.X (3.10-3.12; with pyenv, its full path or PYENV_VERSION)"
case "$python_version" in
  3.10|3.11) ;;
  3.12) [ "$torch_minor" -ge 2 ] || die "Python 3.12 needs torch >= 2.2 (torch $TORCH has no Python 3.12 wheels): \
use PYTHON_BIN=python3.10 or python3.11 with TORCH=$TORCH" ;;
  *) die "$PYTHON_BIN is Python $python_version: the supported ones are 3.10-3.12 (set PYTHON_BIN=python3.11)" ;;
esac
py_tag="cp${python_version/./}"
numpy_spec=""
[ "$torch_minor" -ge 3 ] || numpy_spec="numpy<2"   # torch < 2.3 was compiled against numpy 1 (its ABI breaks on 2.x)

if [ -x "$VENV/bin/python" ]; then
  venv_version="$("$VENV/bin/python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
  [ "$venv_version" = "$python_version" ] || die "$VENV is a Python $venv_version venv, but PYTHON_BIN is Python \
$python_version: set VENV= to another folder (e.g. VENV=.venv-py${python_version/./}) or remove $VENV"
else
  log "creating $VENV (Python $python_version)"
  "$PYTHON_BIN" -m venv "$VENV"
fi
PY="$VENV/bin/python"
# This machine's pip config names local indexes that lack most packages; drop pip's warning for each.
pip_install() {
  "$PY" -m pip install --disable-pip-version-check -q "$@" 2> >(grep -v 'is ignored: it is neither a file' >&2)
}

# Every pip call below keeps the chosen torch, torchvision, numpy range and mmcv: nothing in requirements.txt
# can move them.
CONSTRAINTS="$VENV/mambaout-constraints.txt"
printf '%s\n' "torch==$TORCH" "torchvision==$TORCHVISION" "mmcv==2.1.0" $numpy_spec > "$CONSTRAINTS"
export PIP_CONSTRAINT="$CONSTRAINTS"

# Everything that decides what gets installed; the stamp skips the whole script when none of it changed.
gpu="$(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader 2>/dev/null | head -n1 || true)"
want="$( (cat "$ROOT/requirements.txt" "$ROOT/setup.py" "$ROOT/tools/install/install.sh" \
  "$ROOT/tools/install/mmcv_build.sh" "$ROOT/tools/install/cuda_setup.py" "$CONSTRAINTS"
  echo "$python_version $gpu") | sha256sum | cut -c1-16)"
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$want" ] && "$PY" -c 'import mmcv.ops, mmdet, mmseg, timm' 2>/dev/null; then
  exit 0
fi

# --- GPU: can the driver run this torch's CUDA? Asked before the download (pip reads only the metadata) -----
if [ -n "$gpu" ]; then
  report="$(mktemp)"
  "$PY" -m pip install --disable-pip-version-check -q --dry-run --ignore-installed --no-deps --report "$report" \
    "torch==$TORCH" 2> >(grep -v 'is ignored: it is neither a file' >&2) || die "pip cannot find torch==$TORCH"
  "$PY" "$ROOT/tools/install/cuda_setup.py" driver-check --torch "$TORCH" --report "$report" || exit 2
  rm -f "$report"
fi

log "torch $TORCH + torchvision $TORCHVISION${numpy_spec:+ ($numpy_spec)}"
pip_install "torch==$TORCH" "torchvision==$TORCHVISION" ${numpy_spec:+"$numpy_spec"}
pip_install "$(setuptools_for_torch "$PY")" wheel ninja

# --- mmcv 2.1.0 with its ops: CUDA ops where this machine can build them, else a matching wheel or a CPU build
MMCV_CUDA="" CUDA_HOME="${CUDA_HOME:-}"
eval "$("$PY" "$ROOT/tools/install/cuda_setup.py" build-env)"
ops_kind=cpu
[ "$MMCV_CUDA" != cuda ] || ops_kind=cuda
mmcv_ok() {  # mmcv 2.1.0 whose compiled ops load (and are CUDA ops when those are wanted)
  "$PY" - "$ops_kind" <<'PY' 2>/dev/null
import sys
import mmcv
from mmcv.ops import get_compiling_cuda_version
assert mmcv.__version__ == '2.1.0'
assert sys.argv[1] == 'cpu' or get_compiling_cuda_version() != 'not available'
PY
}
if ! mmcv_ok; then
  torch_cuda="$("$PY" -c 'import torch; print((torch.version.cuda or "cpu").replace(".", ""))')"
  build_dir="$MMCV_BUILD_DIR/torch-$TORCH-$py_tag-$([ "$ops_kind" = cuda ] && echo "cu$torch_cuda" || echo cpu)"
  wheel="$("$PY" "$ROOT/tools/install/cuda_setup.py" find-wheel --dir "$MMCV_WHEEL_DIR" --python-tag "$py_tag" \
    --torch "$TORCH" --default-torch "$DEFAULT_TORCH" --ops "$ops_kind")"
  [ -z "$wheel" ] || log "mmcv 2.1.0 from the prebuilt wheel $wheel (built against torch $TORCH, $ops_kind ops)"
  [ -n "$wheel" ] || wheel=$(ls "$build_dir"/mmcv-2.1.0-*.whl 2>/dev/null | head -n1 || true)
  if [ -z "$wheel" ]; then
    log "building mmcv 2.1.0 with its $ops_kind ops from source for torch $TORCH, $(mmcv_cxx_std "$PY") \
(CPU ops: 10-35 min on 2 cores)"
    src="$(mktemp -d)"
    "$PY" -m pip download -q --disable-pip-version-check --no-deps --no-binary :all: "mmcv==2.1.0" -d "$src"
    wheel=$(build_mmcv_wheel "$PY" "$src"/mmcv-2.1.0.tar.gz "$build_dir" ${MMCV_CUDA:+cuda})
    rm -rf "$src"
  fi
  pip_install --force-reinstall --no-deps "$wheel"
fi

log "mmengine, mmdet, mmseg, timm, ONNX and test tools (requirements.txt), then this package"
pip_install -r "$ROOT/requirements.txt"
pip_install --no-build-isolation -e "$ROOT[onnx,tests,analysis,demo,browser-tests]"
# The web demo's test drives a headless Chromium: Debian's (Playwright's own browser download cannot run here).
if ! command -v chromium >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    log "chromium (Debian) for the web demo's browser test"
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; } \
      || die "apt-get install chromium failed: the web demo's test needs it (apt-get install -y chromium)"
  else
    log "note: no chromium: tests/test_web_demo.py needs it (apt-get install -y chromium)"
  fi
fi

"$PY" - <<'PY'
import mmcv, mmcv.ops, mmdet, mmseg, mmengine, numpy, timm, torch
print(f'[install] ok: Python {".".join(map(str, __import__("sys").version_info[:3]))}, torch {torch.__version__}, '
      f'numpy {numpy.__version__}, mmcv {mmcv.__version__} (ops), mmengine {mmengine.__version__}, '
      f'mmdet {mmdet.__version__}, mmseg {mmseg.__version__}, timm {timm.__version__}')
PY
if [ "$ops_kind" = cuda ]; then
  "$PY" "$ROOT/tools/install/cuda_setup.py" gpu-ops-check || exit 2
fi
echo "$want" > "$STAMP"
