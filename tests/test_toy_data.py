"""Tests of tools/make_toy_data.py (the embedded synthetic toy dataset)."""
import filecmp
import importlib.util
import json
import os
import subprocess
import sys
from itertools import combinations
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / 'tools' / 'make_toy_data.py'

_spec = importlib.util.spec_from_file_location('make_toy_data', SCRIPT)
toy = importlib.util.module_from_spec(_spec)
sys.modules.setdefault('make_toy_data', toy)
_spec.loader.exec_module(toy)

CLASSES = ('square', 'circle', 'triangle')
SMALL = dict(num_train=24, num_val=8, size=128)


@pytest.fixture(scope='module')
def dataset(tmp_path_factory):
    out = tmp_path_factory.mktemp('toy')
    paths = toy.make_toy_data(str(out), seed=0, **SMALL)
    return paths


def _load(path):
    with open(path) as f:
        return json.load(f)


def _boxes_overlap(a, b):
    ax, ay, aw, ah = a
    bx, by, bw, bh = b
    return min(ax + aw, bx + bw) > max(ax, bx) and min(ay + ah, by + bh) > max(ay, by)


def _label_files(paths, split):
    return sorted(Path(paths[f'ade_{split}_ann']).glob('*.png'))


def test_constants():
    assert toy.DET_CLASSES == CLASSES
    assert toy.SEG_CLASSES == CLASSES
    assert toy.DEFAULT_OUT == 'data/toy'
    assert len(toy.SEG_PALETTE) == len(toy.SEG_CLASSES)
    for rgb in toy.SEG_PALETTE:
        assert len(rgb) == 3 and all(isinstance(v, int) and 0 <= v <= 255 for v in rgb)
    assert len({tuple(c) for c in toy.SEG_PALETTE}) == len(toy.SEG_PALETTE)


def test_layout(dataset):
    for key in ('coco_train_ann', 'coco_val_ann', 'meta'):
        assert os.path.isfile(dataset[key]), key
    for split, n in (('train', SMALL['num_train']), ('val', SMALL['num_val'])):
        assert len(list(Path(dataset[f'coco_{split}_img']).glob('*.jpg'))) == n
        assert len(list(Path(dataset[f'ade_{split}_img']).glob('*.jpg'))) == n
        assert len(_label_files(dataset, split)) == n
    root = Path(dataset['root'])
    assert Path(dataset['coco_train_ann']) == root / 'coco/annotations/instances_train.json'
    assert Path(dataset['ade_val_ann']) == root / 'ade/annotations/validation'
    assert Path(dataset['ade_train_img']) == root / 'ade/images/training'


def test_determinism(tmp_path):
    kw = dict(num_train=6, num_val=3, size=96)
    a = toy.make_toy_data(str(tmp_path / 'a'), seed=3, **kw)
    b = toy.make_toy_data(str(tmp_path / 'b'), seed=3, **kw)
    c = toy.make_toy_data(str(tmp_path / 'c'), seed=4, **kw)
    for key in ('coco_train_ann', 'coco_val_ann'):
        assert filecmp.cmp(a[key], b[key], shallow=False), key
        assert not filecmp.cmp(a[key], c[key], shallow=False), key
    differs = False
    for split in ('train', 'val'):
        la, lb, lc = (_label_files(p, split) for p in (a, b, c))
        assert [p.name for p in la] == [p.name for p in lb] == [p.name for p in lc]
        assert la
        for pa, pb, pc in zip(la, lb, lc):
            arr_a = np.asarray(Image.open(pa))
            assert np.array_equal(arr_a, np.asarray(Image.open(pb))), pa.name
            assert pa.read_bytes() == pb.read_bytes(), pa.name
            differs |= not np.array_equal(arr_a, np.asarray(Image.open(pc)))
        for ja, jb in zip(sorted(Path(a[f'coco_{split}_img']).glob('*.jpg')),
                          sorted(Path(b[f'coco_{split}_img']).glob('*.jpg'))):
            assert ja.read_bytes() == jb.read_bytes(), ja.name
    assert differs, 'a different seed must give different label maps'


def test_coco_json(dataset):
    for split, n in (('train', SMALL['num_train']), ('val', SMALL['num_val'])):
        coco = _load(dataset[f'coco_{split}_ann'])
        cats = sorted(coco['categories'], key=lambda c: c['id'])
        assert [c['id'] for c in cats] == [1, 2, 3]
        assert tuple(c['name'] for c in cats) == CLASSES
        images = {im['id']: im for im in coco['images']}
        assert len(images) == len(coco['images']) == n
        for im in coco['images']:
            path = Path(dataset[f'coco_{split}_img']) / im['file_name']
            with Image.open(path) as pil:
                assert pil.format == 'JPEG' and pil.mode == 'RGB'
                assert pil.size == (im['width'], im['height']) == (SMALL['size'],) * 2
        anns = coco['annotations']
        assert len({a['id'] for a in anns}) == len(anns)
        per_image = {}
        for a in anns:
            im = images[a['image_id']]
            x, y, w, h = a['bbox']
            assert w > 0 and h > 0
            assert x >= 0 and y >= 0 and x + w <= im['width'] and y + h <= im['height']
            assert a['area'] > 0 and a['area'] <= w * h
            assert a['iscrowd'] == 0
            assert a['category_id'] in (1, 2, 3)
            segm = a['segmentation']
            assert isinstance(segm, list) and segm
            for poly in segm:
                assert len(poly) >= 6 and len(poly) % 2 == 0
                xs, ys = poly[0::2], poly[1::2]
                assert min(xs) >= x and max(xs) <= x + w and min(ys) >= y and max(ys) <= y + h
            per_image.setdefault(a['image_id'], []).append(a)
        assert set(per_image) == set(images), 'every image has at least one object'
        if split == 'train':
            multi = [v for v in per_image.values() if len(v) >= 2]
            assert len(multi) >= 3, 'several images must contain 2+ objects'
            overlapping = sum(
                any(_boxes_overlap(p['bbox'], q['bbox']) for p, q in combinations(v, 2))
                for v in multi)
            assert overlapping >= 1, 'at least one pair of boxes must overlap'
            assert {a['category_id'] for a in anns} == {1, 2, 3}


def test_coco_masks_pycocotools(dataset):
    pytest.importorskip('pycocotools')
    from pycocotools.coco import COCO
    for split in ('train', 'val'):
        coco = COCO(dataset[f'coco_{split}_ann'])
        assert sorted(coco.getCatIds()) == [1, 2, 3]
        assert [c['name'] for c in coco.loadCats([1, 2, 3])] == list(CLASSES)
        for img_id in coco.getImgIds():
            info = coco.loadImgs(img_id)[0]
            union = np.zeros((info['height'], info['width']), dtype=np.int32)
            for ann in coco.loadAnns(coco.getAnnIds(imgIds=img_id)):
                m = coco.annToMask(ann)
                assert m.shape == (info['height'], info['width'])
                assert m.sum() > 0
                assert abs(int(m.sum()) - ann['area']) <= 0.02 * ann['area'] + 2
                ys, xs = np.nonzero(m)
                x, y, w, h = ann['bbox']
                assert xs.min() >= x - 1 and ys.min() >= y - 1
                assert xs.max() + 1 <= x + w + 1 and ys.max() + 1 <= y + h + 1
                union += m
            # visible (post-occlusion) masks of one image never overlap
            assert union.max() == 1


def test_seg_labels(dataset):
    seen = set()
    for split in ('train', 'val'):
        labels = _label_files(dataset, split)
        assert labels
        for png in labels:
            jpg = Path(dataset[f'ade_{split}_img']) / (png.stem + '.jpg')
            assert jpg.is_file(), jpg
            with Image.open(png) as lab, Image.open(jpg) as img:
                assert lab.mode == 'L'
                assert lab.size == img.size
                arr = np.asarray(lab)
            values = set(np.unique(arr).tolist())
            assert values <= {0, 1, 2, 3}, (png.name, values)
            assert 0 in values and len(values) >= 2, png.name
            if split == 'train':
                seen |= values
    assert seen == {0, 1, 2, 3}, 'every class must occur in the training labels'


def _set_old_mtime(files, t=1_000_000_000):
    for f in files:
        os.utime(f, (t, t))


def test_skip_when_complete_and_force(tmp_path):
    kw = dict(seed=1, num_train=4, num_val=2, size=96)
    out = str(tmp_path / 'toy')
    paths = toy.make_toy_data(out, **kw)
    watched = [paths['coco_train_ann'], paths['meta'],
               str(next(Path(paths['coco_val_img']).glob('*.jpg'))),
               str(next(Path(paths['ade_train_ann']).glob('*.png')))]
    _set_old_mtime(watched)
    again = toy.make_toy_data(out, **kw)
    assert again == paths
    assert all(os.stat(f).st_mtime == 1_000_000_000 for f in watched), 'must not rewrite'

    toy.make_toy_data(out, force=True, **kw)
    assert all(os.stat(f).st_mtime != 1_000_000_000 for f in watched), 'force must rewrite'

    # an incomplete set (missing file) is regenerated
    _set_old_mtime(watched)
    os.remove(watched[3])
    toy.make_toy_data(out, **kw)
    assert os.path.isfile(watched[3])
    assert os.stat(watched[0]).st_mtime != 1_000_000_000


def test_param_change_regenerates_without_stale_files(tmp_path):
    out = str(tmp_path / 'toy')
    toy.make_toy_data(out, seed=0, num_train=5, num_val=3, size=96)
    paths = toy.make_toy_data(out, seed=0, num_train=3, num_val=2, size=112)
    meta = _load(paths['meta'])
    assert (meta['num_train'], meta['num_val'], meta['size']) == (3, 2, 112)
    assert len(list(Path(paths['coco_train_img']).glob('*.jpg'))) == 3
    assert len(list(Path(paths['ade_val_img']).glob('*.jpg'))) == 2
    assert len(list(Path(paths['ade_train_ann']).glob('*.png'))) == 3
    assert len(_load(paths['coco_train_ann'])['images']) == 3
    with Image.open(next(Path(paths['ade_train_img']).glob('*.jpg'))) as im:
        assert im.size == (112, 112)


def test_cli(tmp_path):
    out = tmp_path / 'cli'
    cmd = [sys.executable, str(SCRIPT), '--out', str(out), '--seed', '2', '--num-train', '3',
           '--num-val', '2', '--size', '96']
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    meta = _load(out / 'meta.json')
    assert (meta['seed'], meta['num_train'], meta['num_val'], meta['size']) == (2, 3, 2, 96)
    assert len(_load(out / 'coco/annotations/instances_val.json')['images']) == 2
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0 and 'up to date' in res.stdout
    bad = subprocess.run([sys.executable, str(SCRIPT), '--out', str(out), '--size', '8'],
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode != 0
