"""Weights-only unpickling for every checkpoint that mmengine reads in our tools, on every supported torch.

torch < 2.6 unpickles fully by default (``torch.load(weights_only=False)``: a checkpoint can run code), and
mmengine 0.10.7 calls ``torch.load`` without ``weights_only`` in each loader of its ``CheckpointLoader``
(local files, URLs, ``open-mmlab://`` and the other schemes), which ``Runner.resume``/``load_checkpoint``,
``init_cfg=dict(type='Pretrained')`` and mmdet's/mmseg's inferencers all go through.
:func:`load_checkpoints_weights_only` re-registers each of those loaders so that the ``torch.load`` calls it
makes pass ``weights_only=True``. The training checkpoints our runs write load that way on torch 2.1 and
later (``backbones/training_checkpoint.py``).
"""
import contextlib
import functools
import os.path as osp
import pickle
import re
from typing import Callable, Iterator

import torch
from mmengine.runner.checkpoint import CheckpointLoader


@contextlib.contextmanager
def weights_only_torch_load() -> Iterator[None]:
    """Within the block, every ``torch.load`` call unpickles weights-only, whatever ``weights_only`` its
    caller passes (torch.hub passes ``weights_only=False`` by default). Not re-entrant across threads: the
    block swaps ``torch.load`` itself, so that calls made inside mmengine and torch.hub are covered."""
    torch_load = torch.load

    @functools.wraps(torch_load)
    def load(*args, **kwargs):
        kwargs['weights_only'] = True
        return torch_load(*args, **kwargs)

    torch.load = load
    try:
        yield
    finally:
        torch.load = torch_load


def _weights_only_loader(loader: Callable) -> Callable:
    @functools.wraps(loader)  # CheckpointLoader logs the loader's name
    def load(filename, map_location=None):
        with weights_only_torch_load():
            return loader(filename, map_location)

    load.weights_only = True
    return load


def load_checkpoints_weights_only() -> None:
    """Make every scheme of mmengine's ``CheckpointLoader`` (local files, http(s), ``open-mmlab://``, ...)
    unpickle weights-only, in this process. Idempotent."""
    for prefix, loader in list(CheckpointLoader._schemes.items()):
        if not getattr(loader, 'weights_only', False):
            CheckpointLoader.register_scheme(prefix, _weights_only_loader(loader), force=True)


def refused_checkpoint_error(checkpoint: str, err: pickle.UnpicklingError) -> SystemExit:
    """The one ``error:`` line for a ``checkpoint`` that weights-only unpickling refuses (``err``): what it
    holds, and how to keep only its weights and class names if the file is trusted."""
    # What torch refused ("GLOBAL x.y" from torch 2.4 on, "class x.y" before); its message is a page long.
    refused = re.search(r'(?:GLOBAL|class) (\S+)', str(err))
    cause = f' (it holds {refused.group(1)})' if refused else ''
    converted = osp.splitext(checkpoint)[0] + '_weights.pth'
    return SystemExit(
        f'error: torch.load(weights_only=True) refuses {checkpoint}{cause}. If you trust '
        f'the file, keep only its weights and class names: python -c "import torch; c = torch.load({checkpoint!r}, '
        "weights_only=False); torch.save(dict(state_dict=c['state_dict'], meta=dict(dataset_meta=c.get('meta', "
        f"{{}}).get('dataset_meta', {{}}))), {converted!r})\"")
