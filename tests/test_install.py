"""The set-up's decisions (tools/install/): which stacks install.sh accepts, and what it checks and sets on a
machine with an NVIDIA GPU, fed with the outputs of nvidia-smi, nvcc and torch's metadata as they look there."""
import importlib.metadata as metadata
import functools
import json
import os
import subprocess
import sys
import zipfile

import pytest
import torch

from tools.install import cuda_setup

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
INSTALL_SH = os.path.join(ROOT, 'tools', 'install', 'install.sh')

NVIDIA_SMI_12_4 = """\
+-----------------------------------------------------------------------------------------+
| NVIDIA-SMI 550.54.15              Driver Version: 550.54.15      CUDA Version: 12.4     |
|-----------------------------------------+------------------------+----------------------+
"""
NVIDIA_SMI_13_0 = NVIDIA_SMI_12_4.replace('CUDA Version: 12.4', 'CUDA Version: 13.0')
# Requires-Dist lines as torch's wheels on PyPI write them (2.1.2: cu121, 2.14.1: cu130).
TORCH_2_1_2_REQUIRES = ['filelock', 'nvidia-cuda-nvrtc-cu12 (==12.1.105) ; platform_system == "Linux"',
                        'nvidia-cuda-runtime-cu12 (==12.1.105) ; platform_system == "Linux" and '
                        'platform_machine == "x86_64"', 'triton (==2.1.0)']
TORCH_2_14_1_REQUIRES = ['filelock', 'cuda-toolkit[cublas,cudart,cufft,cufile,cupti,curand,cusolver,cusparse,nvjitlink,'
                         'nvrtc,nvtx]==13.0.3; platform_system == "Linux"',
                         'cuda-bindings<14,>=13.0.3; platform_system == "Linux" and python_version < "3.15"',
                         'nvidia-cudnn-cu13==9.24.0.43; platform_system == "Linux"']
NVCC_13_0 = 'nvcc: NVIDIA (R) Cuda compiler driver\nCuda compilation tools, release 13.0, V13.0.88\n'
NVCC_WRAPPER = '#!/bin/sh\nexec /usr/local/cuda-13.0/bin/nvcc "$@"\n'


def test_driver_cuda_is_read_from_nvidia_smi():
    assert cuda_setup.driver_cuda(NVIDIA_SMI_12_4) == (12, 4)
    assert cuda_setup.driver_cuda('NVIDIA-SMI has failed because it could not communicate with the driver') is None


@pytest.mark.parametrize('requires, expected', [(TORCH_2_1_2_REQUIRES, (12, 1)), (TORCH_2_14_1_REQUIRES, (13, 0)),
                                                (['filelock', 'sympy'], None)])
def test_torch_wheel_cuda_is_read_from_its_requirements(requires, expected):
    assert cuda_setup.torch_wheel_cuda(requires) == expected


@pytest.mark.skipif(not torch.version.cuda, reason='the installed torch is a CPU build')
def test_torch_wheel_cuda_of_the_installed_torch_is_its_cuda():
    expected = tuple(int(part) for part in torch.version.cuda.split('.')[:2])
    assert cuda_setup.torch_wheel_cuda(metadata.requires('torch')) == expected


def test_old_driver_gets_one_message_with_its_cuda_and_the_torch_to_choose():
    error = cuda_setup.check_driver((12, 4), '2.14.1', (13, 0))
    assert 'the NVIDIA driver supports CUDA 12.4' in error and 'built for CUDA 13.0' in error
    assert 'TORCH=2.1.2 TORCHVISION=0.16.2' in error
    assert 'no supported torch' in cuda_setup.check_driver((11, 8), '2.1.2', (12, 1))


@pytest.mark.parametrize('driver, torch_cuda', [((13, 0), (13, 0)), ((12, 2), (12, 1)), ((12, 0), (12, 1)),
                                                ((13, 0), (12, 1)), (None, (13, 0)), ((12, 4), None)])
def test_driver_that_runs_the_torch_passes(driver, torch_cuda):
    assert cuda_setup.check_driver(driver, '2.x', torch_cuda) is None


def test_cuda_home_is_the_toolkit_behind_an_nvcc_wrapper_script():
    files = {'/usr/local/bin/nvcc': NVCC_WRAPPER, '/usr/local/cuda-12.4/bin/nvcc': '\x7fELF\x02\x01\x01'}
    real = cuda_setup.real_nvcc('/usr/local/bin/nvcc', files.__getitem__)
    assert real == '/usr/local/cuda-13.0/bin/nvcc'
    assert cuda_setup.cuda_home_of(real) == '/usr/local/cuda-13.0'
    assert cuda_setup.real_nvcc('/usr/local/cuda-12.4/bin/nvcc', files.__getitem__) == '/usr/local/cuda-12.4/bin/nvcc'


@pytest.mark.parametrize('torch_cuda, nvcc, build, said', [
    ((13, 0), (13, 0), True, 'building mmcv\'s CUDA ops with nvcc 13.0'),
    ((13, 0), (13, 2), True, 'for torch\'s CUDA 13.0'),
    ((12, 1), (13, 0), False, 'nvcc is CUDA 13.0 but torch is built for CUDA 12.1'),
    ((13, 0), None, False, 'no nvcc'),
    (None, (13, 0), False, 'CPU build'),
])
def test_cuda_ops_are_built_only_where_nvcc_and_torch_share_the_cuda_major(torch_cuda, nvcc, build, said):
    assert cuda_setup.nvcc_cuda(NVCC_13_0) == (13, 0)
    planned, reason = cuda_setup.cuda_ops_plan(torch_cuda, nvcc)
    assert planned is build and said in reason


def test_cuda_headers_of_torch_pip_packages_are_found(tmp_path):
    for folder, header in [('cu13', 'cusparse.h'), ('cusparse', 'cusparse.h'), ('cublas', 'cublas_v2.h'),
                           ('cudnn', 'cudnn.h')]:
        (tmp_path / 'nvidia' / folder / 'include').mkdir(parents=True)
        (tmp_path / 'nvidia' / folder / 'include' / header).write_text('')
    found = cuda_setup.cuda_include_dirs(str(tmp_path))
    assert found == [str(tmp_path / 'nvidia' / name / 'include') for name in ('cu13', 'cublas', 'cusparse')]


def _fake_nvidia_smi(tmp_path, header):
    bin_dir = tmp_path / 'bin'
    bin_dir.mkdir()
    (bin_dir / 'nvidia-smi').write_text(f"#!/bin/sh\ncat <<'EOF'\n{header}EOF\n")
    (bin_dir / 'nvidia-smi').chmod(0o755)
    return dict(os.environ, PATH=f'{bin_dir}{os.pathsep}{os.environ["PATH"]}')


@pytest.mark.parametrize('header, returncode', [(NVIDIA_SMI_12_4, 2), (NVIDIA_SMI_13_0, 0)])
def test_driver_check_command_reads_nvidia_smi_and_pips_report(tmp_path, header, returncode):
    report = tmp_path / 'report.json'
    report.write_text(json.dumps({'install': [{'metadata': {'name': 'torch', 'version': '2.14.1',
                                                            'requires_dist': TORCH_2_14_1_REQUIRES}}]}))
    result = subprocess.run([sys.executable, 'tools/install/cuda_setup.py', 'driver-check', '--torch', '2.14.1',
                             '--report', str(report)], cwd=ROOT, env=_fake_nvidia_smi(tmp_path, header),
                            capture_output=True, text=True)
    assert result.returncode == returncode, result.stderr
    if returncode:
        assert result.stderr.strip().splitlines() == [
            'error: the NVIDIA driver supports CUDA 12.4 (nvidia-smi), but torch 2.14.1 from PyPI is built for CUDA '
            '13.0: update the driver, or choose a torch built for CUDA 12: TORCH=2.1.2 TORCHVISION=0.16.2 (CUDA 12.1)']


def _fake_python(tmp_path, version):
    python = tmp_path / f'python{version}'
    python.write_text(f'#!/bin/sh\necho {version}\n')
    python.chmod(0o755)
    return str(python)


def _install_env(**variables):
    """This environment without the stack's variables that a ``make TORCH=... TORCHVISION=...`` running the tests
    exports to them, plus ``variables``."""
    env = {key: value for key, value in os.environ.items() if key not in ('PYTHON_BIN', 'TORCH', 'TORCHVISION', 'VENV')}
    return dict(env, **variables)


@pytest.mark.parametrize('stack, said', [
    (dict(TORCH='2.0.1'), 'TORCH=2.0.1 is not supported: torch 2.1-2.14 are'),
    (dict(TORCH='2.15.0'), 'TORCH=2.15.0 is not supported'),
    (dict(TORCH='2.1'), 'TORCH=2.1: give a full torch release'),
    (dict(TORCH='2.1.2', TORCHVISION='0.17.0'), 'torch 2.1 needs torchvision 0.16.x'),
    (dict(PYTHON_BIN='3.13'), 'is Python 3.13: the supported ones are 3.10-3.12'),
    (dict(PYTHON_BIN='3.9'), 'is Python 3.9: the supported ones are 3.10-3.12'),
    (dict(PYTHON_BIN='3.12', TORCH='2.1.2'), 'Python 3.12 needs torch >= 2.2'),
    (dict(PYTHON_BIN='/nonexistent/python3.10'), 'does not run here'),
])
def test_unsupported_stack_is_one_error_before_anything_is_made(tmp_path, stack, said):
    env = _install_env(VENV=str(tmp_path / 'venv'), PYTHON_BIN=_fake_python(tmp_path, '3.11'))
    for key, value in stack.items():
        env[key] = _fake_python(tmp_path, value) if key == 'PYTHON_BIN' and '/' not in value else value
    result = subprocess.run(['bash', INSTALL_SH], env=env, capture_output=True, text=True)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith('install.sh: error: ') and said in lines[0], lines
    assert not (tmp_path / 'venv').exists()


def test_venv_of_another_python_is_one_error(tmp_path):
    venv = tmp_path / 'venv'
    (venv / 'bin').mkdir(parents=True)
    os.symlink(_fake_python(tmp_path, '3.11'), venv / 'bin' / 'python')
    env = _install_env(VENV=str(venv), PYTHON_BIN=_fake_python(tmp_path, '3.10'), TORCH='2.1.2')
    result = subprocess.run(['bash', INSTALL_SH], env=env, capture_output=True, text=True)
    assert result.returncode == 2
    assert 'is a Python 3.11 venv, but PYTHON_BIN is Python 3.10: set VENV=' in result.stderr


@pytest.mark.slow
def test_old_stack_selection_of_the_makefile_collects_tests():
    """`make test-old-stack`'s slow selection names tests that exist (a renamed test would drop out silently)."""
    # Without the variables of a make that runs this test (MAKEFLAGS passes them down, PYTEST_ARGS included).
    env = {key: value for key, value in os.environ.items() if key not in ('MAKEFLAGS', 'MAKELEVEL', 'MFLAGS')}
    dry_run = subprocess.run(['make', '-n', 'test-old-stack-slow', 'VENV=.venv-none', 'PYTEST_ARGS='], cwd=ROOT,
                             capture_output=True, text=True, check=True, env=env).stdout
    selection = [arg for arg in dry_run.split('-m pytest ')[1].split(' ;')[0].split() if arg.startswith('tests/')]
    assert 'tests/test_stock_scripts.py::test_stock_mmdet_train_test_and_resume' in selection
    collected = subprocess.run([sys.executable, '-m', 'pytest', '--collect-only', '-q', *selection], cwd=ROOT,
                               capture_output=True, text=True)
    assert collected.returncode == 0, collected.stdout[-2000:]
    assert f'{len(selection)} tests collected' in collected.stdout, collected.stdout[-2000:]


def _mmcv_wheel(path, so_bytes):
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, 'w') as archive:
        archive.writestr('mmcv/_ext.cpython-311-x86_64-linux-gnu.so', so_bytes)
    return str(path)


def test_prebuilt_mmcv_wheel_must_match_python_torch_and_ops(tmp_path):
    default = _mmcv_wheel(tmp_path / 'mmcv-2.1.0-cp311-cp311-linux_x86_64.whl', b'\x7fELF libc10.so')
    old = _mmcv_wheel(tmp_path / 'torch-2.1.2' / 'mmcv-2.1.0-cp310-cp310-linux_x86_64.whl', b'\x7fELF libc10.so')
    cuda = _mmcv_wheel(tmp_path / 'torch-2.11.0' / 'mmcv-2.1.0-cp312-cp312-linux_x86_64.whl',
                       b'\x7fELF libc10.so libc10_cuda.so libcudart.so.13')
    assert not cuda_setup.wheel_has_cuda_ops(default) and cuda_setup.wheel_has_cuda_ops(cuda)
    find = functools.partial(cuda_setup.matching_mmcv_wheel, str(tmp_path), default_torch='2.14.1')
    assert find('cp311', '2.14.1', cuda_ops=False) == default
    assert find('cp310', '2.1.2+cu121', cuda_ops=False) == old
    assert find('cp311', '2.1.2', cuda_ops=False) is None  # the top-level cp311 wheel is for torch 2.14.1 only
    assert find('cp310', '2.14.1', cuda_ops=False) is None
    assert find('cp311', '2.14.1', cuda_ops=True) is None  # CPU ops only
    assert find('cp312', '2.11.0+cu130', cuda_ops=True) == cuda
