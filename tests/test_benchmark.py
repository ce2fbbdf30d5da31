"""tools/analysis_tools/benchmark.py end to end on CPU at small shapes, and its errors (the GatedCNNBlock path it measures is
tested in test_gated_cnn_kernel.py)."""
import math
import os
import os.path as osp
import re

import pytest
import torch

from tools.analysis_tools import benchmark

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))

DET = osp.join(ROOT, 'configs', 'mask_rcnn_mambaout_t_1x.py')
SEG = osp.join(ROOT, 'configs', 'upernet_mambaout_t_160k_ade20k_512.py')
FAST = ['--iters', '1', '--warmup', '0', '--batch-size', '1', '--threads', '1']
LABELS = {'ours': 'MambaOut-tiny (ours)', 'timm': 'timm mambaout_tiny wrapper', 'convnext': 'ConvNeXt (convnext_tiny)'}


def table_rows(out):
    return {row[0]: row[1:] for row in (
        [cell.strip() for cell in line.strip('|').split('|')] for line in out.splitlines()
        if line.startswith('| ') and not line.startswith('| variant'))}


def check_run(out, results, keys):
    rows = table_rows(out)
    assert set(rows) == {LABELS[k] for k in keys}
    for cells in rows.values():
        numbers = [float(c) for c in cells]
        assert all(math.isfinite(v) and v > 0 for v in numbers), cells
    assert set(results) == set(keys)
    for result in results.values():
        assert all(math.isfinite(v) and v > 0 for v in result.values()), result
    if 'timm' in keys:
        assert re.search(r'ratio ours / timm wrapper: .*\d\.\d{3}', out)
        assert 'ratio ours / ConvNeXt:' in out
    assert 'peak memory:' in out


@pytest.mark.slow
def test_det_backbone_only_compare(capsys):
    results = benchmark.main([DET, '--shape', '64', '96', '--backbone-only', '--compare', *FAST])
    out = capsys.readouterr().out
    check_run(out, results, ('ours', 'timm', 'convnext'))
    assert 'input 1x3x64x96' in out and 'fwd+bwd ms/iter' in out


@pytest.mark.slow
def test_inference_only_times_inference_alone(capsys):
    results = benchmark.main([DET, '--shape', '64', '96', '--backbone-only', '--inference-only', '--compare', *FAST])
    out = capsys.readouterr().out
    assert 'timing train' not in out and 'peak memory' not in out
    assert set(results) == {'ours', 'timm', 'convnext'}
    for result in results.values():
        assert math.isfinite(result['infer']) and result['infer'] > 0
        assert math.isnan(result['train']) and math.isnan(result['mem'])
    assert re.search(r'ratio ours / timm wrapper: inference \d\.\d{3}', out)


@pytest.mark.slow
def test_det_full_model_train_and_predict(capsys):
    results = benchmark.main([DET, '--shape', '64', '96', *FAST])
    out = capsys.readouterr().out
    check_run(out, results, ('ours',))
    assert 'train step ms/iter' in out and '(mmdet)' in out


@pytest.mark.slow
def test_seg_full_model_compare(capsys):
    # batch 2: UperNet's pooling module has BatchNorms on 1x1 maps
    results = benchmark.main([SEG, '--shape', '64', '64', '--compare', *FAST, '--batch-size', '2'])
    out = capsys.readouterr().out
    check_run(out, results, ('ours', 'timm', 'convnext'))
    assert '(mmseg)' in out


@pytest.mark.slow
def test_seg_batch_one_is_a_clear_error(capsys):
    with pytest.raises(SystemExit):
        benchmark.main([SEG, '--shape', '64', '64', *FAST])
    assert 'use --batch-size 2 or more' in capsys.readouterr().err


@pytest.mark.parametrize('option', ['--amp', '--saved-activations'])
def test_bfloat16_detector_on_cpu_is_one_clear_error(option, capsys):
    """mmcv 2.1.0's CPU NMS has no bfloat16 kernel: one message saying what to do, not mmcv's RuntimeError."""
    with pytest.raises(SystemExit) as exc:
        benchmark.main([DET, option, '--device', 'cpu', '--shape', '64', '64', *FAST])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert f'{option} of a whole detector on CPU' in err and "mmcv 2.1.0's CPU NMS" in err
    assert 'add --backbone-only, drop --amp, or use --device cuda' in err


def test_default_shapes():
    from mmengine.config import Config
    assert benchmark.default_shape(Config.fromfile(DET), 'mmdet') == (800, 1344)
    assert benchmark.default_shape(Config.fromfile(SEG), 'mmseg') == (512, 512)


def test_bad_config_path_exits_nonzero_and_names_it(capsys):
    with pytest.raises(SystemExit) as exc:
        benchmark.main(['configs/nope.py'])
    assert exc.value.code == 2
    assert 'benchmark.py: error: argument config: config file not found: configs/nope.py' in capsys.readouterr().err


def test_cfg_options_change_the_model_measured(capsys):
    benchmark.main([DET, '--backbone-only', '--shape', '64', '64', *FAST, '--cfg-options', 'model.backbone.arch=femto'])
    assert 'built MambaOut-femto (ours): backbone' in capsys.readouterr().out


@pytest.mark.parametrize('shape, bad', [(['0', '64'], '0'), (['64', 'x'], 'x'), (['16', '64'], '16')])
def test_bad_shape_is_a_clear_error(shape, bad, capsys):
    with pytest.raises(SystemExit) as exc:
        benchmark.main([DET, '--shape', *shape])
    assert exc.value.code != 0
    assert f'argument --shape: must be an integer >= 32, got {bad}' in capsys.readouterr().err


def test_bad_numbers_and_device(capsys):
    for argv, message in (([DET, '--iters', '0'], 'argument --iters: must be an integer >= 1, got 0'),
                          ([DET, '--batch-size', '-1'], 'argument --batch-size: must be an integer >= 1, got -1'),
                          ([DET, '--warmup', '-2'], 'argument --warmup: must be an integer >= 0, got -2')):
        with pytest.raises(SystemExit):
            benchmark.main(argv)
        assert message in capsys.readouterr().err
    if not torch.cuda.is_available():
        with pytest.raises(SystemExit):
            benchmark.main([DET, '--device', 'cuda'])
        assert 'CUDA is not available' in capsys.readouterr().err


def test_saved_activations_ratios_at_a_small_size(capsys):
    # What autograd keeps for backward scales with the pixels, so the ratios at 64x96 are those at 800x1344
    # (measured there: docs/benchmarks.md). With CUDA's autocast rules: ours / timm 0.530, ours / ConvNeXt
    # 0.708; the GPU report's targets are <= 0.55 and <= 1.0 (docs/gpu_report.md).
    results = benchmark.main([DET, '--shape', '64', '96', '--backbone-only', '--compare', '--saved-activations',
                              '--batch-size', '1'])
    out = capsys.readouterr().out
    assert 'timing' not in out and set(table_rows(out)) == set(LABELS.values())
    saved = {key: result['saved_mib'] for key, result in results.items()}
    assert saved['ours'] <= 0.55 * saved['timm'] and saved['ours'] <= 1.0 * saved['convnext']
    assert re.search(r'ratio ours / timm wrapper: saved activations 0\.5[0-5]\d', out)


@pytest.mark.slow  # three whole segmentors, about a minute
def test_saved_activations_of_the_whole_model(capsys):
    results = benchmark.main([SEG, '--shape', '64', '64', '--compare', '--saved-activations', '--batch-size', '2'])
    out = capsys.readouterr().out
    assert '(loss)' in out and 'ratio ours / ConvNeXt: saved activations' in out
    # the same head on each backbone: ours still keeps the least
    assert results['ours']['saved_mib'] < min(results['timm']['saved_mib'], results['convnext']['saved_mib'])


@pytest.mark.parametrize('extra', ['--inference-only', '--compile'])
def test_saved_activations_refuses_what_it_cannot_count(extra, capsys):
    with pytest.raises(SystemExit) as exc:
        benchmark.main([DET, '--saved-activations', extra])
    assert exc.value.code == 2
    assert f'--saved-activations counts what an eager training forward saves: drop {extra}' in capsys.readouterr().err
