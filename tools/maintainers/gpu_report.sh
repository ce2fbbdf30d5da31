#!/usr/bin/env bash
# One command for the first CUDA machine that comes along: install what is missing of the stack from a wheel
# directory (no internet needed), then measure everything the GPU targets need into OUT_DIR/report.md.
#
#   tools/maintainers/gpu_report.sh [--dry-run] [--wheels DIR] [--steps NAME,...] [OUT_DIR]   (default: work_dirs/gpu_report)
#   tools/maintainers/gpu_report.sh --download-wheels DIR [--python-version 3.12]             (on a machine with PyPI)
#
# The machine needs Python >= 3.10 with a CUDA torch (kept as it is: never reinstalled) and this repository.
# The wheel directory holds what the stack needs beyond torch (pure-python wheels, pycocotools and shapely for
# the target Python, the mmcv 2.1.0 sdist: about 12 MB): `--download-wheels DIR` fills it. Installing is
# `pip install --no-index --no-deps --find-links DIR` of the missing packages into $PYTHON's environment
# (default python3; point PYTHON at another interpreter to install elsewhere); mmcv comes from an mmcv-2.1.0
# wheel that matches the Python and torch (in $MMCV_WHEEL_DIR, default ../shared/wheels, or DIR) or is built
# there from the sdist with its CUDA ops (tools/install/mmcv_build.sh; about
# 4 minutes on 16 cores), the built wheel kept in DIR for the next run.
#
# The steps (tools/maintainers/gpu_report.py) run tools/analysis_tools/benchmark.py and tools/maintainers/runner_check.py;
# a failed step is recorded with its last lines and the next one runs; the exit status is non-zero if any failed.
#
# --dry-run: on CPU, at tiny sizes, installing nothing; the installation is decided as for a real run and what
# would be done is printed. It shows that the script works before a GPU is there (tests/test_gpu_report.py).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
PY="${PYTHON:-python3}"
MMCV_WHEEL_DIR="${MMCV_WHEEL_DIR:-$ROOT/../shared/wheels}"   # prebuilt mmcv wheels, by torch (../shared/README.md)
# shellcheck source=tools/install/mmcv_build.sh
source "$ROOT/tools/install/mmcv_build.sh"

# What the stack needs beyond torch and what a CUDA Python image has (numpy, scipy, matplotlib, opencv, pyyaml,
# rich, regex, packaging, tqdm, six, huggingface_hub, safetensors): the OpenMMLab packages, timm, and their
# small dependencies. Versions come from requirements.txt where it pins them.
STACK_PACKAGES=(mmengine mmdet mmsegmentation timm addict yapf platformdirs termcolor pycocotools shapely
                terminaltables prettytable wcwidth ftfy)
PLATFORMS=(manylinux2014_x86_64 manylinux_2_17_x86_64 manylinux_2_24_x86_64 manylinux_2_28_x86_64)

usage() { sed -n '2,6p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2; }
die() { printf 'gpu_report.sh: error: %s\n' "$*" | tee -a "${INSTALL_LOG:-/dev/null}" >&2; exit 2; }
log() { printf '[gpu_report] %s\n' "$*" | tee -a "${INSTALL_LOG:-/dev/null}"; }
# This machine's pip config may name local indexes that lack most packages; drop pip's warning for each.
pip_quiet() { "$PY" -m pip --disable-pip-version-check -q "$@" 2> >(grep -v 'is ignored: it is neither a file' >&2); }

spec_of() {  # NAME -> its requirement as requirements.txt pins it, else NAME
  local line
  line="$(grep -iE "^$1[ ]*([=<>!~]|$)" "$ROOT/requirements.txt" | head -n1 | sed 's/#.*//; s/[[:space:]]*$//' || true)"
  printf '%s\n' "${line:-$1}"
}

dry_run=0 wheels="" download="" python_version="3.12" steps="" out_dir=""
while [ $# -gt 0 ]; do
  case "$1" in
    --dry-run) dry_run=1 ;;
    --wheels) [ $# -ge 2 ] || die "--wheels needs a directory"; wheels="$2"; shift ;;
    --download-wheels) [ $# -ge 2 ] || die "--download-wheels needs a directory"; download="$2"; shift ;;
    --python-version) [ $# -ge 2 ] || die "--python-version needs a version such as 3.12"; python_version="$2"; shift ;;
    --steps) [ $# -ge 2 ] || die "--steps needs step names (see tools/maintainers/gpu_report.py --help)"; steps="$2"; shift ;;
    -h|--help) usage; exit 0 ;;
    -*) usage; die "unknown option $1" ;;
    *) [ -z "$out_dir" ] || die "one OUT_DIR only (got $out_dir and $1)"; out_dir="$1" ;;
  esac
  shift
done

specs=()
for name in "${STACK_PACKAGES[@]}"; do specs+=("$(spec_of "$name")"); done
if [ -n "$download" ]; then
  [[ "$python_version" =~ ^3\.[0-9]+$ ]] || die "--python-version must look like 3.12, got '$python_version'"
  mkdir -p "$download"
  platform_args=()
  for platform in "${PLATFORMS[@]}"; do platform_args+=(--platform "$platform"); done
  log "wheels for CPython $python_version into $download: ${specs[*]} $SETUPTOOLS_WITH_PKG_RESOURCES"
  pip_quiet download --no-deps --only-binary :all: --implementation cp --python-version "$python_version" \
    "${platform_args[@]}" -d "$download" "${specs[@]}" "$SETUPTOOLS_WITH_PKG_RESOURCES"
  log "mmcv 2.1.0 sdist (built on the GPU machine)"
  pip_quiet download --no-deps --no-binary :all: --no-build-isolation -d "$download" "mmcv==2.1.0"
  log "done: $(find "$download" -maxdepth 1 -type f | wc -l) files, $(du -sh "$download" | cut -f1) in $download"
  exit 0
fi

[ -z "$wheels" ] || [ -d "$wheels" ] || die "--wheels $wheels: no such directory"
[ -z "$wheels" ] || wheels="$(cd "$wheels" && pwd)"
out_dir="${out_dir:-$ROOT/work_dirs/gpu_report}"
mkdir -p "$out_dir"
out_dir="$(cd "$out_dir" && pwd)"
INSTALL_LOG="$out_dir/install.log"
: > "$INSTALL_LOG"

# --- the interpreter: Python >= 3.10 with torch (CUDA unless --dry-run) -------------------------------------
command -v "$PY" >/dev/null 2>&1 || die "$PY not found: set PYTHON=/path/to/python (>= 3.10, with torch)"
"$PY" -c 'import sys; sys.exit(sys.version_info < (3, 10))' \
  || die "$PY is Python $("$PY" -c 'import platform; print(platform.python_version())'); the stack needs >= 3.10"
torch_info="$("$PY" -c 'import torch; print(torch.__version__, torch.version.cuda, torch.cuda.is_available())' \
  2>/dev/null)" || die "$PY cannot import torch: install a CUDA torch first (this script never installs torch)"
read -r torch_version torch_cuda cuda_available <<<"$torch_info"
python_found="$("$PY" -c 'import platform; print(platform.python_version())')"
log "python: $PY ($python_found), torch $torch_version, CUDA $torch_cuda, GPU available: $cuda_available"
if [ "$dry_run" = 0 ] && [ "$cuda_available" != True ]; then
  die "torch.cuda.is_available() is False with $PY: the report needs a CUDA GPU (or try --dry-run)"
fi

# --- the packages: install what is missing from the wheel directory ----------------------------------------
would_install=0
do_or_say() {  # run "$@", or with --dry-run say what would run
  local shown
  shown="$(printf '%q ' "$@")"
  if [ "$dry_run" = 1 ]; then
    log "dry run, would run: $shown"
    would_install=1
  else
    log "running: $shown"
    "$@"
  fi
}
need_wheels() {
  [ -n "$wheels" ] || die "$1: to install, but no wheel directory was given: pass --wheels DIR (made on a machine \
with PyPI by: tools/maintainers/gpu_report.sh --download-wheels DIR --python-version ${python_found%.*})"
}

# shellcheck disable=SC2207
missing=($("$PY" - "${specs[@]}" <<'PY'
import importlib.metadata as metadata
import sys
from packaging.requirements import Requirement
for spec in sys.argv[1:]:
    requirement = Requirement(spec)
    try:
        version = metadata.version(requirement.name)
    except metadata.PackageNotFoundError:
        version = None
    if version is None or not requirement.specifier.contains(version, prereleases=True):
        print(spec.replace(' ', ''))
PY
))
if [ ${#missing[@]} -eq 0 ]; then
  log "packages: all of ${STACK_PACKAGES[*]} installed in the required versions: nothing to install"
else
  need_wheels "${missing[*]}"
  do_or_say "$PY" -m pip install --disable-pip-version-check -q --no-index --no-deps --find-links "$wheels" \
    "${missing[@]}"
fi

if ! "$PY" -c 'import pkg_resources' 2>/dev/null; then
  need_wheels "pkg_resources (mmcv's setup.py and mmengine's config loader import it)"
  do_or_say "$PY" -m pip install --disable-pip-version-check -q --no-index --no-deps --find-links "$wheels" \
    "$SETUPTOOLS_WITH_PKG_RESOURCES"
fi

# mmcv 2.1.0 with its compiled ops (CUDA ops for a real run).
mmcv_state="$("$PY" - <<'PY'
import importlib.metadata as metadata
try:
    version = metadata.version('mmcv')
except metadata.PackageNotFoundError:
    version = None
if version != '2.1.0':
    print(f'missing (installed: {version})')
else:
    try:
        from mmcv.ops import get_compiling_cuda_version  # loads the compiled ops
        print('cpu-ops' if get_compiling_cuda_version() == 'not available' else 'cuda-ops')
    except Exception as err:  # noqa: BLE001  (any failure to load the ops means: rebuild)
        print(f'broken ({type(err).__name__}: {str(err).splitlines()[0][:120]})')
PY
)"
wanted_ops=cuda-ops
[ "$dry_run" = 0 ] || [ "$mmcv_state" != cpu-ops ] || wanted_ops=cpu-ops  # the dry run runs on CPU
if [ "$mmcv_state" = "$wanted_ops" ]; then
  log "mmcv: 2.1.0 with its compiled ops ($mmcv_state) is installed: nothing to do"
else
  log "mmcv: $mmcv_state; needed: 2.1.0 with CUDA ops"
  py_tag="cp$("$PY" -c 'import sys; print("%d%d" % sys.version_info[:2])')"
  # A prebuilt wheel for this Python and torch: the project's shared ones first (MMCV_WHEEL_DIR, by torch
  # version), then the wheel directory; CUDA ops for a real run.
  wheel=""
  for wheel_dir in "$MMCV_WHEEL_DIR" ${wheels:+"$wheels"}; do
    [ -d "$wheel_dir" ] || continue
    wheel="$("$PY" "$ROOT/tools/install/cuda_setup.py" find-wheel --dir "$wheel_dir" --python-tag "$py_tag" \
      --torch "$torch_version" --ops "${wanted_ops%-ops}")"
    [ -z "$wheel" ] || { log "mmcv: prebuilt wheel $wheel fits Python $python_found and torch $torch_version"; break; }
  done
  [ -n "$wheel" ] || need_wheels "mmcv 2.1.0 with CUDA ops"
  if [ -z "$wheel" ]; then
    [ -f "$wheels/mmcv-2.1.0.tar.gz" ] || die "neither an mmcv-2.1.0-$py_tag wheel nor mmcv-2.1.0.tar.gz in $wheels"
    log "building mmcv 2.1.0 with its CUDA ops from $wheels/mmcv-2.1.0.tar.gz (C++ standard: $(mmcv_cxx_std "$PY"))"
    if [ "$dry_run" = 1 ]; then
      log "dry run, would run: build_mmcv_wheel $PY $wheels/mmcv-2.1.0.tar.gz $wheels cuda"
      wheel="$wheels/mmcv-2.1.0-$py_tag-$py_tag-linux_x86_64.whl"
    else
      # CUDA_HOME behind an nvcc wrapper script, CPATH with the headers of torch's nvidia-* packages.
      MMCV_CUDA=""
      eval "$("$PY" "$ROOT/tools/install/cuda_setup.py" build-env)"
      [ "$MMCV_CUDA" = cuda ] || die "mmcv's CUDA ops cannot be built here (see the line above)"
      wheel="$(build_mmcv_wheel "$PY" "$wheels/mmcv-2.1.0.tar.gz" "$wheels" cuda 2> >(tee -a "$INSTALL_LOG" >&2))" \
        || die "building mmcv failed: its compiler output is in $INSTALL_LOG"
    fi
  fi
  do_or_say "$PY" -m pip install --disable-pip-version-check -q --no-index --no-deps --force-reinstall "$wheel"
fi

if [ "$would_install" = 1 ]; then
  log "dry run: the stack is incomplete here and a dry run installs nothing; the steps need it (tools/install/install.sh)"
  exit 1
fi
if [ "$dry_run" = 0 ]; then
  PYTHONPATH="$ROOT" "$PY" -c 'from backbones.stack import check_stack; check_stack("mmdet"); check_stack("mmseg")' \
    || die "the stack does not import after installing (see above)"
fi

# --- the steps and the report -----------------------------------------------------------------------------
report_args=()
[ "$dry_run" = 0 ] || report_args+=(--dry-run)
[ -z "$steps" ] || report_args+=(--steps "$steps")
cd "$ROOT"
PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" exec "$PY" tools/maintainers/gpu_report.py "${report_args[@]}" \
  --install-log "$INSTALL_LOG" "$out_dir"
