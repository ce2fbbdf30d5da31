"""``pip install -e .`` into a user's own OpenMMLab environment adds only what the plugin lacks (a CI step).

Run with the python of an environment that has torch, mmcv, mmdet and mmseg (``.ci/run`` uses the oldest
supported stack's venv)::

    python tools/install/user_env_check.py [--extras onnx,tests] [--keep DIR]

1. A throwaway venv is made that sees everything of that environment except what this package brings (timm,
   huggingface_hub, safetensors, the ONNX and pytest tools, this package itself): each other top-level entry of
   its site-packages is linked in. That is the user's environment before ``pip install -e .``, at the cost of a
   few hundred links.
2. ``pip install --dry-run --report`` of ``-e .[EXTRAS]`` there must not list torch, torchvision, numpy or mmcv
   (nor mmengine, mmdet, mmsegmentation: pip would uninstall the linked ones, through the links); nor must
   ``mim install --dry-run --report`` of the same (mim, OpenMMLab's installer, which their install guides put
   in every environment, is pip plus the OpenMMLab packages' ``mim`` extras and mmcv's find-links page).
3. The real ``pip install -e .[EXTRAS]`` into it, then, from a folder outside the repository: a user's config
   with ``custom_imports=dict(imports=['mmdet_plugin'])`` builds ``type='MambaOut'``, torch/numpy/mmcv are the
   versions they were, and the plugin's stack check names the fix for an mmcv without its compiled ops.
4. There, the toy Mask R-CNN and UperNet (``configs/toy``) train a few steps and are tested with mmdet's and
   mmseg's own ``tools/train.py`` and ``tools/test.py``, which print their metrics.

Needs the package index (it installs timm and the rest); exits non-zero with one line on the first failure.
"""
import argparse
import importlib.metadata as metadata
import json
import os
import re
import subprocess
import sys
import sysconfig
import tempfile
import textwrap

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# What the user's environment already has and pip must leave as it is.
KEPT = ('torch', 'torchvision', 'numpy', 'mmcv', 'mmengine', 'mmdet', 'mmsegmentation')
# What this package adds (setup.py's requirements and extras, and itself): left out of the throwaway venv.
ADDED = ('mambaout-openmmlab', 'timm', 'huggingface-hub', 'safetensors', 'ftfy', 'regex', 'onnx', 'onnxruntime',
         'onnxscript', 'onnx-ir', 'pytest', 'pytest-xdist', 'execnet')
# The toy detector and segmentor, trained a few steps and tested by mmdet's and mmseg's own scripts there.
TOY_RUNS = (('mmdet', 'configs/toy/mask_rcnn_mambaout_toy.py', ['train_cfg.max_epochs=1'], 'epoch_1.pth',
             'coco/bbox_mAP'),
            ('mmseg', 'configs/toy/upernet_mambaout_toy.py',
             ['train_cfg.max_iters=2', 'train_cfg.val_interval=2', 'default_hooks.checkpoint.interval=2'],
             'iter_2.pth', 'mIoU'))
# Linked in as well, so pip must not replace them either (it would uninstall through the links).
LINKED_TOOLS = ('pip', 'setuptools')

USER_SCRIPT = textwrap.dedent('''
    import json, sys
    import importlib.metadata as metadata
    from mmengine.config import Config
    from mmdet.registry import MODELS
    cfg = Config.fromfile(sys.argv[1])  # imports custom_imports
    backbone = MODELS.build(cfg.backbone)
    assert type(backbone).__name__ == 'MambaOut', type(backbone)
    sys.modules['mmcv._ext'] = None  # an mmcv whose compiled ops are missing
    from backbones.stack import OpenMMLabStackError, check_stack
    try:
        check_stack('mmdet')
    except OpenMMLabStackError as err:
        message = str(err)
    else:
        raise SystemExit('error: check_stack accepted an mmcv without its compiled ops')
    print(json.dumps({'versions': {name: metadata.version(name) for name in sys.argv[2:]}, 'stack_error': message,
                      'plugin': __import__('mmdet_plugin').__file__}))
''')
USER_CONFIG = "custom_imports = dict(imports=['mmdet_plugin'], allow_failed_imports=False)\n" \
              "backbone = dict(type='MambaOut', arch='tiny', out_indices=(0, 1, 2, 3))\n"


def _normalized(name):
    return name.lower().replace('_', '-')


def view_of_environment(site_packages, view_site_packages):
    """Link each entry of ``site_packages`` into ``view_site_packages`` except those of the ADDED distributions
    (pip and setuptools are linked too); returns how many were linked."""
    left_out = set()
    for dist in metadata.distributions(path=[site_packages]):
        if _normalized(dist.metadata['Name']) in ADDED:
            left_out.update(str(file).split('/')[0] for file in dist.files or ())
            left_out.add(os.path.basename(str(dist._path)))  # noqa: SLF001  (its dist-info folder)
    linked = 0
    for entry in os.listdir(site_packages):
        target = os.path.join(view_site_packages, entry)
        if (entry in left_out or entry.startswith('__editable__') or entry.endswith('.egg-link')
                or entry == 'easy-install.pth' or os.path.exists(target)):
            continue
        os.symlink(os.path.join(site_packages, entry), target)
        linked += 1
    return linked


def fail(message):
    raise SystemExit(f'user_env_check: error: {message}')


def check_would_install(python, installer, target, extras, report_file):
    """``INSTALLER install --dry-run --report`` of ``-e TARGET`` (installer: pip or mim) lists none of the user's
    stack."""
    argv = [python, '-m', installer, 'install', '-q', '--dry-run', '--report', report_file, '-e', target]
    result = subprocess.run(argv, capture_output=True, text=True)
    if result.returncode != 0:
        fail(f'{installer} install --dry-run -e .[{extras}]: {(result.stdout + result.stderr)[-1500:]}')
    with open(report_file) as file:
        to_install = {_normalized(item['metadata']['name']): item['metadata']['version']
                      for item in json.load(file)['install']}
    print(f'[user-env] {installer} install -e .[{extras}] would install: '
          + ', '.join(f'{name} {version}' for name, version in sorted(to_install.items())))
    replaced = sorted(set(to_install) & set(KEPT + LINKED_TOOLS))
    if replaced:
        fail(f'{installer} install -e . would replace {", ".join(f"{n} -> {to_install[n]}" for n in replaced)} '
             'in the user\'s environment: declare them loosely or not at all in setup.py')


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--extras', default='onnx,tests', help='extras to install with the package')
    parser.add_argument('--keep', help='make the throwaway venv here and keep it (default: a temporary folder)')
    args = parser.parse_args(argv)
    before = {name: metadata.version(name) for name in KEPT}
    work = args.keep or tempfile.mkdtemp(prefix='mambaout-user-env-')
    venv = os.path.join(work, 'venv')
    subprocess.run([sys.executable, '-m', 'venv', '--without-pip', venv], check=True)  # pip comes linked in
    python = os.path.join(venv, 'bin', 'python')
    view_site = subprocess.run([python, '-c', 'import sysconfig; print(sysconfig.get_paths()["purelib"])'],
                               check=True, capture_output=True, text=True).stdout.strip()
    linked = view_of_environment(sysconfig.get_paths()['purelib'], view_site)
    print(f'[user-env] {venv}: {linked} entries of {sys.prefix} linked in (without: {", ".join(ADDED)})')

    target = f'{ROOT}[{args.extras}]' if args.extras else ROOT
    pip = [python, '-m', 'pip', 'install', '--disable-pip-version-check', '-q']
    for installer in ('pip', 'mim'):
        check_would_install(python, installer, target, args.extras, os.path.join(work, f'{installer}_report.json'))

    subprocess.run(pip + ['-e', target], check=True)
    user_dir = os.path.join(work, 'user_project')
    os.makedirs(user_dir, exist_ok=True)
    with open(os.path.join(user_dir, 'my_config.py'), 'w') as file:
        file.write(USER_CONFIG)
    env = {key: value for key, value in os.environ.items() if key != 'PYTHONPATH'}
    result = subprocess.run([python, '-c', USER_SCRIPT, 'my_config.py', *KEPT], cwd=user_dir, env=env,
                            capture_output=True, text=True)
    if result.returncode != 0:
        fail(f'the user\'s config with custom_imports does not build MambaOut: {result.stderr.strip()[-600:]}')
    seen = json.loads(result.stdout.strip().splitlines()[-1])
    if seen['versions'] != before:
        fail(f'versions changed by the install: {before} -> {seen["versions"]}')
    if 'pip uninstall -y mmcv' not in seen['stack_error']:
        fail(f'the stack check does not name the fix for a broken mmcv: {seen["stack_error"]}')
    trained = train_and_test_toys(python, user_dir, env)
    print(f'[user-env] ok: custom_imports=[\'mmdet_plugin\'] from {user_dir} built MambaOut '
          f'({seen["plugin"]}); kept {", ".join(f"{n} {v}" for n, v in before.items())}; '
          f'broken mmcv -> "{seen["stack_error"][:100]}..."; {trained}')
    return 0


def train_and_test_toys(python, user_dir, env):
    """Train the toy Mask R-CNN and UperNet a few steps and test them with the libraries' own ``tools/train.py``
    and ``tools/test.py`` (as installed, ``mim``'s copies) in the user's environment; what they printed."""
    subprocess.run([python, os.path.join(ROOT, 'tools', 'misc', 'make_toy_data.py'), '--out',
                    os.path.join(user_dir, 'data', 'toy'), '--num-train', '4', '--num-val', '2', '--size', '64'],
                   check=True, cwd=user_dir, env=env, capture_output=True)
    found = []
    for library, config, options, checkpoint, metric in TOY_RUNS:
        scripts = subprocess.run([python, '-c', f'import {library}, os; print(os.path.dirname({library}.__file__))'],
                                 check=True, capture_output=True, text=True, env=env).stdout.strip()
        work_dir = os.path.join(user_dir, f'work_dirs_{library}')
        steps = ([os.path.join(scripts, '.mim', 'tools', 'train.py'), os.path.join(ROOT, config), '--work-dir',
                  work_dir, '--cfg-options', *options],
                 [os.path.join(scripts, '.mim', 'tools', 'test.py'), os.path.join(ROOT, config),
                  os.path.join(work_dir, checkpoint), '--work-dir', work_dir])
        for argv in steps:
            result = subprocess.run([python, *argv], cwd=user_dir, env=dict(env, OMP_NUM_THREADS='1'),
                                    capture_output=True, text=True)
            if result.returncode != 0:
                fail(f'{library}\'s {os.path.basename(argv[0])} on {config}: {(result.stdout + result.stderr)[-1500:]}')
        value = re.findall(rf'{re.escape(metric)}: (-?\d+\.\d+)', result.stdout + result.stderr)
        if not value:
            fail(f'{library}\'s test.py on {config} printed no {metric}: {(result.stdout + result.stderr)[-1500:]}')
        found.append(f'{library} train.py -> test.py {metric} {value[-1]}')
    return ', '.join(found)


if __name__ == '__main__':
    sys.exit(main())
