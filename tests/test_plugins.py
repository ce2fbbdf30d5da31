"""Registration into mmdet and mmseg, each without the other, and the broken-stack diagnosis."""
import importlib
import importlib.metadata as metadata
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from backbones.stack import OpenMMLabStackError, check_stack

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_python(code):
    return subprocess.run([sys.executable, '-c', textwrap.dedent(code)], cwd=ROOT, capture_output=True, text=True)


@pytest.mark.parametrize('plugin, library', [('mmdet_plugin', 'mmdet'), ('mmseg_plugin', 'mmseg')])
def test_plugin_registers_backbone_in_its_library(plugin, library):
    # In this process: importing the plugin is what registers (the library's registry is global).
    pytest.importorskip(library)
    registry = importlib.import_module(f'{library}.registry')
    importlib.import_module(plugin)
    model = registry.MODELS.build(dict(type='MambaOut', arch='femto', out_indices=(1, 3), drop_path_rate=0.1))
    outs = model(torch.randn(1, 3, 64, 64))
    assert type(model).__module__ == 'backbones.mambaout'
    assert [tuple(o.shape) for o in outs] == [(1, 96, 8, 8), (1, 288, 2, 2)]


@pytest.mark.parametrize('plugin, absent', [('mmdet_plugin', 'mmseg'), ('mmseg_plugin', 'mmdet')])
def test_plugin_works_without_the_other_library(plugin, absent):
    result = run_python(f"""
        import sys
        class Block:
            def find_spec(self, name, path=None, target=None):
                if name == '{absent}' or name.startswith('{absent}.'):
                    raise ImportError('{absent} is not installed (blocked by the test)')
        sys.meta_path.insert(0, Block())
        import {plugin}
        assert '{absent}' not in sys.modules
        print('registered', {plugin}.MambaOut.__name__)
    """)
    assert result.returncode == 0, result.stderr
    assert 'registered MambaOut' in result.stdout


def test_plugins_contain_no_model_code():
    for plugin in ('mmdet_plugin', 'mmseg_plugin'):
        source = open(os.path.join(ROOT, plugin, '__init__.py')).read()
        assert 'nn.Module' not in source and 'def forward' not in source and 'class ' not in source


# --- the broken-stack diagnosis, with the installed versions and modules replaced by fakes ---

def fake_versions(**versions):
    def version_of(package):
        key = package.replace('-', '_')
        if key not in versions:
            raise metadata.PackageNotFoundError(package)
        return versions[key]
    return version_of


def importer(error=None):
    def import_module(name):
        if error:
            raise ImportError(error)
    return import_module


GOOD = dict(torch='2.14.1', mmcv='2.1.0', mmdet='3.3.0', mmsegmentation='1.2.2')


@pytest.mark.parametrize('versions, import_error, match', [
    (dict(GOOD, mmcv=None), None, r'mmdet needs mmcv with its compiled ops, and mmcv is not installed\. Fix: bash tools/install/install.sh'),
    (dict(GOOD, mmcv=None, mmcv_lite='2.1.0'), None, r'mmcv-lite is, but it has no compiled ops'),
    (dict(GOOD, mmcv='2.2.0'), None, r'mmcv 2\.2\.0 is installed, but mmdet 3\.3\.0 accepts only mmcv>=2\.0\.0rc4,<2\.2\.0\. Fix: pip uninstall -y mmcv'),
    (dict(GOOD, mmcv='1.7.2'), None, r'mmcv 1\.7\.2 is installed'),
    (GOOD, "No module named 'mmcv._ext'", r'mmcv 2\.1\.0 was installed without its compiled ops.*Fix: pip uninstall -y mmcv && bash tools/install/install.sh'),
    (GOOD, '_ext.cpython-311-x86_64-linux-gnu.so: undefined symbol: _ZN3c104cuda9SetDevice',
     r"built against another torch than the installed torch 2\.14\.1 \(.*undefined symbol"),
    (dict(GOOD, mmdet=None), None, r'mmdet is not installed\. Fix:'),
])
def test_broken_stack_is_diagnosed_in_one_message(versions, import_error, match):
    versions = {k: v for k, v in versions.items() if v is not None}
    with pytest.raises(OpenMMLabStackError, match=match) as info:
        check_stack('mmdet', version_of=fake_versions(**versions), import_module=importer(import_error))
    assert '\n' not in str(info.value)
    # no chained traceback from deep inside the import machinery
    assert info.value.__cause__ is None
    assert info.value.__context__ is None or info.value.__suppress_context__


def test_mmseg_check_names_mmsegmentation():
    with pytest.raises(OpenMMLabStackError, match=r'mmsegmentation 1\.2\.2 accepts only'):
        check_stack('mmseg', version_of=fake_versions(**dict(GOOD, mmcv='2.2.0')), import_module=importer())


def test_good_stack_passes():
    check_stack('mmdet', version_of=fake_versions(**GOOD), import_module=importer())


def test_plugin_import_on_mmcv_without_ops_says_what_to_do():
    result = run_python("""
        import sys
        class Block:
            def find_spec(self, name, path=None, target=None):
                if name == 'mmcv._ext':
                    raise ImportError("No module named 'mmcv._ext'")
        sys.meta_path.insert(0, Block())
        import mmdet_plugin
    """)
    assert result.returncode != 0
    last_line = result.stderr.strip().splitlines()[-1]
    assert last_line.startswith('backbones.stack.OpenMMLabStackError: mmcv 2.1.0 was installed without its compiled ops')
    assert 'tools/install/install.sh' in last_line
