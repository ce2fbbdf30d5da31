"""Config -> model -> synthetic inputs: the one helper that ``tools/analysis_tools/get_flops.py``, ``tools/analysis_tools/benchmark.py`` and
the tests share, on mmengine's and mmdet's/mmseg's own APIs.

A config's ``default_scope`` says which library builds it; importing the config imports its plugin
(``custom_imports``). Models are built with random weights: nothing is downloaded.
"""
import copy
import importlib
import os.path as osp
from typing import Optional, Sequence, Tuple

import torch
from mmengine.config import Config
from mmengine.model import revert_sync_batchnorm
from mmengine.registry import init_default_scope

SCOPES = ('mmdet', 'mmseg')


def load_config(path: str, cfg_options: Optional[dict] = None) -> Config:
    """The config at ``path`` with ``cfg_options`` merged in.

    Raises:
        FileNotFoundError: no file at ``path``.
        ValueError: the config is not an mmdet or mmseg one (its ``default_scope``).
    """
    if not osp.isfile(path):
        raise FileNotFoundError(f'config file not found: {path}')
    cfg = Config.fromfile(path)
    if cfg_options:
        cfg.merge_from_dict(cfg_options)
    if cfg.get('default_scope') not in SCOPES:
        raise ValueError(f'{path} has default_scope={cfg.get("default_scope")!r}; only mmdet and mmseg configs '
                         'are supported')
    return cfg


def models_registry(scope: str):
    """mmdet's or mmseg's ``MODELS``, with ``scope`` made the default scope (as their tools do)."""
    init_default_scope(scope)
    return importlib.import_module(f'{scope}.registry').MODELS


def drop_pretrained(model_cfg) -> None:
    """Make a model config start from random weights, reading or downloading nothing: the backbone's
    ``init_cfg`` and a model-level ``pretrained`` are dropped (in place)."""
    if model_cfg.get('backbone') is not None:
        model_cfg.backbone.init_cfg = None
    if 'pretrained' in model_cfg:
        model_cfg.pretrained = None


def build_model(cfg: Config, backbone_only: bool = False, pretrained: bool = False) -> torch.nn.Module:
    """The config's model (or its backbone alone) with random weights, SyncBN turned into BN (no process group
    needed) and, unless ``pretrained``, the backbone's ``init_cfg`` dropped so that nothing is read or
    downloaded when ``init_weights`` runs."""
    model_cfg = copy.deepcopy(cfg.model)
    if not pretrained:
        drop_pretrained(model_cfg)
    registry = models_registry(cfg.default_scope)
    model = registry.build(model_cfg.backbone if backbone_only else model_cfg)
    return revert_sync_batchnorm(model)


def save_untrained_checkpoint(config: str, path: str) -> str:
    """Save an untrained model of ``config`` (random init, nothing downloaded) as training saves one: its weights,
    and the class names and palette of its dataset under ``meta['dataset_meta']`` (where tools/test.py and mmdet's
    and mmseg's inferencers read them). Evaluated, it is the baseline that shows how much training brings.
    Returns ``path`` as a string."""
    cfg = load_config(str(config))
    model = build_model(cfg)
    datasets = importlib.import_module(f'{cfg.default_scope}.registry').DATASETS
    metainfo = datasets.build(dict(cfg.test_dataloader.dataset, lazy_init=True)).metainfo
    model.init_weights()
    torch.save({'state_dict': model.state_dict(), 'meta': {'dataset_meta': metainfo}}, path)
    return str(path)


def num_classes_of(cfg: Config) -> int:
    """The number of classes of the config's (first) head."""
    def find(node):
        if isinstance(node, dict):
            if isinstance(node.get('num_classes'), int):
                return node['num_classes']
            node = list(node.values())
        if isinstance(node, (list, tuple)):
            return next((found for found in map(find, node) if found is not None), None)
        return None
    found = find(cfg.model)
    if found is None:
        raise ValueError('the config\'s model has no num_classes')
    return found


def synthetic_batch(scope: str, shapes: Sequence[Tuple[int, int]], num_classes: int = 2,
                    num_objects: int = 4) -> dict:
    """A batch of random images of ``shapes`` (one ``(H, W)`` per image) as a dataloader gives it to
    ``model.data_preprocessor``: ``inputs`` (uint8 ``(3, H, W)`` tensors) and ``data_samples`` with the
    meta-information of a pipeline and random annotations (mmdet: ``num_objects`` boxes, labels and masks per
    image, by ``mmdet.testing.demo_mm_inputs``; mmseg: a label map). Each sample also carries its own shape as
    ``batch_input_shape``/``pad_shape``, so that a batch of equal shapes can go to the model directly, without
    the data preprocessor (which may pad to the training crop size). Seeded: the same call, the same batch."""
    shapes = [tuple(shape) for shape in shapes]
    if scope == 'mmdet':
        from mmdet.testing import demo_mm_inputs
        batch = demo_mm_inputs(len(shapes), image_shapes=[(3, *shape) for shape in shapes],
                               num_items=[num_objects] * len(shapes), num_classes=num_classes, with_mask=True)
    elif scope == 'mmseg':
        from mmengine.structures import PixelData
        from mmseg.structures import SegDataSample
        generator = torch.Generator().manual_seed(0)
        batch = dict(inputs=[], data_samples=[])
        for shape in shapes:
            batch['inputs'].append(torch.randint(0, 256, (3, *shape), dtype=torch.uint8, generator=generator))
            sample = SegDataSample(metainfo=dict(ori_shape=shape, img_shape=shape, padding_size=[0, 0, 0, 0],
                                                 flip=False))
            sample.gt_sem_seg = PixelData(data=torch.randint(0, num_classes, (1, *shape), generator=generator))
            batch['data_samples'].append(sample)
    else:
        raise ValueError(f'scope must be one of {SCOPES}, got {scope!r}')
    for shape, sample in zip(shapes, batch['data_samples']):
        sample.set_metainfo(dict(batch_input_shape=shape, pad_shape=shape, scale_factor=(1., 1.)))
    return batch

