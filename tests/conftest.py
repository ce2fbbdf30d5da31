"""Shared test helpers: models with random weights, checkpoints written in the official and timm layouts, and
untrained detector/segmentor checkpoints.

Nothing is downloaded: every checkpoint is made here from random weights.
"""
import atexit
import collections
import os
import re
import shutil
import socket
import tempfile

# Tests never download. Empty caches of their own and the hub's offline mode (read when huggingface_hub is
# imported, so set before anything imports it): a stray hub lookup fails at once instead of after the hub's
# retries, and no test passes because this machine's caches happen to hold real weights. Subprocesses inherit it.
_CACHES = tempfile.mkdtemp(prefix='mambaout-test-caches-')
atexit.register(shutil.rmtree, _CACHES, ignore_errors=True)
os.environ.update(HF_HUB_OFFLINE='1', HF_HOME=os.path.join(_CACHES, 'huggingface'),
                  TORCH_HOME=os.path.join(_CACHES, 'torch'))

import pytest  # noqa: E402
import torch  # noqa: E402

# an untrained detector/segmentor checkpoint (random init, class names in its meta), shared with tools/misc/demo.py
from mambaout_tools.models import save_untrained_checkpoint as untrained_checkpoint  # noqa: E402,F401

# The longest test files (several minutes each on 2 cores), run first: `make test`'s workers (pytest-xdist,
# a file each at a time, taken in collection order: the Makefile's --no-loadscope-reorder) then start with them
# and end together, instead of one worker starting a 15-minute file when the rest is done. The other files
# follow by their number of selected tests, most first (xdist's own order), so short files fill the end.
LONGEST_FILES_FIRST = ('test_toy_training.py', 'test_stock_scripts.py', 'test_gated_cnn_kernel.py',
                       'test_gpu_report.py', 'test_toy_segmentation.py', 'test_custom_dataset.py', 'test_launch.py',
                       'test_flops_and_results.py')


def pytest_collection_modifyitems(items):
    files = [os.path.basename(str(item.fspath)) for item in items]
    tests_per_file = collections.Counter(files)

    def rank(index):
        name = files[index]
        longest = LONGEST_FILES_FIRST.index(name) if name in LONGEST_FILES_FIRST else len(LONGEST_FILES_FIRST)
        return longest, -tests_per_file[name], name

    order = sorted(range(len(items)), key=rank)  # stable: the order within a file stays
    items[:] = [items[index] for index in order]


# Official release layout <- timm layout (the inverse of timm's checkpoint_filter_fn).
_TIMM_TO_OFFICIAL = (
    (r'^stem\.', 'downsample_layers.0.'),
    (r'^stages\.(\d+)\.downsample\.', r'downsample_layers.\1.'),
    (r'^stages\.(\d+)\.blocks\.(\d+)\.', r'stages.\1.\2.'),
    (r'^head\.norm\.', 'norm.'),
    (r'^head\.pre_logits\.fc\.', 'head.fc1.'),
    (r'^head\.pre_logits\.norm\.', 'head.norm.'),
    (r'^head\.fc\.', 'head.fc2.'),
)


def free_port():
    """A TCP port on 127.0.0.1 that nothing listens on now (a launcher's PORT, a URL that refuses)."""
    with socket.socket() as probe:
        probe.bind(('127.0.0.1', 0))
        return probe.getsockname()[1]


def tool_env(**variables):
    """The environment for a tool run as a process: this repository first on PYTHONPATH (the packages of a
    PYTHONPATH already set stay reachable after it), plus ``variables``."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    path = os.pathsep.join(filter(None, [root, os.environ.get('PYTHONPATH')]))
    return dict(os.environ, PYTHONPATH=path, **variables)


def timm_to_official(state):
    out = {}
    for key, value in state.items():
        for pattern, repl in _TIMM_TO_OFFICIAL:
            new = re.sub(pattern, repl, key)
            if new != key:
                key = new
                break
        out[key] = value
    return out


def randomize_(model, seed=0):
    """Random weights everywhere, norms and LayerScale included, so that a wrong mapping shows."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            noise = torch.randn(param.shape, generator=gen)
            if name.endswith('gamma') or ('norm' in name and name.endswith('weight')):
                param.copy_(1. + 0.1 * noise if not name.endswith('gamma') else 0.5 + 0.1 * noise)
            else:
                param.copy_(0.05 * noise)
    return model


@pytest.fixture
def timm_model():
    timm = pytest.importorskip('timm')

    def make(arch, seed=0):
        return randomize_(timm.create_model(f'mambaout_{arch}', pretrained=False), seed).eval()

    return make

