"""Reading MambaOut checkpoints: the official release, timm's, and mmdet/mmseg ones.

Two key layouts exist. The backbone uses timm's (``stem``, ``stages.i.downsample``,
``stages.i.blocks.j``); the official release's (``downsample_layers.0`` = stem,
``downsample_layers.i``, ``stages.i.j``) is converted here and nowhere else.

Files are read with weights-only unpickling (or as ``.safetensors``): a checkpoint from the internet
cannot run code while it loads.
"""
import logging
import os
import re
from collections import OrderedDict
from typing import Dict, Optional

import torch

# Keys of the classification model that a detection/segmentation backbone does not have.
_CLASSIFIER_KEY = re.compile(r'^(head|norm)\.')
_WRAPPER_KEYS = ('state_dict', 'model', 'module')
_SHOWN_KEYS = 8


class CheckpointMismatchError(ValueError):
    """A checkpoint does not fit the MambaOut it is loaded into."""


def read_checkpoint(path_or_url: str) -> dict:
    """Read a ``.pth``/``.pt``/``.bin`` (weights-only unpickling) or ``.safetensors`` file, local or http(s)."""
    if path_or_url.startswith(('http://', 'https://')):
        hub_dir = os.path.join(torch.hub.get_dir(), 'checkpoints')
        path = os.path.join(hub_dir, os.path.basename(path_or_url.split('?')[0]))
        if not os.path.exists(path):
            os.makedirs(hub_dir, exist_ok=True)
            torch.hub.download_url_to_file(path_or_url, path)
    else:
        path = os.path.expanduser(path_or_url)
        if not os.path.isfile(path):
            raise FileNotFoundError(f'MambaOut checkpoint not found: {path_or_url!r}. Give a local file or an '
                                    'http(s) URL of an official (mambaout_*.pth) or timm checkpoint.')
    if path.endswith('.safetensors'):
        from safetensors.torch import load_file
        return load_file(path, device='cpu')
    try:
        return torch.load(path, map_location='cpu', weights_only=True)
    except Exception as err:  # pickle errors come in many types; say what happened in one line
        raise CheckpointMismatchError(
            f'Could not read {path_or_url!r} with weights-only unpickling ({type(err).__name__}: '
            f'{str(err).splitlines()[0] if str(err) else ""}). Only plain tensors are accepted; if you trust the '
            'file, re-save its state dict with tools/convert_checkpoint.py.') from None


def unwrap_state_dict(checkpoint: dict, prefix: Optional[str] = None) -> Dict[str, torch.Tensor]:
    """Take the backbone's tensors out of a raw, wrapped (``state_dict``/``model``) or detector/segmentor
    checkpoint. ``prefix`` (e.g. ``'backbone.'``) selects a sub-module; a ``backbone.`` prefix is
    found by itself."""
    state = checkpoint
    while isinstance(state, dict):
        wrapper = next((k for k in _WRAPPER_KEYS if isinstance(state.get(k), dict)), None)
        if wrapper is None:
            break
        state = state[wrapper]
    if not isinstance(state, dict) or not state:
        raise CheckpointMismatchError('The checkpoint holds no state dict (expected a dict of tensors, possibly '
                                      f'under {list(_WRAPPER_KEYS)}).')
    state = OrderedDict((k[len('module.'):] if k.startswith('module.') else k, v) for k, v in state.items())
    if prefix is None and any(k.startswith('backbone.') for k in state):
        prefix = 'backbone.'
    if prefix:
        state = OrderedDict((k[len(prefix):], v) for k, v in state.items() if k.startswith(prefix))
        if not state:
            raise CheckpointMismatchError(f'No key of the checkpoint starts with prefix {prefix!r}.')
    return state


def official_to_timm(state: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """Rename official-release keys to the timm layout the backbone uses (a no-op on timm keys)."""
    if not any(k.startswith('downsample_layers.') for k in state):
        return state
    converted = OrderedDict()
    for key, value in state.items():
        key = re.sub(r'^downsample_layers\.0\.', 'stem.', key)
        key = re.sub(r'^downsample_layers\.(\d+)\.', r'stages.\1.downsample.', key)
        key = re.sub(r'^stages\.(\d+)\.(\d+)\.', r'stages.\1.blocks.\2.', key)
        converted[key] = value
    return converted


def to_backbone_state_dict(checkpoint: dict, prefix: Optional[str] = None):
    """Native (timm-layout) backbone keys of any supported checkpoint, and the classifier keys dropped."""
    state = official_to_timm(unwrap_state_dict(checkpoint, prefix))
    if not any(k.startswith(('stem.', 'stages.')) for k in state):
        raise CheckpointMismatchError(
            'This is not a MambaOut checkpoint: no key starts with stem./stages. (timm) or downsample_layers. '
            f'(official). First keys: {list(state)[:_SHOWN_KEYS]}.')
    dropped = [k for k in state if _CLASSIFIER_KEY.match(k)]
    for key in dropped:
        del state[key]
    return state, dropped


def _describe(keys, what):
    keys = sorted(keys)
    more = f' (+{len(keys) - _SHOWN_KEYS} more)' if len(keys) > _SHOWN_KEYS else ''
    return f'{what}: {keys[:_SHOWN_KEYS]}{more}'


def load_pretrained(model, checkpoint: str, prefix: Optional[str] = None,
                    logger: Optional[logging.Logger] = None):
    """Load a checkpoint into a :class:`~backbones.MambaOut`, strictly.

    The classifier head and final norm are dropped (one info line); output norms ``norm{i}`` absent from
    the checkpoint are reported as newly initialised. Anything else missing, unexpected or of the wrong
    shape raises :class:`CheckpointMismatchError` naming the arch and the keys at fault.
    """
    logger = logger or logging.getLogger(__name__)
    state, dropped = to_backbone_state_dict(read_checkpoint(checkpoint), prefix)
    own = model.state_dict()
    out_norms = {k for k in own if re.match(r'^norm\d+\.', k)}
    missing = set(own) - set(state) - out_norms
    unexpected = set(state) - set(own)
    wrong_shape = [f'{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}'
                   for k in set(state) & set(own) if state[k].shape != own[k].shape]
    if missing or unexpected or wrong_shape:
        problems = [_describe(keys, what) for keys, what in
                    ((missing, 'missing'), (unexpected, 'unexpected'), (wrong_shape, 'wrong shape')) if keys]
        raise CheckpointMismatchError(
            f'{checkpoint!r} does not fit MambaOut arch {model.arch_name!r} (depths {model.arch["depths"]}, dims '
            f'{model.arch["dims"]}). Is it a checkpoint of another variant? ' + '; '.join(problems))
    model.load_state_dict(state, strict=False)
    if dropped:
        logger.info(f'MambaOut: dropped {len(dropped)} classifier keys (head.*, norm.*) from {checkpoint!r}.')
    fresh = sorted({k.split('.')[0] for k in out_norms - set(state)})
    if fresh:
        logger.info(f'MambaOut: output norms {fresh} are not in {checkpoint!r}; newly initialised.')
    logger.info(f'MambaOut: loaded {len(state)} tensors from {checkpoint!r} into arch {model.arch_name!r}.')
