"""The metrics reached in work dirs beside the MambaOut paper's numbers, one row per config.

    python tools/analysis_tools/results_table.py work_dirs/mask_rcnn_mambaout_t_1x work_dirs/upernet_mambaout_t_160k_ade20k_512
    python tools/analysis_tools/results_table.py work_dirs/* --format markdown

Per work dir it reads what tools/test.py writes there: ``test_metrics.json`` (single-scale:
``coco/bbox_mAP`` and ``coco/segm_mAP`` in 0..1 for a detector, shown x100 as APb and APm; ``mIoU`` in
0..100 for a segmentor, shown as "mIoU SS") and ``test_metrics_tta.json`` (``tools/test.py --tta``: the
segmentor's multi-scale + flip mIoU, "mIoU MS"). Without ``test_metrics.json`` it falls back on the last
validation metrics that tools/train.py left in mmengine's ``WORK_DIR/TIMESTAMP/vis_data/scalars.json``
(the newest run that has them); such numbers are marked with ``*``.

The config of a row is the one recorded in the JSON file (its file name without ``.py``), or for the
fallback the config mmengine dumps into the work dir (``WORK_DIR/NAME.py``). Paper numbers exist for the
six paper configs; other configs (e.g. configs/toy/*) get ``-`` in the paper columns. ``diff`` is
reached minus paper. Several work dirs of the same config fill one row: a test_metrics file beats the
scalars.json fallback, and otherwise a later work dir on the command line beats an earlier one.
A work dir that does not exist or holds none of these files is an error (exit status 1).

The MambaOut paper publishes no 3x or Cascade result, so the rows of configs/*_3x_ms.py have ``-`` in the
paper columns; for them a second table follows: each such run beside the published results of Swin and
ConvNeXt of the same size with the same recipe (params, FLOPs at 1280x800, box and mask AP on COCO
val2017, and where each number comes from), the run's own params and FLOPs being what
``tools/analysis_tools/get_flops.py`` prints for its config.
"""
import argparse
import glob
import json
import os.path as osp
import re
import sys
from typing import NamedTuple, Optional

# Paper (MambaOut, CVPR 2025): COCO val2017 Mask R-CNN 1x (APb, APm), ADE20K val UperNet
# 160k (mIoU single-scale, multi-scale).
PAPER = {
    'mask_rcnn_mambaout_t_1x': dict(APb=45.1, APm=41.0),
    'mask_rcnn_mambaout_s_1x': dict(APb=47.4, APm=42.7),
    'mask_rcnn_mambaout_b_1x': dict(APb=47.4, APm=43.0),
    'upernet_mambaout_t_160k_ade20k_512': dict(mIoU_SS=47.4, mIoU_MS=48.6),
    'upernet_mambaout_s_160k_ade20k_512': dict(mIoU_SS=49.5, mIoU_MS=50.6),
    'upernet_mambaout_b_160k_ade20k_512': dict(mIoU_SS=49.6, mIoU_MS=51.0),
}


class Published(NamedTuple):
    """A peer's published result for one recipe; None where its source gives no number."""
    backbone: str
    params_m: Optional[float]
    flops_g: Optional[float]
    box_ap: Optional[float]
    mask_ap: Optional[float]
    source: str  # a key of SOURCES


SOURCES = {
    'swin': 'Swin Transformer for Object Detection, the authors\' results table: https://github.com/SwinTransformer/'
            'Swin-Transformer-Object-Detection/blob/ed8d4d8543436ef2344b32e4f7966beffad84355/README.md',
    'convnext': 'ConvNeXt, the authors\' results table: https://github.com/facebookresearch/ConvNeXt/blob/'
                '089ca24854ae6197fdded25688a289ba4492d01f/object_detection/README.md',
    'mmdet': "mmdet 3.3's own training of the config ours inherits (mmdet/.mim/configs/{swin,convnext}/metafile.yml; "
             'it gives no params or FLOPs)',
    'none': 'not published: neither the authors\' tables nor mmdet\'s metafile have this backbone with this recipe',
}

# The recipes of configs/{mask_rcnn,cascade_mask_rcnn}_mambaout_{t,s,b}_3x_ms.py (ImageNet-1k weights, 36
# epochs, multi-scale + crop training, COCO val2017), per backbone size.
RECIPES = {'mask_rcnn': 'Mask R-CNN 3x', 'cascade_mask_rcnn': 'Cascade Mask R-CNN 3x'}
PEERS = {
    'mask_rcnn': {
        't': [Published('Swin-T', 48, 267, 46.0, 41.6, 'swin'), Published('ConvNeXt-T', 48, 262, 46.2, 41.7, 'convnext'),
              Published('Swin-T', None, None, 46.0, 41.7, 'mmdet'),
              Published('ConvNeXt-T', None, None, 46.2, 41.7, 'mmdet')],
        's': [Published('Swin-S', 69, 359, 48.5, 43.3, 'swin'), Published('ConvNeXt-S', None, None, None, None, 'none'),
              Published('Swin-S', None, None, 48.2, 43.2, 'mmdet')],
        'b': [Published('Swin-B', None, None, None, None, 'none'),
              Published('ConvNeXt-B', None, None, None, None, 'none')],
    },
    'cascade_mask_rcnn': {
        't': [Published('Swin-T', 86, 745, 50.4, 43.7, 'swin'), Published('ConvNeXt-T', 86, 741, 50.4, 43.7, 'convnext'),
              Published('ConvNeXt-T', None, None, 50.3, 43.6, 'mmdet')],
        's': [Published('Swin-S', 107, 838, 51.9, 45.0, 'swin'),
              Published('ConvNeXt-S', 108, 827, 51.9, 45.0, 'convnext'),
              Published('ConvNeXt-S', None, None, 51.8, 44.8, 'mmdet')],
        'b': [Published('Swin-B', 145, 982, 51.9, 45.0, 'swin'),
              Published('ConvNeXt-B', 146, 964, 52.7, 45.6, 'convnext')],
    },
}
# What tools/analysis_tools/get_flops.py prints for our configs (params M, FLOPs G at 1280x800); no AP is published.
MAMBAOUT_COMPLEXITY = {
    'mask_rcnn_mambaout_t_3x_ms': (43.1, 262.5),
    'mask_rcnn_mambaout_s_3x_ms': (65.1, 353.8),
    'mask_rcnn_mambaout_b_3x_ms': (99.7, 494.9),
    'cascade_mask_rcnn_mambaout_t_3x_ms': (81.0, 741.0),
    'cascade_mask_rcnn_mambaout_s_3x_ms': (102.9, 832.4),
    'cascade_mask_rcnn_mambaout_b_3x_ms': (137.5, 973.4),
}
RECIPE_CONFIG = re.compile(r'^(?P<recipe>mask_rcnn|cascade_mask_rcnn)_mambaout_(?P<size>[tsb])_3x_ms$')

METRICS = ('APb', 'APm', 'mIoU_SS', 'mIoU_MS')
TITLES = {'APb': 'APb', 'APm': 'APm', 'mIoU_SS': 'mIoU SS', 'mIoU_MS': 'mIoU MS'}
DET, SEG = ('APb', 'APm'), ('mIoU_SS', 'mIoU_MS')
TEST_FILE, TTA_FILE = 'test_metrics.json', 'test_metrics_tta.json'
SCALARS_GLOB = osp.join('*', 'vis_data', 'scalars.json')


class ResultsError(Exception):
    pass


def _find(metrics: dict, name: str):
    """The value of ``name`` or of a prefixed ``PREFIX/name`` key (mmengine evaluators' prefixes)."""
    if name in metrics:
        return metrics[name]
    for key, value in metrics.items():
        if key.endswith('/' + name):
            return value
    return None


def convert(metrics: dict, tta: bool = False) -> dict:
    """Our metric names (APb/APm in %, mIoU in %) from an evaluator's dict; empty if it holds none."""
    out = {}
    bbox, segm = metrics.get('coco/bbox_mAP'), metrics.get('coco/segm_mAP')
    if not tta:  # the columns hold no detection TTA
        if bbox is not None:
            out['APb'] = 100.0 * float(bbox)
        if segm is not None:
            out['APm'] = 100.0 * float(segm)
    miou = _find(metrics, 'mIoU')
    if miou is not None:
        out['mIoU_MS' if tta else 'mIoU_SS'] = float(miou)
    return out


def _read_json(path: str) -> dict:
    try:
        with open(path) as f:
            data = json.load(f)
    except (OSError, ValueError) as exc:
        raise ResultsError(f'{path}: cannot read it as JSON ({exc})')
    if not isinstance(data, dict) or not isinstance(data.get('metrics'), dict):
        raise ResultsError(f'{path}: no "metrics" dict (is it written by tools/test.py?)')
    return data


def _config_name(path) -> str:
    return osp.splitext(osp.basename(str(path)))[0]


def _dumped_config(work_dir: str):
    """The config mmengine's Runner dumps into the work dir (the newest, if several)."""
    configs = sorted(glob.glob(osp.join(work_dir, '*.py')), key=osp.getmtime)
    return _config_name(configs[-1]) if configs else None


def _last_validation(path: str) -> dict:
    """The last line of an mmengine scalars.json that holds validation metrics (JSON lines)."""
    last = {}
    with open(path) as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            try:
                record = json.loads(line)
            except ValueError:
                continue  # a line cut short by a killed run
            if isinstance(record, dict) and convert(record):
                last = record
    return last


def read_work_dir(work_dir: str):
    """[(config name, {metric: value}, from_fallback)] for one work dir; raises ResultsError."""
    if not osp.isdir(work_dir):
        raise ResultsError(f'work dir does not exist: {work_dir}')
    entries = []
    test_found = False
    for name, tta in ((TEST_FILE, False), (TTA_FILE, True)):
        path = osp.join(work_dir, name)
        if not osp.isfile(path):
            continue
        data = _read_json(path)
        values = convert(data['metrics'], tta=tta)
        if not values:
            kind = 'seg mIoU' if tta else 'coco/bbox_mAP, coco/segm_mAP or mIoU'
            print(f'note: {path} holds no {kind} metric; ignored', file=sys.stderr)
            continue
        config = _config_name(data['config']) if data.get('config') else (
            _dumped_config(work_dir) or osp.basename(osp.normpath(work_dir)))
        entries.append((config, values, False))
        test_found = test_found or not tta
    if not test_found:
        # newest run first: mmengine's TIMESTAMP dirs (YYYYmmdd_HHMMSS) sort chronologically
        for path in sorted(glob.glob(osp.join(work_dir, SCALARS_GLOB)), reverse=True):
            values = convert(_last_validation(path))
            if values:
                config = _dumped_config(work_dir) or osp.basename(osp.normpath(work_dir))
                entries.append((config, values, True))
                break
    if not entries:
        raise ResultsError(
            f'no metrics in {work_dir}: looked for {osp.join(work_dir, TEST_FILE)} and '
            f'{osp.join(work_dir, TTA_FILE)} (tools/test.py [--tta]), and for validation metrics in '
            f'{osp.join(work_dir, SCALARS_GLOB)} (tools/train.py)')
    return entries


def collect(work_dirs):
    """{config: {metric: (value, from_fallback)}} in first-seen order, and the list of errors."""
    rows, errors = {}, []
    for work_dir in work_dirs:
        try:
            entries = read_work_dir(work_dir)
        except ResultsError as exc:
            errors.append(str(exc))
            continue
        for config, values, fallback in entries:
            row = rows.setdefault(config, {})
            for metric, value in values.items():
                if metric in row and row[metric][1] is False and fallback:
                    continue  # a test result beats a validation fallback
                row[metric] = (value, fallback)
    return rows, errors


def _fmt(value, digits=2):
    return f'{value:.{digits}f}'


def table_rows(rows: dict):
    """Header and string cells: config | metric | paper | diff for APb, APm, mIoU SS, mIoU MS."""
    header = ['config']
    for metric in METRICS:
        header += [TITLES[metric], 'paper', 'diff']
    body = []
    for config, values in rows.items():
        paper = PAPER.get(config)
        if paper is not None:
            task = DET if 'APb' in paper else SEG
        else:
            task = (DET if any(m in values for m in DET) else ()) + (SEG if any(m in values for m in SEG) else ())
        cells = [config]
        for metric in METRICS:
            if metric not in task:
                cells += ['', '', '']
                continue
            reached = values.get(metric)
            ref = paper.get(metric) if paper else None
            cells.append('' if reached is None else _fmt(reached[0]) + ('*' if reached[1] else ''))
            cells.append('-' if ref is None else _fmt(ref, 1))
            cells.append('' if reached is None or ref is None else f'{reached[0] - ref:+.2f}')
        body.append(cells)
    return header, body


def _cell(value, digits) -> str:
    return '' if value is None else _fmt(value, digits)


def peer_rows(rows: dict):
    """Header, string cells and the SOURCES keys cited ([1] is the first), for the rows of configs/*_3x_ms.py:
    each run (its reached APb/APm, its params and FLOPs) followed by the published Swin and ConvNeXt results of
    its recipe and size. No cells if there is no such row."""
    header = ['config / peer', 'recipe', 'params (M)', 'FLOPs (G)', 'APb', 'APm', 'source']
    body, cited = [], []
    for config, values in rows.items():
        match = RECIPE_CONFIG.match(config)
        if match is None:
            continue
        recipe, size = match.group('recipe', 'size')
        params, flops = MAMBAOUT_COMPLEXITY[config]
        reached = ['' if m not in values else _fmt(values[m][0]) + ('*' if values[m][1] else '') for m in DET]
        body.append([config, RECIPES[recipe], _cell(params, 1), _cell(flops, 1), *reached,
                     'AP: this run; params, FLOPs: tools/analysis_tools/get_flops.py'])
        for peer in PEERS[recipe][size]:
            if peer.source not in cited:
                cited.append(peer.source)
            name = peer.backbone + (' (mmdet)' if peer.source == 'mmdet' else '')
            body.append([f'  {name}', RECIPES[recipe], _cell(peer.params_m, 0), _cell(peer.flops_g, 0),
                         _cell(peer.box_ap, 1), _cell(peer.mask_ap, 1), f'[{cited.index(peer.source) + 1}]'])
    return header, body, cited


def render(header, body, fmt='plain') -> str:
    if fmt == 'markdown':
        lines = ['| ' + ' | '.join(header) + ' |',
                 '|' + '|'.join(['---'] + ['---:'] * (len(header) - 1)) + '|']
        lines += ['| ' + ' | '.join(cells) + ' |' for cells in body]
        return '\n'.join(lines)
    widths = [max(len(r[i]) for r in [header] + body) for i in range(len(header))]
    def line(cells):
        return ' | '.join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths))).rstrip()
    return '\n'.join([line(header), '-+-'.join('-' * w for w in widths)] + [line(cells) for cells in body])


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('work_dirs', nargs='+', metavar='WORK_DIR', help='work dirs of tools/train.py / tools/test.py')
    parser.add_argument('--format', choices=['plain', 'markdown'], default='plain', help='table format')
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    rows, errors = collect(args.work_dirs)
    if errors:
        for message in errors:
            print(f'error: {message}', file=sys.stderr)
        return 1
    header, body = table_rows(rows)
    print(render(header, body, args.format))
    peer_header, peer_body, sources = peer_rows(rows)
    if peer_body:
        print('\nNo published MambaOut result for the 3x recipes; the same recipes with Swin and ConvNeXt '
              '(COCO val2017):')
        print(render(peer_header, peer_body, args.format))
        for number, key in enumerate(sources, 1):
            print(f'[{number}] {SOURCES[key]}')
    if any(v[1] for values in rows.values() for v in values.values()):
        print('\n* last validation metrics in WORK_DIR/TIMESTAMP/vis_data/scalars.json (no test_metrics.json)')
    return 0


if __name__ == '__main__':
    sys.exit(main())
