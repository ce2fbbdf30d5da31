"""Detects a broken OpenMMLab stack before it fails deep inside an import.

The commonest ways to lose a day with mmdet/mmseg: mmcv installed without its compiled ops (or
``mmcv-lite``), an mmcv newer than mmdet/mmseg accept, or mmcv's ops compiled against another torch.
Each is reported in one message with the command that fixes it.
"""
import importlib
import importlib.metadata as metadata

from packaging.version import Version

FIX = 'bash tools/install/install.sh   (from the MambaOut repository: installs the tested stack and builds mmcv with its ops)'
# What mmdet 3.x and mmseg 1.x assert at import (their mmcv_minimum_version / mmcv_maximum_version).
MMCV_RANGE = ('2.0.0rc4', '2.2.0')
LIBRARY_PACKAGES = {'mmdet': 'mmdet', 'mmseg': 'mmsegmentation'}


class OpenMMLabStackError(ImportError):
    """The installed torch/mmcv/mmdet/mmseg do not work together."""


def _installed(package, version_of):
    try:
        return version_of(package)
    except metadata.PackageNotFoundError:
        return None


def check_stack(library: str, version_of=metadata.version, import_module=importlib.import_module) -> None:
    """Raise :class:`OpenMMLabStackError` if ``library`` ('mmdet' or 'mmseg') cannot work with the installed
    mmcv and torch. ``version_of``/``import_module`` are injectable for tests."""
    package = LIBRARY_PACKAGES[library]
    if _installed(package, version_of) is None:
        raise OpenMMLabStackError(f'{package} is not installed. Fix: {FIX}')
    mmcv_version = _installed('mmcv', version_of)
    if mmcv_version is None:
        lite = ' (mmcv-lite is, but it has no compiled ops: RoIAlign, NMS)' if _installed(
            'mmcv-lite', version_of) else ''
        raise OpenMMLabStackError(f'{library} needs mmcv with its compiled ops, and mmcv is not installed{lite}. '
                                  f'Fix: {FIX}')
    low, high = MMCV_RANGE
    if not Version(low) <= Version(mmcv_version) < Version(high):
        raise OpenMMLabStackError(
            f'mmcv {mmcv_version} is installed, but {package} {version_of(package)} accepts only mmcv>={low},<{high}. '
            f'Fix: pip uninstall -y mmcv && {FIX}')
    try:
        import_module('mmcv._ext')
    except ImportError as err:
        torch_version = version_of('torch')
        if 'undefined symbol' in str(err) or 'symbol' in str(err):
            why = (f'mmcv {mmcv_version}\'s compiled ops were built against another torch than the installed '
                   f'torch {torch_version} ({str(err).splitlines()[0][:160]})')
        else:
            why = f'mmcv {mmcv_version} was installed without its compiled ops (mmcv._ext is missing)'
        raise OpenMMLabStackError(f'{why}; {library} needs them (RoIAlign, NMS). '
                                  f'Fix: pip uninstall -y mmcv && {FIX}') from None
