"""Checks a config's datasets before a run starts, so that a broken dataset fails in seconds with one
message naming the file, not hours later with a trace from inside a data loader.

Checked: annotation files exist and are valid JSON (COCO-style datasets), every image they list exists,
and, for segmentation folders, every image has a label map of the same size (header reads only).
"""
import json
import os
import os.path as osp

from PIL import Image

_SHOWN = 5


class DatasetError(RuntimeError):
    """A dataset of the config is missing or broken."""


def _join(root, path):
    return path if not root or osp.isabs(path) else osp.join(root, path)


def _datasets(dataset_cfg):
    """The leaf dataset configs under wrappers (RepeatDataset, ConcatDataset, ...)."""
    if 'datasets' in dataset_cfg:
        for sub in dataset_cfg['datasets']:
            yield from _datasets(sub)
    elif 'dataset' in dataset_cfg:
        yield from _datasets(dataset_cfg['dataset'])
    else:
        yield dataset_cfg


def _fail(problem, paths, fix):
    shown = ', '.join(paths[:_SHOWN]) + (f' (+{len(paths) - _SHOWN} more)' if len(paths) > _SHOWN else '')
    raise DatasetError(f'{problem}: {shown}. {fix}')


def check_coco(dataset):
    root = dataset.get('data_root', '')
    ann_file = _join(root, dataset['ann_file'])
    if not osp.isfile(ann_file):
        _fail('annotation file not found', [ann_file], 'Check data_root/ann_file (or run tools/misc/make_toy_data.py '
              'for the toy set).')
    try:
        with open(ann_file) as f:
            coco = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise DatasetError(f'{ann_file} is not valid JSON ({err}). Re-export or re-download it.') from None
    if not isinstance(coco, dict) or not isinstance(coco.get('images'), list):
        raise DatasetError(f'{ann_file} is not a COCO annotation file: it has no "images" list.')
    img_dir = _join(root, (dataset.get('data_prefix') or {}).get('img', ''))
    missing = [osp.join(img_dir, img.get('file_name', '?')) for img in coco['images']
               if not osp.isfile(osp.join(img_dir, img.get('file_name', '')))]
    if missing:
        _fail(f'{len(missing)} images listed in {ann_file} are missing', missing,
              'Check data_root and data_prefix.img of the config.')


def check_segmentation(dataset):
    root = dataset.get('data_root', '')
    prefix = dataset.get('data_prefix') or {}
    img_dir, seg_dir = _join(root, prefix.get('img_path', '')), _join(root, prefix.get('seg_map_path', ''))
    img_suffix, seg_suffix = dataset.get('img_suffix', '.jpg'), dataset.get('seg_map_suffix', '.png')
    for folder in (img_dir, seg_dir):
        if not osp.isdir(folder):
            _fail('dataset folder not found', [folder], 'Check data_root and data_prefix of the config.')
    images = sorted(f for f in os.listdir(img_dir) if f.endswith(img_suffix))
    if not images:
        _fail(f'no *{img_suffix} image in', [img_dir], 'Check data_root and img_suffix of the config.')
    missing, mismatched = [], []
    for name in images:
        label = osp.join(seg_dir, name[:-len(img_suffix)] + seg_suffix)
        if not osp.isfile(label):
            missing.append(label)
            continue
        with Image.open(osp.join(img_dir, name)) as image, Image.open(label) as label_map:
            if image.size != label_map.size:
                mismatched.append(f'{label} ({label_map.size[0]}x{label_map.size[1]}, image '
                                  f'{image.size[0]}x{image.size[1]})')
    if missing:
        _fail(f'{len(missing)} label maps are missing', missing, f'Each image in {img_dir} needs one.')
    if mismatched:
        _fail(f'{len(mismatched)} label maps differ in size from their image', mismatched,
              'A label map must have the size of its image.')


def check_datasets(cfg, splits):
    """Check the datasets of ``splits`` (e.g. ('train', 'val')) of a config; exit with one message if broken."""
    try:
        _check_splits(cfg, splits)
    except DatasetError as err:
        raise SystemExit(f'error: {err}') from None


def _check_splits(cfg, splits):
    for split in splits:
        loader = cfg.get(f'{split}_dataloader')
        if not loader:
            continue
        for dataset in _datasets(loader['dataset']):
            if str(dataset.get('ann_file', '')).endswith('.json'):
                check_coco(dataset)
            elif 'seg_map_path' in (dataset.get('data_prefix') or {}):
                check_segmentation(dataset)
