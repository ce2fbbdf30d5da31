# Building mmcv 2.1.0 with its compiled ops from the sdist: what tools/install/install.sh and tools/maintainers/gpu_report.sh share.
# Sourced, not run:  source tools/install/mmcv_build.sh; build_mmcv_wheel PYTHON SDIST OUT_DIR [cuda]
#
# mmcv 2.1.0 ships only as an sdist, and its setup.py asks for -std=c++17, while newer torch headers (2.14's)
# need C++20. The flag is raised to what the torch that builds it asks for: torch's own extension builder
# (torch.utils.cpp_extension) passes the standard its headers need.

# mmcv's setup.py (and mmengine 0.10.7's config loader, for `mmdet::` bases) import pkg_resources, which
# setuptools 81 removed; torch 2.14 needs setuptools >= 77.
SETUPTOOLS_WITH_PKG_RESOURCES='setuptools>=77,<81'

# torch's extension builder (torch/utils/cpp_extension.py) of PYTHON, found without importing torch (the import
# guesses CUDA_HOME and warns).
torch_cpp_extension() {
  "$1" -c 'import importlib.util, os; print(os.path.join(os.path.dirname(importlib.util.find_spec("torch").origin), "utils", "cpp_extension.py"))'
}

# The setuptools that builds mmcv against the torch of PYTHON: older torch's extension builder (2.1's) does
# `from pkg_resources import packaging`, which setuptools 70 removed.
setuptools_for_torch() {
  local source
  source="$(torch_cpp_extension "$1")" || return
  if grep -q '^from pkg_resources import packaging' "$source"; then
    echo 'setuptools<70'
  else
    echo "$SETUPTOOLS_WITH_PKG_RESOURCES"
  fi
}

# The C++ standard the torch of PYTHON builds extensions with (what its headers need): c++20 (torch 2.14)
# or c++17 (torch 2.1).
mmcv_cxx_std() {
  local source
  source="$(torch_cpp_extension "$1")" || return
  if grep -q -- "-std=c++20" "$source"; then echo c++20; else echo c++17; fi
}

# Build mmcv's wheel from SDIST (mmcv-2.1.0.tar.gz) with PYTHON into OUT_DIR and print the wheel's path.
# A fourth argument `cuda` builds the CUDA ops too (FORCE_CUDA=1, for this GPU's architecture unless
# TORCH_CUDA_ARCH_LIST says otherwise), with the CUDA_HOME and CPATH that `tools/install/cuda_setup.py build-env`
# prints. MAX_JOBS (default: all cores) sets the compile jobs.
build_mmcv_wheel() {
  local py="$1" sdist="$2" out_dir="$3" cuda="${4:-}"
  local src std status=0
  src="$(mktemp -d)"
  tar -xzf "$sdist" -C "$src" || status=$?
  std="$(mmcv_cxx_std "$py")" || status=$?
  if [ "$status" = 0 ] && [ "$std" != c++17 ]; then
    sed -i "s/-std=c++17/-std=$std/g" "$src"/mmcv-*/setup.py || status=$?
  fi
  local -a build_env=(MMCV_WITH_OPS=1 MAX_JOBS="${MAX_JOBS:-$(nproc)}")
  if [ "$status" = 0 ] && [ "$cuda" = cuda ]; then
    build_env+=(FORCE_CUDA=1 TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-$("$py" -c \
      'import torch; print("%d.%d" % torch.cuda.get_device_capability())')}")
  fi
  # Callers take the wheel's path from stdout (often inside $(...), where `set -e` does not reach): pip's output
  # goes to stderr, and a failure is returned.
  if [ "$status" = 0 ]; then
    mkdir -p "$out_dir"
    env "${build_env[@]}" "$py" -m pip wheel -q --no-deps --no-build-isolation "$src"/mmcv-* -w "$out_dir" >&2 \
      || status=$?
  fi
  rm -rf "$src"
  [ "$status" = 0 ] || return "$status"
  ls "$out_dir"/mmcv-2.1.0-*.whl | head -n1
}
