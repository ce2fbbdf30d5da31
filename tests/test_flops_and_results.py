"""tools/analysis_tools/get_flops.py on paper configs (small input; Mask R-CNN-T also at 1280x800, against
configs/metafile.yml) and tools/analysis_tools/results_table.py on work dirs made here by tools/test.py (toy data,
randomly initialised toy checkpoints), plus its parsing, its metafile reading and error paths.

The slow parts are subprocesses started once per module, two at a time (one thread each, 2 CPU cores).
"""
import json
import os
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import pytest

from conftest import tool_env, untrained_checkpoint
from mambaout_tools.models import build_model, load_config
from tools.analysis_tools import get_flops, results_table
from tools.misc.make_toy_data import make_toy_data

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOOLS = os.path.join(ROOT, 'tools')
DET_CONFIG = os.path.join(ROOT, 'configs', 'mask_rcnn_mambaout_t_1x.py')
CASCADE_CONFIG = os.path.join(ROOT, 'configs', 'cascade_mask_rcnn_mambaout_t_3x_ms.py')
SEG_CONFIG = os.path.join(ROOT, 'configs', 'upernet_mambaout_t_160k_ade20k_512.py')
TOY_DET = os.path.join(ROOT, 'configs', 'toy', 'mask_rcnn_mambaout_toy.py')
TOY_SEG = os.path.join(ROOT, 'configs', 'toy', 'upernet_mambaout_toy.py')
SHAPE = ('256', '256')



def _env():
    return tool_env(OMP_NUM_THREADS='1', MKL_NUM_THREADS='1')


def _run(args, cwd=ROOT, timeout=900):
    return subprocess.run([sys.executable, *args], cwd=cwd, env=_env(), capture_output=True, text=True,
                          timeout=timeout)


def _check(proc):
    assert proc.returncode == 0, f'{proc.args} exited {proc.returncode}:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}'
    return proc


@pytest.fixture(scope='module')
def jobs(tmp_path_factory):
    """Starts every slow subprocess (two at a time) and returns their futures and the work dirs."""
    root = tmp_path_factory.mktemp('flops_results')
    data = make_toy_data(str(root / 'data' / 'toy'), num_train=1, num_val=4)
    pool = ThreadPoolExecutor(max_workers=2)
    get_flops = os.path.join(TOOLS, 'analysis_tools', 'get_flops.py')
    futures = {'flops_det': pool.submit(_run, [get_flops, DET_CONFIG, '--shape', *SHAPE])}
    det_ckpt, seg_ckpt = str(root / 'det.pth'), str(root / 'seg.pth')
    untrained_checkpoint(TOY_DET, det_ckpt)
    untrained_checkpoint(TOY_SEG, seg_ckpt)
    test = os.path.join(TOOLS, 'test.py')
    det_wd, seg_wd = str(root / 'wd_det'), str(root / 'wd_seg')
    # the toy configs read data/toy relative to the cwd (= root); absolute overrides all the same
    det_opts = ['--cfg-options', f'train_dataloader.dataset.data_root={data["coco_root"]}/',
                f'val_dataloader.dataset.data_root={data["coco_root"]}/',
                f'test_dataloader.dataset.data_root={data["coco_root"]}/',
                f'test_evaluator.ann_file={data["coco_val_ann"]}']
    seg_opts = ['--cfg-options', f'train_dataloader.dataset.data_root={data["ade_root"]}',
                f'val_dataloader.dataset.data_root={data["ade_root"]}',
                f'test_dataloader.dataset.data_root={data["ade_root"]}']
    futures['test_det'] = pool.submit(_run, [test, TOY_DET, det_ckpt, '--work-dir', det_wd, *det_opts], str(root))
    futures['test_seg'] = pool.submit(_run, [test, TOY_SEG, seg_ckpt, '--work-dir', seg_wd, *seg_opts], str(root))
    futures['test_seg_tta'] = pool.submit(
        _run, [test, TOY_SEG, seg_ckpt, '--work-dir', seg_wd, '--tta', *seg_opts], str(root))
    # at the default 1280x800: the numbers configs/metafile.yml lists
    futures['flops_det_full'] = pool.submit(_run, [get_flops, DET_CONFIG])
    futures['flops_seg'] = pool.submit(_run, [get_flops, SEG_CONFIG, '--shape', *SHAPE])
    futures['flops_cascade'] = pool.submit(_run, [get_flops, CASCADE_CONFIG, '--shape', *SHAPE])
    yield dict(futures=futures, det_wd=det_wd, seg_wd=seg_wd, root=root)
    pool.shutdown(wait=True, cancel_futures=True)


def _parse_flops(stdout):
    def number(pattern):
        match = re.search(pattern, stdout, re.M)
        assert match, f'{pattern!r} not in the output:\n{stdout}'
        return match.groups()
    params_m, params = number(r'^params\s+([\d.]+) M\s+\(whole model as built: ([\d,]+)\)')
    backbone_m, = number(r'^backbone params\s+([\d.]+) M')
    flops_g, = number(r'^FLOPs\s+([\d.]+) G')
    shape = number(r'^input\s+(\d+)x(\d+) ')
    return dict(params_m=float(params_m), params=int(params.replace(',', '')), backbone_m=float(backbone_m),
                flops_g=float(flops_g), shape=tuple(map(int, shape)))


def _model_parameters(config):
    model = build_model(load_config(config))
    return sum(p.numel() for p in model.parameters()), sum(p.numel() for p in model.backbone.parameters())


@pytest.mark.slow
@pytest.mark.parametrize('key, config', [('flops_det', DET_CONFIG), ('flops_seg', SEG_CONFIG),
                                         ('flops_cascade', CASCADE_CONFIG)])
def test_get_flops_paper_config_small_shape(jobs, key, config):
    out = _parse_flops(_check(jobs['futures'][key].result()).stdout)
    assert out['shape'] == (256, 256)
    assert out['flops_g'] > 0 and out['params_m'] > 0 and out['backbone_m'] > 0
    total, backbone = _model_parameters(config)
    assert out['params'] == total  # the whole model, every model.parameters()
    assert abs(out['params_m'] - total / 1e6) < 0.006
    assert abs(out['backbone_m'] - backbone / 1e6) < 0.006
    # the Gated CNN blocks must be counted (they run as functional ops under no_grad): MambaOut-T alone
    # is 4.49 GFLOPs at 224x224, so 5.9 at 256x256; backbone + FPN/UperNet + heads are far above that
    assert out['flops_g'] > 30


@pytest.mark.slow
def test_get_flops_of_mask_rcnn_tiny_full_size_is_the_metafiles(jobs):
    """What get_flops.py prints at its default shape is what configs/metafile.yml (and the README's model zoo) say:
    params to the parameter, FLOPs to the printed 0.1 G, the backbone that of the ImageNet-1k tiny entry."""
    out = _parse_flops(_check(jobs['futures']['flops_det_full'].result()).stdout)
    assert out['shape'] == (1280, 800)  # as get_flops.py prints it: 1280x800
    metafile = results_table.Metafile()
    listed = metafile.ours('mask_rcnn_mambaout_t_1x')['Metadata']
    assert out['params'] == listed['Parameters']
    assert f"{out['flops_g']:.1f}" == f"{listed['FLOPs'] / 1e9:.1f}"
    assert f"{out['backbone_m']:.2f}" == f"{metafile.by_name['mambaout_tiny']['Metadata']['Parameters'] / 1e6:.2f}"


@pytest.mark.slow
def test_get_flops_cascade_mask_heads_on_100_proposals_as_published(jobs):
    """Swin's and ConvNeXt's Cascade FLOPs count each stage's mask head on 100 proposals (mmdet 2.x); mmdet 3.x's
    _forward would run them on all of them."""
    stdout = _check(jobs['futures']['flops_cascade'].result()).stdout
    match = re.search(r'^RoI heads on\s+(\d+) proposals \(mask head in each of 3 stages on the first 100\)',
                      stdout, re.M)
    assert match, stdout
    proposals = int(match.group(1))
    assert proposals >= 500  # enough for the mask heads' share to show
    cascade = _parse_flops(stdout)['flops_g']
    mask_rcnn = _parse_flops(_check(jobs['futures']['flops_det'].result()).stdout)['flops_g']
    # Same backbone, FPN and RPN: the difference is the RoI heads. Mask heads on every proposal would add at
    # least their four 3x3 convs (256 channels, 14x14) on proposals - 100 more RoIs in each of 3 stages.
    all_proposals_masks = 3 * (proposals - 100) * 4 * 256 * 256 * 9 * 14 * 14 / 1e9
    assert 0 < cascade - mask_rcnn < all_proposals_masks


def test_get_flops_rejects_a_missing_config(tmp_path):
    with pytest.raises(SystemExit, match=f'^error: config file not found: {re.escape(str(tmp_path))}/nope.py$'):
        get_flops.main([str(tmp_path / 'nope.py')])


def _read_metrics(path):
    with open(path) as f:
        return json.load(f)['metrics']


def _rows(stdout):
    """{config: [cells]} of a plain table."""
    rows = {}
    for line in stdout.splitlines():
        cells = [c.strip() for c in line.split('|')]
        if len(cells) == 13 and cells[0] not in ('config', ''):
            rows[cells[0]] = cells
    return rows


@pytest.mark.slow
def test_results_table_on_work_dirs_of_tools_test(jobs):
    for key in ('test_det', 'test_seg', 'test_seg_tta'):
        _check(jobs['futures'][key].result())
    det = _read_metrics(os.path.join(jobs['det_wd'], 'test_metrics.json'))
    seg = _read_metrics(os.path.join(jobs['seg_wd'], 'test_metrics.json'))
    seg_tta = _read_metrics(os.path.join(jobs['seg_wd'], 'test_metrics_tta.json'))

    proc = _check(_run([os.path.join(TOOLS, 'analysis_tools', 'results_table.py'), jobs['det_wd'], jobs['seg_wd']]))
    rows = _rows(proc.stdout)
    assert set(rows) == {'mask_rcnn_mambaout_toy', 'upernet_mambaout_toy'}, proc.stdout
    d = rows['mask_rcnn_mambaout_toy']
    assert d[1:4] == [f'{100 * det["coco/bbox_mAP"]:.2f}', '-', '']
    assert d[4:7] == [f'{100 * det["coco/segm_mAP"]:.2f}', '-', '']
    assert d[7:] == [''] * 6
    s = rows['upernet_mambaout_toy']
    assert s[1:7] == [''] * 6
    assert s[7:] == [f'{seg["mIoU"]:.2f}', '-', '', f'{seg_tta["mIoU"]:.2f}', '-', '']

    md = _check(_run([os.path.join(TOOLS, 'analysis_tools', 'results_table.py'), jobs['det_wd'], jobs['seg_wd'], '--format',
                      'markdown'])).stdout.splitlines()
    assert md[0].startswith('| config | APb | paper | diff | APm |') and md[1].startswith('|---|')
    assert any(line.startswith('| upernet_mambaout_toy |') and f'| {seg_tta["mIoU"]:.2f} |' in line for line in md)


def _write(path, obj):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj))


def test_results_table_paper_numbers_diff_and_fallback(tmp_path, capsys):
    det, seg, val = tmp_path / 'det', tmp_path / 'seg', tmp_path / 'val'
    _write(det / 'test_metrics.json', dict(config='/x/configs/mask_rcnn_mambaout_s_1x.py', checkpoint='c', tta=False,
                                           metrics={'coco/bbox_mAP': 0.476, 'coco/segm_mAP': 0.421}))
    _write(seg / 'test_metrics.json', dict(config='/x/upernet_mambaout_b_160k_ade20k_512.py', checkpoint='c',
                                           tta=False, metrics={'aAcc': 80.0, 'mIoU': 49.93}))
    _write(seg / 'test_metrics_tta.json', dict(config='/x/upernet_mambaout_b_160k_ade20k_512.py', checkpoint='c',
                                               tta=True, metrics={'mIoU': 50.5}))
    # only what tools/train.py leaves: the dumped config and scalars.json; the newest run's last validation
    (val / 'upernet_mambaout_t_160k_ade20k_512.py').parent.mkdir(parents=True)
    (val / 'upernet_mambaout_t_160k_ade20k_512.py').write_text('')
    for stamp, mious in (('20240101_000000', (10.0, 11.0)), ('20240102_000000', (30.0, 46.25))):
        scalars = val / stamp / 'vis_data' / 'scalars.json'
        scalars.parent.mkdir(parents=True)
        scalars.write_text(''.join(json.dumps(r) + '\n' for r in (
            {'loss': 1.0, 'step': 1}, {'aAcc': 70.0, 'mIoU': mious[0], 'step': 100}, {'loss': 0.5, 'step': 101},
            {'aAcc': 75.0, 'mIoU': mious[1], 'step': 200})))
    assert results_table.main([str(det), str(seg), str(val)]) == 0
    rows = _rows(capsys.readouterr().out)
    assert rows['mask_rcnn_mambaout_s_1x'][1:7] == ['47.60', '47.4', '+0.20', '42.10', '42.7', '-0.60']
    assert rows['mask_rcnn_mambaout_s_1x'][7:] == [''] * 6
    assert rows['upernet_mambaout_b_160k_ade20k_512'][7:] == ['49.93', '49.6', '+0.33', '50.50', '51.0', '-0.50']
    assert rows['upernet_mambaout_t_160k_ade20k_512'][7:] == ['46.25*', '47.4', '-1.15', '', '48.6', '']


def test_results_table_errors_name_the_files_looked_for(tmp_path):
    empty = tmp_path / 'empty'
    empty.mkdir()
    proc = _run([os.path.join(TOOLS, 'analysis_tools', 'results_table.py'), str(empty)])
    assert proc.returncode != 0
    for name in ('test_metrics.json', 'test_metrics_tta.json', 'scalars.json'):
        assert name in proc.stderr, proc.stderr
    assert str(empty) in proc.stderr

    proc = _run([os.path.join(TOOLS, 'analysis_tools', 'results_table.py'), str(tmp_path / 'missing')])
    assert proc.returncode != 0 and 'does not exist' in proc.stderr and 'missing' in proc.stderr


def _peer_table(stdout):
    """{first cell: cells} of the table of 3x runs beside their published peers, and its footnotes."""
    lines = stdout.split('the same recipes with Swin and ConvNeXt')[1].splitlines()
    rows = {}
    for line in lines:
        cells = [c.strip() for c in line.split('|')]
        if len(cells) == 7 and cells[0] != 'config / peer':
            rows.setdefault(cells[0], []).append(cells[1:])
    notes = [line for line in lines if line.startswith('[')]
    return rows, notes


def test_results_table_puts_3x_runs_beside_swin_and_convnext(tmp_path, capsys):
    cascade, mask_b = tmp_path / 'cascade_t', tmp_path / 'mask_b'
    _write(cascade / 'test_metrics.json', dict(config='/x/cascade_mask_rcnn_mambaout_t_3x_ms.py', metrics={
        'coco/bbox_mAP': 0.501, 'coco/segm_mAP': 0.436}))
    _write(mask_b / 'test_metrics.json', dict(config='/x/mask_rcnn_mambaout_b_3x_ms.py', metrics={
        'coco/bbox_mAP': 0.481, 'coco/segm_mAP': 0.431}))
    assert results_table.main([str(cascade), str(mask_b)]) == 0
    out = capsys.readouterr().out
    main = _rows(out)
    # no MambaOut paper number for the 3x recipes
    assert main['cascade_mask_rcnn_mambaout_t_3x_ms'][1:7] == ['50.10', '-', '', '43.60', '-', '']
    peers, notes = _peer_table(out)
    run, = peers['cascade_mask_rcnn_mambaout_t_3x_ms']
    # params and FLOPs as configs/metafile.yml has them (tools/analysis_tools/get_flops.py's count)
    assert run[:5] == ['Cascade Mask R-CNN 3x', '80.97', '741.0', '50.10', '43.60']
    # the authors' tables: Swin [1] and ConvNeXt [2]; mmdet's own run of the inherited config [3]
    assert peers['Swin-T'] == [['Cascade Mask R-CNN 3x', '86', '745', '50.4', '43.7', '[1]']]
    assert peers['ConvNeXt-T'] == [['Cascade Mask R-CNN 3x', '86', '741', '50.4', '43.7', '[2]'],
                                   ['Cascade Mask R-CNN 3x', '', '', '50.3', '43.6', '[3]']]
    assert 'Swin-Transformer-Object-Detection' in notes[0] and 'facebookresearch/ConvNeXt' in notes[1]
    assert 'metafile.yml' in notes[2]
    # Mask R-CNN 3x with Swin-B / ConvNeXt-B was never published: empty cells and a footnote saying so
    assert peers['mask_rcnn_mambaout_b_3x_ms'][0][1:5] == ['99.70', '494.9', '48.10', '43.10']
    assert peers['Swin-B'] == peers['ConvNeXt-B'] == [['Mask R-CNN 3x', '', '', '', '', '[4]']]
    assert notes[3].startswith('[4] not published')
    assert len(notes) == 4


def test_results_table_without_3x_runs_prints_no_peer_table(tmp_path, capsys):
    det = tmp_path / 'det'
    _write(det / 'test_metrics.json', dict(config='/x/mask_rcnn_mambaout_t_1x.py', metrics={'coco/bbox_mAP': 0.45}))
    assert results_table.main([str(det)]) == 0
    assert 'Swin' not in capsys.readouterr().out


def test_published_mmdet_numbers_are_those_of_the_installed_metafiles():
    """Every 36-epoch Swin/ConvNeXt Mask R-CNN and Cascade result in mmdet's metafiles (the amp configs ours
    inherit) is an entry of our metafile's 'mmdet 3.3' collection, with its name, backbone, box and mask AP, and
    no other entry is there."""
    import mmdet
    import yaml
    configs = os.path.join(os.path.dirname(mmdet.__file__), '.mim', 'configs')
    expected = set()
    for family, name in (('swin', 'Swin'), ('convnext', 'ConvNeXt')):
        with open(os.path.join(configs, family, 'metafile.yml')) as f:
            models = yaml.safe_load(f)['Models']
        for model in models:
            match = re.match(rf'^(mask-rcnn|cascade-mask-rcnn)_{family}-([tsb])-p4-w7_fpn_.*amp-ms-crop-3x_coco$',
                             model['Name'])
            if match is None or model['Metadata']['Epochs'] != 36:
                continue
            aps = {r['Task']: next(iter(r['Metrics'].values())) for r in model['Results']}
            expected.add((model['Name'], f'{name}-{match.group(2).upper()}', aps['Object Detection'],
                          aps['Instance Segmentation']))
    metafile = results_table.Metafile()
    listed = {(m['Name'], results_table.backbone_of(m), *(results_table.metrics_of(m)[k] for k in ('APb', 'APm')))
              for m in metafile.of('mmdet 3.3')}
    assert len(expected) == 5 and listed == expected
    assert all(results_table.recipe_of(m)[1] == 36 for m in metafile.of('mmdet 3.3'))


@pytest.mark.parametrize('argv', [[], ['work_dirs/x', '--table', 'zoo']])
def test_results_table_wants_work_dirs_or_a_table(argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        results_table.parse_args(argv)
    assert exit_info.value.code == 2
    assert 'give WORK_DIR... or --table NAME (one of the two)' in capsys.readouterr().err


def test_results_table_without_its_metafile_is_one_error(tmp_path, capsys):
    assert results_table.main(['--table', 'zoo', '--metafile', str(tmp_path / 'none.yml')]) == 1
    err = capsys.readouterr().err
    assert err.startswith('error: cannot read the model index ') and 'none.yml' in err
