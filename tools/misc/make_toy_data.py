#!/usr/bin/env python3
"""Deterministic generator of the project's embedded toy dataset (nothing is downloaded).

It draws small synthetic scenes -- 1 to 4 coloured shapes (``square``, ``circle``,
``triangle``) on a smooth, noisy colour-gradient background -- and writes them twice:

* a COCO-format instance-segmentation set (for Mask R-CNN)::

      OUT/coco/train/toy_train_00000.jpg ...
      OUT/coco/val/toy_val_00000.jpg ...
      OUT/coco/annotations/instances_train.json
      OUT/coco/annotations/instances_val.json

* an ADE20K-layout semantic-segmentation set (for UperNet), from other scenes::

      OUT/ade/images/training/toy_train_00000.jpg       (RGB JPEG)
      OUT/ade/annotations/training/toy_train_00000.png  (8-bit 'L' PNG, same stem and size)
      OUT/ade/images/validation/toy_val_00000.jpg
      OUT/ade/annotations/validation/toy_val_00000.png

  Label 0 is background ("other", ignored with ``reduce_zero_label=True`` exactly as for
  ADE20K) and labels 1..N are ``CLASSES`` in order, i.e. 0..N-1 after reduction.

* ``OUT/meta.json`` -- the generation parameters, written last.  A later call with the same
  parameters finds it (and every expected file) and returns at once without writing anything;
  different parameters, a missing file or ``force=True`` regenerate the set (our own
  ``toy_*`` files are deleted first, so no stale images from a previous run remain).

Classes.  ``CLASSES`` and ``PALETTE`` are read from ``toy_metainfo`` in
``configs/toy/_base_/toy_metainfo.py``, the file both toy configs inherit as their ``metainfo``,
so the class list and palette are defined once.  Each class name must be a shape drawn here.

Scenes.  Objects are placed one after another and later objects occlude earlier ones.  Every
object keeps its *visible* mask (its own pixels minus those of all later objects).  A
placement is rejected and re-drawn if it would leave an earlier object with less than 40 % of
its area (or fewer than ``MIN_AREA`` = 40 px) visible, split off a visible (8-connected) part
smaller than ``MIN_PART`` px -- a sliver that would stretch the box far beyond the object --
or punch a hole into it -- so every annotated object is clearly recognisable, yet many images
contain overlapping objects.  RLE could express holes; the hole rule stays because it costs one
line and keeps the images and label maps byte-identical to version 2's, on which the toy trainings
of docs/demo.md were measured (without it, the placements it rejects -- 4 of the ~1000 checks of
the default set -- and every later draw of those scenes would change).  A class's colour is mostly
its own (nine times in ten near a class-specific hue, otherwise any hue), so colour is a strong cue
but the network must also learn the shape; the objects are saturated and bright on a duller background so that a few
minutes of CPU training at 128 px are enough to learn them.

Annotations.  The ``segmentation`` of an instance is the COCO RLE of its visible mask
(``pycocotools.mask.encode``, ``counts`` as a string; ``iscrowd`` = 0), so pycocotools
(``annToMask``, COCOeval) and mmdet's ``LoadAnnotations`` decode exactly the visible mask,
separate parts included.  ``area`` (``mask.area``, the pixel count) and ``bbox``
(``mask.toBbox``, ``[x, y, w, h]`` of the tight box, pixel ``(x, y)`` covering
``[x, x+1] x [y, y+1]``) come from the same RLE and are floats.  Image and annotation ids start
at 1; category ids are 1..N.

Usage::

    python tools/misc/make_toy_data.py [--out data/toy] [--seed 0] [--num-train 96]
                                  [--num-val 32] [--size 128] [--force]

or ``from make_toy_data import make_toy_data; paths = make_toy_data('data/toy')``.

Output is a pure function of the parameters and ``CLASSES`` (and of the numpy/Pillow/libjpeg
versions for the exact JPEG bytes).
"""
from __future__ import annotations

import argparse
import colorsys
import glob
import json
import os
import sys
import time
from typing import Dict, List, Sequence, Tuple

import numpy as np
from mmengine.config import Config
from PIL import Image
from pycocotools import mask as mask_utils
from scipy import ndimage

__all__ = ['CLASSES', 'PALETTE', 'METAINFO_FILE', 'DEFAULT_OUT', 'make_toy_data', 'render_scene',
           'main']

# The shapes this generator can draw, and the hue each is mostly painted in (red-, green-, blue-ish).
CLASS_HUES = {'square': 0.0, 'circle': 0.33, 'triangle': 0.62}
METAINFO_FILE = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                             'configs', 'toy', '_base_', 'toy_metainfo.py')


def _load_metainfo(path: str = METAINFO_FILE) -> Tuple[Tuple[str, ...], List[tuple]]:
    """``(classes, palette)`` from ``toy_metainfo`` of the config both toy configs inherit."""
    metainfo = Config.fromfile(path).toy_metainfo
    classes = tuple(metainfo['classes'])
    unknown = [c for c in classes if c not in CLASS_HUES]
    if unknown or len(set(classes)) != len(classes):
        raise ValueError(f'{path}: toy_metainfo.classes must be distinct names among '
                         f'{sorted(CLASS_HUES)}, got {classes}')
    return classes, [tuple(c) for c in metainfo['palette']]


# COCO category ids 1..N and ADE-layout labels 1..N (0 = background), in this order.
CLASSES, PALETTE = _load_metainfo()
DEFAULT_OUT = 'data/toy'

DEFAULT_SEED = 0
DEFAULT_NUM_TRAIN = 96
DEFAULT_NUM_VAL = 32
DEFAULT_SIZE = 128
MIN_SIZE = 48

# Bumped whenever the generated data changes for the same parameters (forces regeneration).
GENERATOR_VERSION = 3  # 3: RLE segmentations, classes from METAINFO_FILE (scenes as in 2)
JPEG_QUALITY = 95

MIN_AREA = 40                # minimum visible area (px) of an annotated object
MIN_PART = 12                # minimum area (px) of each connected visible part
MIN_VISIBLE_FRACTION = 0.4   # earlier objects keep at least this fraction of their area
MAX_OBJECTS = 4
MAX_TRIES = 30               # placement attempts per object before it is skipped
SIZE_RANGE = (0.15, 0.45)    # nominal object extent as a fraction of the image side
HUE_BIAS_PROB = 0.9  # 0.5 left the toy models far weaker after minutes of CPU training
HUE_BIAS_JITTER = 0.1
MIN_CONTRAST = 70.0          # min RGB distance of an object's colour to background/overlapped

COCO_DIR = 'coco'
ADE_DIR = 'ade'
META_FILE = 'meta.json'
_SPLITS = (('train', 'training'), ('val', 'validation'))
_STREAM_COCO, _STREAM_ADE = 0, 1


# --------------------------------------------------------------------------------------------
# geometry
# --------------------------------------------------------------------------------------------
_EIGHT_NEIGHBOURS = np.ones((3, 3), dtype=bool)


def _recognisable(mask: np.ndarray) -> bool:
    """Every 8-connected part has at least ``MIN_PART`` pixels and the mask has no hole."""
    parts, n = ndimage.label(mask, structure=_EIGHT_NEIGHBOURS)
    if n == 0 or np.bincount(parts.ravel())[1:].min() < MIN_PART:
        return False
    return not (ndimage.binary_fill_holes(mask) & ~mask).any()


def _prune(mask: np.ndarray) -> np.ndarray:
    """Remove lone/spur pixels (<= 1 of 8 neighbours) left by rasterising sharp tips."""
    for _ in range(2):
        p = np.pad(mask, 1).astype(np.uint8)
        h, w = mask.shape
        nb = sum(p[1 + dy:1 + dy + h, 1 + dx:1 + dx + w]
                 for dy in (-1, 0, 1) for dx in (-1, 0, 1) if dy or dx)
        mask = mask & (nb >= 2)
    return mask


def _shape_mask(rng: np.random.Generator, cls: int, size: int, xx: np.ndarray,
                yy: np.ndarray) -> np.ndarray:
    """Rasterise (at pixel centres) a random shape of class ``cls`` fully inside the image."""
    d = rng.uniform(*SIZE_RANGE) * size          # nominal extent (px)
    theta = rng.uniform(0.0, 2.0 * np.pi)
    name = CLASSES[cls]
    if name == 'square':
        half = 0.42 * d
        bound = half * np.sqrt(2.0)
    elif name == 'circle':
        radius = 0.5 * d
        bound = radius
    else:  # equilateral triangle
        circum = 0.6 * d
        bound = circum
    lo, hi = bound + 1.0, size - bound - 1.0
    cx, cy = rng.uniform(lo, hi), rng.uniform(lo, hi)
    dx, dy = xx - cx, yy - cy
    if name == 'square':
        c, s = np.cos(theta), np.sin(theta)
        mask = (np.abs(c * dx + s * dy) <= half) & (np.abs(-s * dx + c * dy) <= half)
    elif name == 'circle':
        mask = dx * dx + dy * dy <= radius * radius
    else:
        mask = np.ones(xx.shape, dtype=bool)
        inr = 0.5 * circum   # inradius of an equilateral triangle
        for k in range(3):   # intersection of the three half-planes facing the edge normals
            a = theta + np.pi + 2.0 * np.pi * k / 3.0
            mask &= np.cos(a) * dx + np.sin(a) * dy <= inr
    return _prune(mask)


def _hsv(h: float, s: float, v: float) -> np.ndarray:
    return np.array(colorsys.hsv_to_rgb(h % 1.0, s, v), dtype=np.float32) * 255.0


def _background(rng: np.random.Generator, size: int, xx: np.ndarray,
                yy: np.ndarray) -> np.ndarray:
    """Smooth bilinear gradient between 4 random dull corner colours + mild noise."""
    base_h = rng.random()
    corners = [_hsv(base_h + rng.uniform(-0.25, 0.25), rng.uniform(0.0, 0.35),
                    rng.uniform(0.15, 0.55)) for _ in range(4)]
    u = (xx / size)[..., None]
    v = (yy / size)[..., None]
    img = ((1 - u) * (1 - v) * corners[0] + u * (1 - v) * corners[1] +
           (1 - u) * v * corners[2] + u * v * corners[3])
    # a gentle low-frequency wave so that backgrounds are not purely linear
    f = rng.uniform(1.0, 3.0) * 2.0 * np.pi / size
    phase = rng.uniform(0, 2 * np.pi)
    ang = rng.uniform(0, np.pi)
    wave = np.sin(f * (np.cos(ang) * xx + np.sin(ang) * yy) + phase)[..., None]
    img = img + rng.uniform(5.0, 20.0) * wave
    img = img + rng.normal(0.0, 4.0, size=img.shape)
    return img.astype(np.float32)


def _pick_colour(rng: np.random.Generator, cls: int, avoid: Sequence[np.ndarray]) -> np.ndarray:
    colour = None
    for _ in range(20):
        if rng.random() < HUE_BIAS_PROB:
            h = CLASS_HUES[CLASSES[cls]] + rng.uniform(-HUE_BIAS_JITTER, HUE_BIAS_JITTER)
        else:
            h = rng.random()
        colour = _hsv(h, rng.uniform(0.55, 1.0), rng.uniform(0.65, 1.0))
        if all(float(np.linalg.norm(colour - a)) >= MIN_CONTRAST for a in avoid):
            break
    return colour


def render_scene(rng: np.random.Generator, size: int, max_objects: int = MAX_OBJECTS):
    """Draw one scene.

    Returns ``(image, objects)``: ``image`` is an ``(size, size, 3)`` uint8 RGB array and
    ``objects`` a list (in drawing order) of dicts with ``label`` (0-based class index),
    ``mask`` (visible bool mask).
    The visible masks are pairwise disjoint.
    """
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5
    img = _background(rng, size, xx, yy)
    bg_mean = img.reshape(-1, 3).mean(0)
    objects: List[dict] = []
    n_objects = int(rng.integers(1, max_objects + 1))
    for _ in range(n_objects):
        placed = None
        for _attempt in range(MAX_TRIES):
            cls = int(rng.integers(len(CLASSES)))
            full = _shape_mask(rng, cls, size, xx, yy)
            if int(full.sum()) < MIN_AREA or not _recognisable(full):
                continue
            updates = []
            for obj in objects:
                if not (obj['mask'] & full).any():
                    continue
                vis = obj['mask'] & ~full
                if (int(vis.sum()) < max(MIN_AREA, MIN_VISIBLE_FRACTION * obj['full_area'])
                        or not _recognisable(vis)):
                    break
                updates.append((obj, vis))
            else:
                placed = (cls, full, updates)
                break
        if placed is None:
            continue
        cls, full, updates = placed
        avoid = [bg_mean] + [obj['colour'] for obj, _ in updates]
        colour = _pick_colour(rng, cls, avoid)
        for obj, vis in updates:
            obj['mask'] = vis
        # paint with a mild linear shading across the object
        ang = rng.uniform(0, 2 * np.pi)
        ys, xs = np.nonzero(full)
        t = np.cos(ang) * (xs - xs.mean()) + np.sin(ang) * (ys - ys.mean())
        t = t / max(float(np.abs(t).max()), 1.0)
        shade = 1.0 + rng.uniform(0.05, 0.2) * t
        img[ys, xs] = colour[None, :] * shade[:, None]
        objects.append(dict(label=cls, mask=full, full_area=int(full.sum()), colour=colour))
    img = img + rng.normal(0.0, 3.0, size=img.shape)
    img = np.clip(np.rint(img), 0, 255).astype(np.uint8)
    for obj in objects:
        obj.pop('colour')
        obj.pop('full_area')
    return img, objects


# --------------------------------------------------------------------------------------------
# writing
# --------------------------------------------------------------------------------------------
def _rng(seed: int, stream: int, split: int, index: int) -> np.random.Generator:
    return np.random.default_rng([int(seed), stream, split, index])


def _save_jpg(img: np.ndarray, path: str) -> None:
    Image.fromarray(img, mode='RGB').save(path, format='JPEG', quality=JPEG_QUALITY,
                                          subsampling=0)


def _write_json(obj, path: str) -> None:
    tmp = path + '.tmp'
    with open(tmp, 'w') as f:
        json.dump(obj, f, separators=(',', ':'))
    os.replace(tmp, path)


def _names(split: str, n: int) -> List[str]:
    return [f'toy_{split}_{i:05d}' for i in range(n)]


def _coco_annotation(obj: dict, ann_id: int, image_id: int) -> dict:
    rle = mask_utils.encode(np.asfortranarray(obj['mask'], dtype=np.uint8))
    area, bbox = int(mask_utils.area(rle)), mask_utils.toBbox(rle).tolist()
    rle['counts'] = rle['counts'].decode('ascii')  # bytes are not JSON
    return dict(id=ann_id, image_id=image_id, category_id=obj['label'] + 1, segmentation=rle,
                area=float(area), bbox=bbox, iscrowd=0)


def _write_coco_split(out_dir: str, seed: int, split_idx: int, split: str, n: int,
                      size: int) -> None:
    img_dir = os.path.join(out_dir, COCO_DIR, split)
    images, annotations = [], []
    for i, stem in enumerate(_names(split, n)):
        img, objects = render_scene(_rng(seed, _STREAM_COCO, split_idx, i), size)
        file_name = stem + '.jpg'
        _save_jpg(img, os.path.join(img_dir, file_name))
        image_id = i + 1
        images.append(dict(id=image_id, file_name=file_name, width=size, height=size))
        for obj in objects:
            annotations.append(_coco_annotation(obj, len(annotations) + 1, image_id))
    coco = dict(
        info=dict(description=f'MambaOut toy shapes ({split})', version=str(GENERATOR_VERSION),
                  year=2024, contributor='tools/misc/make_toy_data.py', date_created=''),
        licenses=[],
        images=images,
        annotations=annotations,
        categories=[dict(id=k + 1, name=name, supercategory='shape')
                    for k, name in enumerate(CLASSES)],
    )
    _write_json(coco, os.path.join(out_dir, COCO_DIR, 'annotations', f'instances_{split}.json'))


def _write_ade_split(out_dir: str, seed: int, split_idx: int, split: str, ade_split: str,
                     n: int, size: int) -> None:
    img_dir = os.path.join(out_dir, ADE_DIR, 'images', ade_split)
    ann_dir = os.path.join(out_dir, ADE_DIR, 'annotations', ade_split)
    for i, stem in enumerate(_names(split, n)):
        img, objects = render_scene(_rng(seed, _STREAM_ADE, split_idx, i), size)
        label = np.zeros((size, size), dtype=np.uint8)
        for obj in objects:
            label[obj['mask']] = obj['label'] + 1
        _save_jpg(img, os.path.join(img_dir, stem + '.jpg'))
        Image.fromarray(label, mode='L').save(os.path.join(ann_dir, stem + '.png'))


def _paths(out_dir: str) -> Dict[str, str]:
    coco = os.path.join(out_dir, COCO_DIR)
    ade = os.path.join(out_dir, ADE_DIR)
    return {
        'root': out_dir,
        'coco_root': coco,
        'coco_train_img': os.path.join(coco, 'train'),
        'coco_val_img': os.path.join(coco, 'val'),
        'coco_train_ann': os.path.join(coco, 'annotations', 'instances_train.json'),
        'coco_val_ann': os.path.join(coco, 'annotations', 'instances_val.json'),
        'ade_root': ade,
        'ade_train_img': os.path.join(ade, 'images', 'training'),
        'ade_val_img': os.path.join(ade, 'images', 'validation'),
        'ade_train_ann': os.path.join(ade, 'annotations', 'training'),
        'ade_val_ann': os.path.join(ade, 'annotations', 'validation'),
        'meta': os.path.join(out_dir, META_FILE),
    }


def _expected_files(paths: Dict[str, str], num_train: int, num_val: int) -> List[str]:
    files = [paths['coco_train_ann'], paths['coco_val_ann']]
    for split, n in (('train', num_train), ('val', num_val)):
        for stem in _names(split, n):
            files.append(os.path.join(paths[f'coco_{split}_img'], stem + '.jpg'))
            files.append(os.path.join(paths[f'ade_{split}_img'], stem + '.jpg'))
            files.append(os.path.join(paths[f'ade_{split}_ann'], stem + '.png'))
    return files


def _own_files(paths: Dict[str, str]) -> List[str]:
    """Files a previous run of this generator may have left (only our ``toy_*`` names)."""
    found = []
    for split in ('train', 'val'):
        found += glob.glob(os.path.join(paths[f'coco_{split}_img'], 'toy_*.jpg'))
        found += glob.glob(os.path.join(paths[f'ade_{split}_img'], 'toy_*.jpg'))
        found += glob.glob(os.path.join(paths[f'ade_{split}_ann'], 'toy_*.png'))
        ann = paths[f'coco_{split}_ann']
        found += [f for f in (ann, ann + '.tmp') if os.path.exists(f)]
    return found


def _meta(seed: int, num_train: int, num_val: int, size: int) -> dict:
    return dict(generator='tools/misc/make_toy_data.py', version=GENERATOR_VERSION, seed=seed,
                num_train=num_train, num_val=num_val, size=size,
                classes=list(CLASSES))


def _is_complete(paths: Dict[str, str], meta: dict, num_train: int, num_val: int) -> bool:
    try:
        with open(paths['meta']) as f:
            if json.load(f) != meta:
                return False
    except (OSError, ValueError):
        return False
    return all(os.path.isfile(p) and os.path.getsize(p) > 0
               for p in _expected_files(paths, num_train, num_val))


def make_toy_data(out_dir: str = DEFAULT_OUT, seed: int = DEFAULT_SEED,
                  num_train: int = DEFAULT_NUM_TRAIN, num_val: int = DEFAULT_NUM_VAL,
                  size: int = DEFAULT_SIZE, force: bool = False,
                  verbose: bool = False) -> Dict[str, str]:
    """Generate the toy dataset under ``out_dir`` (skipped when already complete).

    Returns a dict of paths (all ``str``, joined onto ``out_dir`` as given): ``root``,
    ``coco_root``, ``coco_train_img``, ``coco_val_img``, ``coco_train_ann``,
    ``coco_val_ann``, ``ade_root``, ``ade_train_img``, ``ade_val_img``, ``ade_train_ann``,
    ``ade_val_ann`` and ``meta``.
    """
    seed, num_train, num_val, size = int(seed), int(num_train), int(num_val), int(size)
    if seed < 0:
        raise ValueError(f'seed must be >= 0, got {seed}')
    if num_train < 1 or num_val < 1:
        raise ValueError(f'num_train and num_val must be >= 1, got {num_train}, {num_val}')
    if size < MIN_SIZE:
        raise ValueError(f'size must be >= {MIN_SIZE}, got {size}')
    out_dir = os.fspath(out_dir)
    paths = _paths(out_dir)
    meta = _meta(seed, num_train, num_val, size)
    if not force and _is_complete(paths, meta, num_train, num_val):
        if verbose:
            print(f'[make_toy_data] {out_dir} is up to date (seed={seed}, '
                  f'{num_train}+{num_val} images, {size}px); use --force to regenerate')
        return paths

    start = time.perf_counter()
    if os.path.exists(paths['meta']):
        os.remove(paths['meta'])          # invalid until everything is written again
    for f in _own_files(paths):
        os.remove(f)
    for key in ('coco_train_img', 'coco_val_img', 'ade_train_img', 'ade_val_img',
                'ade_train_ann', 'ade_val_ann'):
        os.makedirs(paths[key], exist_ok=True)
    os.makedirs(os.path.dirname(paths['coco_train_ann']), exist_ok=True)

    for split_idx, ((split, ade_split), n) in enumerate(zip(_SPLITS, (num_train, num_val))):
        _write_coco_split(out_dir, seed, split_idx, split, n, size)
        _write_ade_split(out_dir, seed, split_idx, split, ade_split, n, size)

    tmp = paths['meta'] + '.tmp'
    with open(tmp, 'w') as f:
        json.dump(meta, f, indent=2)
        f.write('\n')
    os.replace(tmp, paths['meta'])
    if verbose:
        print(f'[make_toy_data] wrote {num_train}+{num_val} COCO and {num_train}+{num_val} '
              f'ADE images ({size}px, seed={seed}) to {out_dir} '
              f'in {time.perf_counter() - start:.1f}s')
    return paths


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description='Generate the deterministic synthetic toy dataset (COCO instances + '
        'ADE20K-layout semantic labels) of square/circle/triangle shapes.')
    parser.add_argument('--out', default=DEFAULT_OUT, help=f'output dir (default {DEFAULT_OUT})')
    parser.add_argument('--seed', type=int, default=DEFAULT_SEED)
    parser.add_argument('--num-train', type=int, default=DEFAULT_NUM_TRAIN)
    parser.add_argument('--num-val', type=int, default=DEFAULT_NUM_VAL)
    parser.add_argument('--size', type=int, default=DEFAULT_SIZE, help='image side in pixels')
    parser.add_argument('--force', action='store_true', help='regenerate even if up to date')
    args = parser.parse_args(argv)
    try:
        make_toy_data(args.out, seed=args.seed, num_train=args.num_train,
                      num_val=args.num_val, size=args.size, force=args.force, verbose=True)
    except ValueError as e:
        parser.error(str(e))
    return 0


if __name__ == '__main__':
    sys.exit(main())
