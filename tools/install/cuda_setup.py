"""The GPU side of the set-up (tools/install/install.sh): what to check and what to set before torch and mmcv.

The decisions, each a pure function of what ``nvidia-smi``, ``nvcc`` and torch's package metadata print, so
that they are tested on a machine without a GPU (tests/test_install.py):

- whether the NVIDIA driver can run the CUDA that the chosen torch wheel was built with
  (:func:`check_driver`, before torch is downloaded);
- whether mmcv's CUDA ops can be compiled: nvcc's CUDA major must equal torch's (:func:`cuda_ops_plan`);
- which prebuilt mmcv wheel fits this Python and torch (:func:`matching_mmcv_wheel`);
- where the toolkit and its headers are: ``CUDA_HOME`` from the real ``nvcc`` behind a wrapper script
  (:func:`real_nvcc`), ``CPATH`` from the headers torch's ``nvidia-*`` pip packages ship (:func:`cuda_include_dirs`).

Command line (stdlib only: it runs before torch is installed)::

    python cuda_setup.py driver-check --torch 2.14.1 --report pip-report.json
    python cuda_setup.py build-env              # with the venv's python: prints shell `export` lines
    python cuda_setup.py gpu-ops-check          # with the venv's python: runs mmcv's nms and RoIAlign on the GPU
    python cuda_setup.py find-wheel --dir ../shared/wheels --python-tag cp311 --torch 2.14.1 [--ops cuda]
"""
import argparse
import glob
import json
import os
import re
import shutil
import subprocess
import sys
import zipfile

# The stacks that CI installs (TORCH=, TORCHVISION=, the CUDA of torch's PyPI wheel): what a message may point to.
TESTED_TORCH = (('2.14.1', '0.29.1', (13, 0)), ('2.1.2', '0.16.2', (12, 1)))


def _version(text):
    major, minor = text.split('.')[:2]
    return int(major), int(minor)


def _dotted(version):
    return '%d.%d' % version


def driver_cuda(nvidia_smi_output):
    """The highest CUDA version the driver supports, from ``nvidia-smi``'s header ("CUDA Version: 13.0");
    None when the output has no such field."""
    match = re.search(r'CUDA Version\s*:\s*(\d+)\.(\d+)', nvidia_smi_output)
    return (int(match.group(1)), int(match.group(2))) if match else None


def torch_wheel_cuda(requires_dist):
    """The CUDA that a torch wheel was built with, from its ``Requires-Dist`` lines: torch < 2.10 names
    ``nvidia-cuda-runtime-cu12 (==12.1.105)``, newer wheels ``cuda-toolkit[...]==13.0.3`` or
    ``nvidia-cuda-runtime==13.0.96``. None for a CPU-only wheel (no CUDA runtime among its requirements)."""
    for requirement in requires_dist:
        match = re.match(r'\s*(?:nvidia-cuda-runtime(?:-cu\d+)?|cuda-toolkit)\b[^=;]*==\s*(\d+)\.(\d+)',
                         requirement)
        if match:
            return int(match.group(1)), int(match.group(2))
    return None


def check_driver(driver, torch_version, torch_cuda):
    """None if a driver supporting CUDA ``driver`` runs a torch built for ``torch_cuda``, else the one-line error.

    CUDA's minor-version compatibility lets a driver of the same major run a newer minor's runtime, so the
    majors decide. The error names the driver's CUDA and the tested TORCH= that fits it."""
    if driver is None or torch_cuda is None or driver[0] >= torch_cuda[0]:
        return None
    fitting = [(torch, vision, cuda) for torch, vision, cuda in TESTED_TORCH if cuda[0] <= driver[0]]
    if fitting:
        torch, vision, cuda = fitting[0]
        choice = (f'or choose a torch built for CUDA {driver[0]}: TORCH={torch} TORCHVISION={vision} '
                  f'(CUDA {_dotted(cuda)})')
    else:
        choice = ('no supported torch runs on it (the oldest, 2.1, needs CUDA 12)')
    return (f'the NVIDIA driver supports CUDA {_dotted(driver)} (nvidia-smi), but torch {torch_version} from PyPI '
            f'is built for CUDA {_dotted(torch_cuda)}: update the driver, {choice}')


def real_nvcc(nvcc_path, read_text):
    """The compiler behind ``nvcc_path``: the path itself, or the nvcc that a wrapper shell script ``exec``s
    (as ``exec /usr/local/cuda-13.0/bin/nvcc "$@"``). ``read_text(path)`` returns the file's first bytes as text.

    torch guesses ``CUDA_HOME`` as the parent of the ``nvcc`` found on PATH, which for a wrapper in
    /usr/local/bin is /usr/local: no CUDA headers or libraries there."""
    head = read_text(nvcc_path)
    if not head.startswith('#!'):
        return nvcc_path
    match = re.search(r'(?m)^\s*exec\s+"?(/[^\s"]*/nvcc)\b', head)
    return match.group(1) if match else nvcc_path


def cuda_home_of(nvcc_path):
    """The toolkit folder of a real nvcc (``<CUDA_HOME>/bin/nvcc``)."""
    return os.path.dirname(os.path.dirname(nvcc_path))


def nvcc_cuda(nvcc_version_output):
    """The CUDA version of ``nvcc --version`` ("Cuda compilation tools, release 13.0, V13.0.88"), or None."""
    match = re.search(r'release (\d+)\.(\d+)', nvcc_version_output)
    return (int(match.group(1)), int(match.group(2))) if match else None


def cuda_ops_plan(torch_cuda, nvcc):
    """(build_cuda_ops, reason): mmcv's CUDA ops are built only when nvcc's CUDA major equals torch's
    (a CUDA 12 nvcc cannot build against torch's CUDA 13 headers, and the reverse links a runtime torch
    does not load); the reason is said before a build of 10 minutes or more."""
    if torch_cuda is None:
        return False, 'torch is a CPU build: mmcv gets its CPU ops only'
    if nvcc is None:
        return False, (f'no nvcc (CUDA toolkit) found: mmcv gets its CPU ops only; its CUDA ops (nms, RoIAlign on '
                       f'the GPU) need a CUDA {torch_cuda[0]}.x toolkit (set CUDA_HOME or put nvcc on PATH)')
    if nvcc[0] != torch_cuda[0]:
        return False, (f'nvcc is CUDA {_dotted(nvcc)} but torch is built for CUDA {_dotted(torch_cuda)}: mmcv gets its '
                       f'CPU ops only; its CUDA ops need a CUDA {torch_cuda[0]}.x toolkit (CUDA_HOME)')
    return True, f'building mmcv\'s CUDA ops with nvcc {_dotted(nvcc)} for torch\'s CUDA {_dotted(torch_cuda)}'


def cuda_include_dirs(site_packages, exists=os.path.isfile):
    """The include folders of torch's ``nvidia-*`` pip packages under ``site_packages`` that hold CUDA library
    headers (``nvidia/cu13/include`` for torch >= 2.10, ``nvidia/cusparse/include`` ... before): a minimal
    toolkit lacks ``cusparse.h`` and ``cublas_v2.h``, which torch's headers include."""
    found = []
    for include in sorted(glob.glob(os.path.join(site_packages, 'nvidia', '*', 'include'))):
        if any(exists(os.path.join(include, header)) for header in ('cusparse.h', 'cublas_v2.h', 'cublas_api.h')):
            found.append(include)
    return found


def wheel_has_cuda_ops(wheel):
    """Whether an mmcv wheel's compiled ops (``mmcv/_ext*.so``) were built with CUDA: they then load
    torch's CUDA libraries (``libc10_cuda.so``, ``libcudart``)."""
    with zipfile.ZipFile(wheel) as archive:
        for name in archive.namelist():
            if name.startswith('mmcv/_ext') and name.endswith('.so'):
                data = archive.read(name)
                return b'libc10_cuda.so' in data or b'libcudart' in data
    return False


def matching_mmcv_wheel(wheel_dir, python_tag, torch_version, default_torch, cuda_ops, has_cuda_ops=wheel_has_cuda_ops):
    """The prebuilt mmcv 2.1.0 wheel in ``wheel_dir`` for this Python (``cp311``) and torch, or None.

    A wheel is only valid beside the torch it was built against: ``<wheel_dir>/torch-<version>/`` holds those for
    ``torch_version`` (a local tag such as ``+cu130`` is ignored); ``<wheel_dir>/`` itself those for
    ``default_torch``. With ``cuda_ops`` only a wheel with CUDA ops is taken."""
    torch_version = torch_version.split('+')[0]
    folders = [os.path.join(wheel_dir, f'torch-{torch_version}')]
    if torch_version == default_torch:
        folders.append(wheel_dir)
    for folder in folders:
        for wheel in sorted(glob.glob(os.path.join(folder, f'mmcv-2.1.0-{python_tag}-*.whl'))):
            if not cuda_ops or has_cuda_ops(wheel):
                return wheel
    return None


def _read_head(path):
    with open(path, 'rb') as file:
        return file.read(4096).decode('utf-8', 'replace')


def _run(command):
    try:
        return subprocess.run(command, capture_output=True, text=True, check=False).stdout
    except OSError:
        return ''


def _driver_check(args):
    if shutil.which('nvidia-smi') is None:
        print('[install] no NVIDIA GPU (nvidia-smi not found): CPU set-up')
        return 0
    driver = driver_cuda(_run(['nvidia-smi']))
    with open(args.report) as file:
        report = json.load(file)
    torch_cuda = None
    for item in report.get('install', []):
        if item['metadata']['name'].lower() == 'torch':
            torch_cuda = torch_wheel_cuda(item['metadata'].get('requires_dist', []))
    error = check_driver(driver, args.torch, torch_cuda)
    if error:
        print(f'error: {error}', file=sys.stderr)
        return 2
    cuda = 'CPU-only' if torch_cuda is None else f'built for CUDA {_dotted(torch_cuda)}'
    seen = 'unknown' if driver is None else _dotted(driver)
    print(f'[install] NVIDIA driver supports CUDA {seen}; torch {args.torch} is {cuda}: ok')
    return 0


def _build_env(_args):
    """Shell lines for mmcv's build: FORCE_CUDA, CUDA_HOME and CPATH, or CPU ops with the reason."""
    import sysconfig

    import torch  # the venv's torch, installed by now

    torch_cuda = _version(torch.version.cuda) if torch.version.cuda else None
    cuda_home = os.environ.get('CUDA_HOME')
    nvcc_path = os.path.join(cuda_home, 'bin', 'nvcc') if cuda_home else shutil.which('nvcc')
    nvcc = None
    if nvcc_path and os.path.exists(nvcc_path):
        nvcc_path = real_nvcc(nvcc_path, _read_head)
        nvcc = nvcc_cuda(_run([nvcc_path, '--version']))
    if shutil.which('nvidia-smi') is None or not torch.cuda.is_available():
        print('echo "[install] no usable NVIDIA GPU: mmcv gets its CPU ops"')
        return 0
    build, reason = cuda_ops_plan(torch_cuda, nvcc)
    print(f'echo "[install] {reason}"')
    if build:
        includes = cuda_include_dirs(sysconfig.get_paths()['purelib'])
        cpath = ':'.join(includes + ([os.environ['CPATH']] if os.environ.get('CPATH') else []))
        print(f'export MMCV_CUDA=cuda CUDA_HOME={cuda_home_of(nvcc_path)}')
        if cpath:
            print(f'export CPATH={cpath}')
    return 0


def _gpu_ops_check(_args):
    """nms and RoIAlign from mmcv's compiled ops on the GPU, compared with the same ops on CPU."""
    import torch
    from mmcv.ops import RoIAlign, nms

    if not torch.cuda.is_available():
        print('[install] no usable NVIDIA GPU: the GPU ops check does not apply')
        return 0
    boxes = torch.tensor([[0., 0., 10., 10.], [1., 1., 11., 11.], [20., 20., 30., 30.]])
    scores = torch.tensor([0.9, 0.8, 0.7])
    features = torch.arange(2 * 3 * 16 * 16, dtype=torch.float32).reshape(2, 3, 16, 16)
    rois = torch.tensor([[0., 1., 1., 9., 9.], [1., 0., 0., 15., 15.]])
    roi_align = RoIAlign((4, 4), spatial_scale=1.0, sampling_ratio=2, aligned=True)
    try:
        _, keep = nms(boxes.cuda(), scores.cuda(), iou_threshold=0.5)
        pooled = roi_align(features.cuda(), rois.cuda())
    except RuntimeError as err:
        print(f'error: mmcv\'s ops do not run on the GPU ({str(err).splitlines()[0][:160]}): mmcv was built without '
              'its CUDA ops; install a CUDA toolkit whose major equals torch.version.cuda\'s, then '
              'rm -rf "$MMCV_BUILD_DIR" and run tools/install/install.sh again', file=sys.stderr)
        return 2
    if keep.cpu().tolist() != nms(boxes, scores, iou_threshold=0.5)[1].tolist() or not torch.allclose(
            pooled.cpu(), roi_align(features, rois), atol=1e-4):
        print('error: mmcv\'s nms/RoIAlign give other results on the GPU than on the CPU', file=sys.stderr)
        return 2
    print(f'[install] ok: mmcv.ops.nms and RoIAlign run on {torch.cuda.get_device_name()}')
    return 0


def _find_wheel(args):
    wheel = matching_mmcv_wheel(args.dir, args.python_tag, args.torch, args.default_torch, args.ops == 'cuda')
    if wheel:
        print(wheel)
    return 0


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    commands = parser.add_subparsers(dest='command', required=True)
    driver = commands.add_parser('driver-check', help='can the NVIDIA driver run the chosen torch? (before installing)')
    driver.add_argument('--torch', required=True, help='the torch version to install')
    driver.add_argument('--report', required=True, help='`pip install --dry-run --report` JSON of that torch')
    commands.add_parser('build-env', help='shell lines that set up mmcv\'s CUDA build')
    commands.add_parser('gpu-ops-check', help='run mmcv\'s nms and RoIAlign on the GPU')
    find = commands.add_parser('find-wheel', help='print the prebuilt mmcv wheel that fits (nothing if none)')
    find.add_argument('--dir', required=True, help='wheel folder (../shared/wheels)')
    find.add_argument('--python-tag', required=True, help='cp310, cp311, ...')
    find.add_argument('--torch', required=True, help='the installed torch version')
    find.add_argument('--default-torch', default=TESTED_TORCH[0][0], help='what the wheels at the top were built against')
    find.add_argument('--ops', choices=('cpu', 'cuda'), default='cpu', help='cuda: only a wheel with CUDA ops')
    args = parser.parse_args(argv)
    return {'driver-check': _driver_check, 'build-env': _build_env, 'gpu-ops-check': _gpu_ops_check,
            'find-wheel': _find_wheel}[args.command](args)


if __name__ == '__main__':
    sys.exit(main())
