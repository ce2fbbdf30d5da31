"""The metrics reached in work dirs beside the MambaOut paper's numbers, one row per config; and the
documentation tables of configs/metafile.yml.

    python tools/analysis_tools/results_table.py work_dirs/mask_rcnn_mambaout_t_1x work_dirs/upernet_mambaout_t_160k_ade20k_512
    python tools/analysis_tools/results_table.py work_dirs/* --format markdown
    python tools/analysis_tools/results_table.py --table zoo        # the README's model zoo (also: variants, peers)

Per work dir it reads what tools/test.py writes there: ``test_metrics.json`` (single-scale:
``coco/bbox_mAP`` and ``coco/segm_mAP`` in 0..1 for a detector, shown x100 as APb and APm; ``mIoU`` in
0..100 for a segmentor, shown as "mIoU SS") and ``test_metrics_tta.json`` (``tools/test.py --tta``: the
segmentor's multi-scale + flip mIoU, "mIoU MS"). Without ``test_metrics.json`` it falls back on the last
validation metrics that tools/train.py left in mmengine's ``WORK_DIR/TIMESTAMP/vis_data/scalars.json``
(the newest run that has them); such numbers are marked with ``*``.

The config of a row is the one recorded in the JSON file (its file name without ``.py``), or for the
fallback the config mmengine dumps into the work dir (``WORK_DIR/NAME.py``). The paper numbers are the
``Results`` of the config's entry in configs/metafile.yml; configs without one (the 3x configs,
configs/toy/*) get ``-`` in the paper columns. ``diff`` is reached minus paper. Several work dirs of the
same config fill one row: a test_metrics file beats the scalars.json fallback, and otherwise a later work
dir on the command line beats an earlier one. A work dir that does not exist or holds none of these files
is an error (exit status 1).

The MambaOut paper publishes no 3x or Cascade result; for the rows of configs whose recipe other backbones
published (the metafile's Swin and ConvNeXt entries: same detector, same epochs) a second table follows:
each such run beside those results of the same size (params, FLOPs at 1280x800, box and mask AP on COCO
val2017, and where each number comes from), the run's own params and FLOPs being what
``tools/analysis_tools/get_flops.py`` counts for its config.

``--table zoo|variants|peers`` prints, in markdown, a table of the metafile alone (no work dirs): the model
zoo of the README, the backbone variants of docs/weights.md, the published peers of docs/schedules.md.
tests/test_docs.py holds those documents equal to this output.
"""
import argparse
import glob
import json
import os.path as osp
import sys
from typing import Dict, List, Optional

import yaml

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
METAFILE = osp.join(ROOT, 'configs', 'metafile.yml')
OURS, VARIANTS = 'MambaOut', 'MambaOut ImageNet-1k'  # the metafile's collections of this repository
PEER_FAMILIES = ('Swin', 'ConvNeXt')  # the other backbones the 3x configs are compared with
NOT_PUBLISHED = ("not published: neither the authors' tables nor mmdet's metafile have this backbone with this "
                 'recipe')
# The metafile's metric names (mmdet's and mmseg's) -> the columns here.
METRIC_NAMES = {'box AP': 'APb', 'mask AP': 'APm', 'mIoU': 'mIoU_SS', 'mIoU(ms+flip)': 'mIoU_MS'}

METRICS = ('APb', 'APm', 'mIoU_SS', 'mIoU_MS')
TITLES = {'APb': 'APb', 'APm': 'APm', 'mIoU_SS': 'mIoU SS', 'mIoU_MS': 'mIoU MS'}
DET, SEG = ('APb', 'APm'), ('mIoU_SS', 'mIoU_MS')
TEST_FILE, TTA_FILE = 'test_metrics.json', 'test_metrics_tta.json'
SCALARS_GLOB = osp.join('*', 'vis_data', 'scalars.json')
TABLES = ('zoo', 'variants', 'peers')


class ResultsError(Exception):
    pass


class Metafile:
    """configs/metafile.yml (OpenMMLab's model-index format): ``Collections`` and ``Models``."""

    def __init__(self, path: str = METAFILE):
        try:
            with open(path) as f:
                data = yaml.safe_load(f)
            self.collections = {c['Name']: c for c in data['Collections']}
            self.models = list(data['Models'])
        except (OSError, yaml.YAMLError, KeyError, TypeError) as exc:
            raise ResultsError(f'cannot read the model index {path}: {exc}') from None
        self.by_name = {m['Name']: m for m in self.models}

    def of(self, collection: str) -> List[dict]:
        return [m for m in self.models if m['In Collection'] == collection]

    def ours(self, config: str) -> Optional[dict]:
        """The entry of one of our configs, by its name (file name without ``.py``)."""
        model = self.by_name.get(config)
        return model if model is not None and model['In Collection'] == OURS else None

    def source(self, collection: str) -> str:
        """Where a collection's numbers come from: its ``Source`` and ``Code`` URL."""
        entry = self.collections[collection]
        return f"{entry['Source']}: {entry['Code']['URL']}"

    def peers(self, model: dict) -> List[dict]:
        """The other backbones' entries with ``model``'s detector and epochs (any size), in metafile order."""
        return [m for m in self.models if m['In Collection'] not in (OURS, VARIANTS)
                and recipe_of(m) == recipe_of(model)]


def metrics_of(model: dict) -> Dict[str, float]:
    """{APb, APm, mIoU_SS, mIoU_MS: value} of a metafile entry's ``Results``; empty without results."""
    return {METRIC_NAMES[name]: value for result in model.get('Results') or []
            for name, value in result['Metrics'].items() if name in METRIC_NAMES}


def backbone_of(model: dict) -> str:
    return model['Metadata']['Architecture'][0]


def size_of(model: dict) -> str:
    """'T', 'S' or 'B' of 'MambaOut-T', 'Swin-T', ..."""
    return backbone_of(model).rsplit('-', 1)[1]


def recipe_of(model: dict):
    """(the detector / segmentor with its neck, epochs or iterations) of a metafile entry."""
    meta = model['Metadata']
    return tuple(meta['Architecture'][1:]), meta.get('Epochs'), meta.get('Iterations')


def recipe_title(model: dict) -> str:
    (method, *_), epochs, iterations = recipe_of(model)
    return f'{method} {epochs // 12}x' if epochs else f'{method} {iterations // 1000}k'


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


def table_rows(rows: dict, metafile: Metafile):
    """Header and string cells: config | metric | paper | diff for APb, APm, mIoU SS, mIoU MS."""
    header = ['config']
    for metric in METRICS:
        header += [TITLES[metric], 'paper', 'diff']
    body = []
    for config, values in rows.items():
        model = metafile.ours(config)
        paper = metrics_of(model) if model is not None else {}
        if model is not None:
            task = SEG if 'UperNet' in recipe_of(model)[0] else DET
        else:
            task = (DET if any(m in values for m in DET) else ()) + (SEG if any(m in values for m in SEG) else ())
        cells = [config]
        for metric in METRICS:
            if metric not in task:
                cells += ['', '', '']
                continue
            reached = values.get(metric)
            ref = paper.get(metric)
            cells.append('' if reached is None else _fmt(reached[0]) + ('*' if reached[1] else ''))
            cells.append('-' if ref is None else _fmt(ref, 1))
            cells.append('' if reached is None or ref is None else f'{reached[0] - ref:+.2f}')
        body.append(cells)
    return header, body


def _cell(value, digits) -> str:
    return '' if value is None else _fmt(value, digits)


def _params_flops(model: dict, ours: bool):
    """Params in M and FLOPs in G as get_flops.py prints them (ours) or to 1 M / 1 G as published (peers)."""
    meta = model['Metadata']
    params, flops = meta.get('Parameters'), meta.get('FLOPs')
    return (_cell(None if params is None else params / 1e6, 2 if ours else 0),
            _cell(None if flops is None else flops / 1e9, 1 if ours else 0))


def published_peers(metafile: Metafile, model: dict):
    """[(label, entry or None, collection or None)] for one of our configs: the other backbones' entries of its
    recipe and size, by collection in metafile order, then a ``None`` entry for each of ``PEER_FAMILIES`` that
    none of them has. Empty if no other backbone published the recipe."""
    peers = metafile.peers(model)
    if not peers:
        return []
    size = size_of(model)
    found, families = [], set()
    for collection in metafile.collections:
        for peer in peers:
            if peer['In Collection'] == collection and size_of(peer) == size:
                found.append((backbone_of(peer), peer, collection))
                families.add(backbone_of(peer).rsplit('-', 1)[0])
    return found + [(f'{family}-{size}', None, None) for family in PEER_FAMILIES if family not in families]


def peer_rows(rows: dict, metafile: Metafile):
    """Header, string cells and the sources cited ([1] is the first), for the rows of configs whose recipe other
    backbones published: each run (its reached APb/APm, its params and FLOPs) followed by the published Swin and
    ConvNeXt results of its recipe and size. No cells if there is no such row."""
    header = ['config / peer', 'recipe', 'params (M)', 'FLOPs (G)', 'APb', 'APm', 'source']
    body, cited = [], []

    def cite(source):
        if source not in cited:
            cited.append(source)
        return f'[{cited.index(source) + 1}]'

    for config, values in rows.items():
        model = metafile.ours(config)
        peers = published_peers(metafile, model) if model is not None else []
        if not peers:
            continue
        recipe = recipe_title(model)
        reached = ['' if m not in values else _fmt(values[m][0]) + ('*' if values[m][1] else '') for m in DET]
        body.append([config, recipe, *_params_flops(model, ours=True), *reached,
                     'AP: this run; params, FLOPs: tools/analysis_tools/get_flops.py'])
        for label, peer, collection in peers:
            if peer is None:
                body.append([f'  {label}', recipe, '', '', '', '', cite(NOT_PUBLISHED)])
                continue
            published = metrics_of(peer)
            body.append([f'  {label}', recipe, *_params_flops(peer, ours=False), _cell(published.get('APb'), 1),
                         _cell(published.get('APm'), 1), cite(metafile.source(collection))])
    return header, body, cited


def _link(url: str) -> str:
    """A markdown link named by the file (a release) or the hub repository (Hugging Face) it points to."""
    hub = 'https://huggingface.co/'
    return f'[{url[len(hub):] if url.startswith(hub) else osp.basename(url)}]({url})'


def zoo_table(metafile: Metafile):
    """The README's model zoo: every config of ours, its params, FLOPs, paper result and weights."""
    header = ['config', 'method', 'backbone', 'schedule', 'params', 'FLOPs',
              'paper: COCO box / mask AP, ADE20K mIoU / ms+flip', 'weights']
    body = []
    for model in metafile.of(OURS):
        meta = model['Metadata']
        techniques = meta.get('Training Techniques', [])
        schedule = f"{meta['Epochs']} epochs" if meta.get('Epochs') else f"{meta['Iterations'] // 1000}k iterations"
        schedule += ', multi-scale' if 'Multi-Scale Training' in techniques else ''
        schedule += ', layer-wise lr decay' if 'Layer-wise LR Decay' in techniques else ''
        params, flops = _params_flops(model, ours=True)
        paper = metrics_of(model)
        result = ' / '.join(_fmt(paper[m], 1) for m in (DET if 'APb' in paper else SEG)) if paper else '–'
        body.append([f"[{osp.basename(model['Config'])}]({model['Config']})", ' + '.join(meta['Architecture'][1:]),
                     backbone_of(model), schedule, f'{params} M', f'{flops} G', result,
                     _link(model['Weights']) if model.get('Weights') else '–'])
    return header, body, []


def variants_table(metafile: Metafile):
    """docs/weights.md's variants: depths and dims of backbones/mambaout.py, params, top-1 and weights."""
    from backbones.mambaout import arch_settings  # only here: it imports torch
    header = ['arch', 'depths', 'dims', 'backbone params', 'ImageNet-1k top-1', 'weights']
    body = []
    for model in metafile.of(VARIANTS):
        arch = model['Name'][len('mambaout_'):]
        settings = arch_settings[arch]
        top1 = [r['Metrics']['Top 1 Accuracy'] for r in model.get('Results') or []]
        body.append([f'`{arch}`', '-'.join(map(str, settings['depths'])), '-'.join(map(str, settings['dims'])),
                     f"{model['Metadata']['Parameters'] / 1e6:.2f} M", _fmt(top1[0], 1) if top1 else 'timm',
                     _link(model['Weights'])])
    return header, body, []


def peers_table(metafile: Metafile):
    """docs/schedules.md's comparison: per recipe and size of our configs that other backbones' recipes share,
    our params and FLOPs beside each source's published params, FLOPs and box / mask AP."""
    sources = [name for name in metafile.collections if name not in (OURS, VARIANTS)]
    header = ['recipe', 'size', 'MambaOut: params / FLOPs'] + [f'{name} [{i}]' for i, name in enumerate(sources, 1)]
    body = []
    for model in metafile.of(OURS):
        peers = published_peers(metafile, model)
        if not peers:
            continue
        params, flops = _params_flops(model, ours=True)
        cells = [recipe_title(model), size_of(model), f'{params} M / {flops} G']
        for name in sources:
            entries = []
            for label, peer, collection in peers:
                if collection == name:
                    published = metrics_of(peer)
                    p, f = _params_flops(peer, ours=False)
                    size = f'{p} M / {f} G, ' if p else ''
                    entries.append(f"{label}: {size}{published['APb']:.1f} / {published['APm']:.1f}")
            cells.append('; '.join(entries) or 'not published')
        body.append(cells)
    return header, body, [metafile.source(name) for name in sources]


def render(header, body, fmt='plain', numbers=True) -> str:
    """A plain or markdown table; ``numbers``: the columns after the first are right-aligned."""
    if fmt == 'markdown':
        lines = ['| ' + ' | '.join(header) + ' |',
                 '|' + '|'.join(['---'] + ['---:' if numbers else '---'] * (len(header) - 1)) + '|']
        lines += ['| ' + ' | '.join(cells) + ' |' for cells in body]
        return '\n'.join(lines)
    widths = [max(len(r[i]) for r in [header] + body) for i in range(len(header))]
    def line(cells):
        return ' | '.join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths))).rstrip()
    return '\n'.join([line(header), '-+-'.join('-' * w for w in widths)] + [line(cells) for cells in body])


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('work_dirs', nargs='*', metavar='WORK_DIR', help='work dirs of tools/train.py / tools/test.py')
    parser.add_argument('--format', choices=['plain', 'markdown'],
                        help='table format (default: plain for work dirs, markdown for --table)')
    parser.add_argument('--table', choices=TABLES, help='print a documentation table of configs/metafile.yml instead')
    parser.add_argument('--metafile', default=METAFILE, help='the model index to read (default: %(default)s)')
    args = parser.parse_args(argv)
    if bool(args.work_dirs) == bool(args.table):
        parser.error('give WORK_DIR... or --table NAME (one of the two)')
    args.format = args.format or ('markdown' if args.table else 'plain')
    return args


def main(argv=None):
    args = parse_args(argv)
    try:
        metafile = Metafile(args.metafile)
    except ResultsError as exc:
        print(f'error: {exc}', file=sys.stderr)
        return 1
    if args.table:
        header, body, notes = {'zoo': zoo_table, 'variants': variants_table, 'peers': peers_table}[args.table](metafile)
        print(render(header, body, args.format, numbers=False))
        for number, note in enumerate(notes, 1):
            print(f'\n[{number}] {note}')
        return 0
    rows, errors = collect(args.work_dirs)
    if errors:
        for message in errors:
            print(f'error: {message}', file=sys.stderr)
        return 1
    header, body = table_rows(rows, metafile)
    print(render(header, body, args.format))
    peer_header, peer_body, sources = peer_rows(rows, metafile)
    if peer_body:
        print('\nNo published MambaOut result for the 3x recipes; the same recipes with Swin and ConvNeXt '
              '(COCO val2017):')
        print(render(peer_header, peer_body, args.format))
        for number, source in enumerate(sources, 1):
            print(f'[{number}] {source}')
    if any(v[1] for values in rows.values() for v in values.values()):
        print('\n* last validation metrics in WORK_DIR/TIMESTAMP/vis_data/scalars.json (no test_metrics.json)')
    return 0


if __name__ == '__main__':
    sys.exit(main())
