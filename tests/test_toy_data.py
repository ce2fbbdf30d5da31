"""Tests of tools/misc/make_toy_data.py (the embedded synthetic toy dataset)."""
import contextlib
import filecmp
import io
import json
import os
import subprocess
import sys
from itertools import combinations
from pathlib import Path

import numpy as np
import pytest
import torch
from mmengine.config import Config
from PIL import Image
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from tools.misc import make_toy_data as toy

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / 'tools' / 'misc' / 'make_toy_data.py'
TOY_DET = ROOT / 'configs' / 'toy' / 'mask_rcnn_mambaout_toy.py'
TOY_SEG = ROOT / 'configs' / 'toy' / 'upernet_mambaout_toy.py'


CLASSES = ('square', 'circle', 'triangle')
SMALL = dict(num_train=24, num_val=8, size=128)
TINY = dict(num_train=8, num_val=4, size=96)


@pytest.fixture(scope='module')
def dataset(tmp_path_factory):
    out = tmp_path_factory.mktemp('toy')
    paths = toy.make_toy_data(str(out), seed=0, **SMALL)
    return paths


@pytest.fixture(scope='module')
def tiny(tmp_path_factory):
    return toy.make_toy_data(str(tmp_path_factory.mktemp('tiny')), seed=0, **TINY)


def _load(path):
    with open(path) as f:
        return json.load(f)


def _coco(path):
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its loading times
        return COCO(path)


def _boxes_overlap(a, b):
    ax, ay, aw, ah = a
    bx, by, bw, bh = b
    return min(ax + aw, bx + bw) > max(ax, bx) and min(ay + ah, by + bh) > max(ay, by)


def _label_files(paths, split):
    return sorted(Path(paths[f'ade_{split}_ann']).glob('*.png'))


def test_one_class_list_and_palette(dataset):
    shared = Config.fromfile(toy.METAINFO_FILE).toy_metainfo
    assert toy.METAINFO_FILE == str(ROOT / 'configs' / 'toy' / '_base_' / 'toy_metainfo.py')
    assert toy.CLASSES == tuple(shared.classes) == CLASSES
    assert toy.PALETTE == [tuple(c) for c in shared.palette]
    assert len(toy.PALETTE) == len(toy.CLASSES)
    assert len(set(toy.PALETTE)) == len(toy.PALETTE)
    for rgb in toy.PALETTE:
        assert len(rgb) == 3 and all(isinstance(v, int) and 0 <= v <= 255 for v in rgb)
    written = tuple(c['name'] for c in sorted(_load(dataset['coco_train_ann'])['categories'],
                                              key=lambda c: c['id']))
    assert written == toy.CLASSES
    assert tuple(_load(dataset['meta'])['classes']) == toy.CLASSES
    expected = dict(classes=toy.CLASSES, palette=toy.PALETTE)
    det, seg = Config.fromfile(str(TOY_DET)), Config.fromfile(str(TOY_SEG))
    for cfg in (det, seg):
        for loader in ('train_dataloader', 'val_dataloader', 'test_dataloader'):
            metainfo = cfg[loader].dataset.metainfo
            assert dict(classes=tuple(metainfo.classes),
                        palette=[tuple(c) for c in metainfo.palette]) == expected, loader
    n = len(toy.CLASSES)
    assert det.model.roi_head.bbox_head.num_classes == det.model.roi_head.mask_head.num_classes == n
    assert seg.model.decode_head.num_classes == seg.model.auxiliary_head.num_classes == n
    # the label maps hold 0 (background) and 1..n: 0 is ignored, 1..n become the classes 0..n-1
    assert seg.train_dataloader.dataset.reduce_zero_label is True
    assert seg.val_dataloader.dataset.reduce_zero_label is True


def test_unknown_class_in_the_shared_file_is_refused(tmp_path):
    bad = tmp_path / 'toy_metainfo.py'
    bad.write_text("toy_metainfo = dict(classes=('square', 'hexagon'), palette=[(1, 2, 3), (4, 5, 6)])\n")
    with pytest.raises(ValueError, match=r"among \['circle', 'square', 'triangle'\], got \('square', 'hexagon'\)"):
        toy._load_metainfo(str(bad))


def test_layout(dataset):
    assert toy.DEFAULT_OUT == 'data/toy'  # where the toy configs look
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
            assert set(segm) == {'size', 'counts'}
            assert segm['size'] == [im['height'], im['width']]
            assert isinstance(segm['counts'], str) and segm['counts']
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


def test_rle_round_trip(dataset):
    """Decoded RLE = the visible masks of the scene the JPEG shows; area and bbox agree."""
    for split_idx, split in enumerate(('train', 'val')):
        coco = _coco(dataset[f'coco_{split}_ann'])
        for i, img_id in enumerate(sorted(coco.getImgIds())):
            info = coco.loadImgs(img_id)[0]
            img, objects = toy.render_scene(toy._rng(0, toy._STREAM_COCO, split_idx, i), SMALL['size'])
            with Image.open(Path(dataset[f'coco_{split}_img']) / info['file_name']) as jpg:
                # JPEG error is ~3 grey levels on average; another scene's image differs by >= 24
                assert np.abs(np.asarray(jpg, dtype=np.int16) - img).mean() < 5.0, info['file_name']
            anns = coco.loadAnns(coco.getAnnIds(imgIds=img_id))
            assert [a['category_id'] - 1 for a in anns] == [o['label'] for o in objects]
            union = np.zeros((info['height'], info['width']), dtype=np.int32)
            for ann, obj in zip(anns, objects):
                m = coco.annToMask(ann)
                assert np.array_equal(m.astype(bool), obj['mask']), (info['file_name'], ann['id'])
                assert ann['area'] == m.sum() > 0
                ys, xs = np.nonzero(m)
                assert ann['bbox'] == [xs.min(), ys.min(), xs.max() + 1 - xs.min(), ys.max() + 1 - ys.min()]
                assert mask_utils.area(ann['segmentation']) == ann['area']  # str counts decode as is
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


def test_older_version_or_other_classes_regenerate(tmp_path, monkeypatch):
    kw = dict(seed=0, num_train=3, num_val=2, size=96)
    paths = toy.make_toy_data(str(tmp_path), **kw)
    meta = _load(paths['meta'])
    assert meta['version'] == toy.GENERATOR_VERSION >= 3
    # a set written by version 2 (polygon segmentations) is not up to date
    old = dict(meta, version=2, det_classes=meta['classes'], seg_classes=meta.pop('classes'))
    with open(paths['meta'], 'w') as f:
        json.dump(old, f)
    _set_old_mtime([paths['coco_val_ann']])
    toy.make_toy_data(str(tmp_path), **kw)
    assert os.stat(paths['coco_val_ann']).st_mtime != 1_000_000_000
    assert _load(paths['meta'])['version'] == toy.GENERATOR_VERSION
    # an edited class list (configs/toy/_base_/toy_metainfo.py) regenerates the set in its order
    _set_old_mtime([paths['coco_val_ann']])
    monkeypatch.setattr(toy, 'CLASSES', ('triangle', 'square', 'circle'))
    toy.make_toy_data(str(tmp_path), **kw)
    assert os.stat(paths['coco_val_ann']).st_mtime != 1_000_000_000
    cats = _load(paths['coco_val_ann'])['categories']
    assert [(c['id'], c['name']) for c in cats] == [(1, 'triangle'), (2, 'square'), (3, 'circle')]


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


# ---- mmdet's own loading and evaluation of the generated set (no training) ----------------------
@pytest.fixture(scope='module')
def mmdet_val(tiny):
    """The toy detection config's val dataset (its pipeline) on the tiny set: (cfg, dataset, samples)."""
    import mmdet_plugin  # noqa: F401  (what the config's custom_imports loads)
    from mmdet.registry import DATASETS
    from mmengine.registry import DefaultScope
    cfg = Config.fromfile(str(TOY_DET))
    cfg.val_dataloader.dataset.data_root = tiny['coco_root']
    with DefaultScope.overwrite_default_scope('mmdet'):
        dataset = DATASETS.build(cfg.val_dataloader.dataset)
        samples = [dataset[i] for i in range(len(dataset))]
    return cfg, dataset, samples


def test_mmdet_loads_the_rle_masks(tiny, mmdet_val):
    _cfg, dataset, samples = mmdet_val
    assert type(dataset).__name__ == 'CocoDataset' and dataset.metainfo['classes'] == toy.CLASSES
    coco = _coco(tiny['coco_val_ann'])
    assert len(samples) == TINY['num_val']
    for sample in samples:
        data_sample = sample['data_samples']
        anns = coco.loadAnns(coco.getAnnIds(imgIds=data_sample.img_id))
        gt = data_sample.gt_instances
        assert len(data_sample.ignored_instances) == 0, 'iscrowd=0 RLE must not be ignored'
        assert len(gt) == len(anns) > 0
        assert gt.masks.masks.shape == (len(anns), TINY['size'], TINY['size'])
        for k, ann in enumerate(anns):
            assert np.array_equal(gt.masks.masks[k], coco.annToMask(ann)), ann['id']
            x, y, w, h = ann['bbox']
            assert gt.bboxes.tensor[k].tolist() == [x, y, x + w, y + h]
            assert int(gt.labels[k]) == ann['category_id'] - 1


def _coco_metric(cfg, tiny, dataset, samples, shift=0):
    """COCO bbox/segm mAP of the loaded ground truth (masks rolled by ``shift`` px) as predictions."""
    from mmdet.registry import METRICS
    from mmengine.registry import DefaultScope
    with DefaultScope.overwrite_default_scope('mmdet'):
        metric = METRICS.build(dict(cfg.val_evaluator, ann_file=tiny['coco_val_ann']))
    metric.dataset_meta = dataset.metainfo
    for sample in samples:
        data_sample = sample['data_samples']
        gt = data_sample.gt_instances
        masks = np.roll(gt.masks.masks, shift, axis=2)
        pred = dict(bboxes=gt.bboxes.tensor, labels=gt.labels, scores=torch.ones(len(gt)),
                    masks=torch.from_numpy(masks.astype(bool)))
        metric.process({}, [dict(img_id=data_sample.img_id, ori_shape=data_sample.ori_shape,
                                 pred_instances=pred)])
    return metric.evaluate(len(samples))


def test_coco_metric_on_ground_truth_as_prediction(tiny, mmdet_val):
    cfg, dataset, samples = mmdet_val
    assert list(cfg.val_evaluator.metric) == ['bbox', 'segm']
    exact = _coco_metric(cfg, tiny, dataset, samples)
    assert exact['coco/bbox_mAP'] == 1.0 and exact['coco/segm_mAP'] == 1.0
    # the segm score does compare the masks: predicted masks 3 px off lose it, the boxes keep theirs
    shifted = _coco_metric(cfg, tiny, dataset, samples, shift=3)
    assert shifted['coco/bbox_mAP'] == 1.0 and shifted['coco/segm_mAP'] < 0.9
