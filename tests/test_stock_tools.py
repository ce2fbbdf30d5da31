"""The analysis and model-converter scripts shipped inside the installed mmdet and mmseg packages
(``<site-packages>/{mmdet,mmseg}/.mim/tools/...``) and both libraries' inferencers, run as a user runs them on
our configs: the toy configs on a small generated toy set, with untrained checkpoints made here (nothing is
trained or downloaded).

The scripts that run a whole test loop (``test.py``) are processes; the light ones run in this process from
their file with their command line (``runpy``), which spares an interpreter start each. What the stock
scripts cannot do with any config (mmseg's ``get_flops.py``, mmdet's ``benchmark.py --task inference`` on a
machine without CUDA, mmseg's ``confusion_matrix.py`` on a ``reduce_zero_label`` set) is in docs/train_test.md's
list of stock tools, with what to run instead.
"""
import importlib
import os
import runpy
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import untrained_checkpoint
from PIL import Image

from tools.misc.make_toy_data import make_toy_data

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DET = os.path.join(ROOT, 'configs', 'toy', 'mask_rcnn_mambaout_toy.py')
SEG = os.path.join(ROOT, 'configs', 'toy', 'upernet_mambaout_toy.py')
CUSTOM_SEG = os.path.join(ROOT, 'configs', 'custom', 'upernet_mambaout_t_custom.py')
NUM_VAL = 2


def stock_script(library, name):
    """The script as installed with the package."""
    return os.path.join(os.path.dirname(importlib.import_module(library).__file__), '.mim', 'tools', name)


def run_process(args, cwd):
    env = dict(os.environ, PYTHONPATH=ROOT, OMP_NUM_THREADS='1')
    result = subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout + result.stderr


def run_script(library, name, *args, cwd, monkeypatch, capsys):
    """The stock script ``name`` of ``library`` run in this process as ``python SCRIPT ARGS`` in ``cwd``;
    returns what it printed."""
    script = stock_script(library, name)
    monkeypatch.chdir(cwd)
    monkeypatch.setattr(sys, 'argv', [script, *map(str, args)])
    capsys.readouterr()
    runpy.run_path(script, run_name='__main__')
    captured = capsys.readouterr()
    return captured.out + captured.err


@pytest.fixture(scope='module')
def toy(tmp_path_factory):
    """A working directory with the toy set at data/toy (where the toy configs look) and an untrained detector
    and segmentor checkpoint."""
    import matplotlib
    matplotlib.use('Agg')  # the scripts' plots go to files
    work = tmp_path_factory.mktemp('stock_tools')
    make_toy_data(str(work / 'data' / 'toy'), num_train=2, num_val=NUM_VAL, size=64)
    return dict(work=work, det=untrained_checkpoint(DET, work / 'det.pth'),
                seg=untrained_checkpoint(SEG, work / 'seg.pth'))


def published(library, script, checkpoint, out, cwd, monkeypatch, capsys):
    """``publish_model.py`` of ``library`` on ``checkpoint``: the path it wrote (``OUT-<sha256[:8]>.pth``)."""
    run_script(library, script, checkpoint, out, cwd=cwd, monkeypatch=monkeypatch, capsys=capsys)
    written = [path for path in out.parent.iterdir() if path.name.startswith(out.stem + '-')]
    assert len(written) == 1, written
    return written[0]


# --------------------------------------------------------------------------------------- mmseg's classes, fast


def test_metainfo_seg_dataset_answers_its_configs_classes_as_metainfo(tmp_path):
    from mmseg.datasets import BaseSegDataset

    import mmseg_plugin  # noqa: F401
    from mmseg_plugin.stock_tools import MetainfoSegDataset
    metainfo = dict(classes=('road', 'grass'), palette=[(1, 2, 3), (4, 5, 6)])
    dataset = MetainfoSegDataset(data_root=str(tmp_path), metainfo=metainfo, lazy_init=True)
    assert dataset.METAINFO['classes'] == ('road', 'grass')
    assert MetainfoSegDataset.METAINFO == BaseSegDataset.METAINFO == {}  # the class's own stays empty
    assert 'classes' not in BaseSegDataset(data_root=str(tmp_path), metainfo=metainfo, lazy_init=True).METAINFO


def test_contiguous_visualizer_draws_class_names_on_a_channel_reversed_view(tmp_path):
    from mmengine.structures import PixelData
    from mmseg.structures import SegDataSample

    import mmseg_plugin  # noqa: F401
    from mmseg_plugin.stock_tools import ContiguousSegLocalVisualizer
    image = torch.zeros(3, 32, 32, dtype=torch.uint8).permute(1, 2, 0).numpy()[..., [2, 1, 0]]  # as browse_dataset
    sample = SegDataSample(gt_sem_seg=PixelData(data=torch.ones(1, 32, 32, dtype=torch.long)))
    visualizer = ContiguousSegLocalVisualizer(name='contiguous-test', save_dir=str(tmp_path))
    visualizer.dataset_meta = dict(classes=('a', 'b'), palette=[(0, 0, 0), (200, 0, 0)])
    visualizer.add_datasample('x', image, sample, draw_pred=False, out_file=str(tmp_path / 'x.png'))
    drawn = np.asarray(Image.open(tmp_path / 'x.png'))
    assert drawn.shape == (32, 32, 3) and drawn[..., 0].max() > 0  # class 'b' painted in red


# ------------------------------------------------------------------------------------------------ mmdet's tools


@pytest.mark.slow
def test_mmdet_get_flops_browse_dataset_print_config(toy, tmp_path, monkeypatch, capsys):
    cwd = toy['work']
    printed = run_script('mmdet', 'analysis_tools/get_flops.py', DET, '--num-images', 1, cwd=cwd,
                         monkeypatch=monkeypatch, capsys=capsys)  # on the test set's images
    assert 'Flops:' in printed and 'Params:' in printed
    run_script('mmdet', 'analysis_tools/browse_dataset.py', DET, '--not-show', '--output-dir', tmp_path / 'browse',
               cwd=cwd, monkeypatch=monkeypatch, capsys=capsys)
    assert sorted(os.listdir(tmp_path / 'browse')) == ['toy_train_00000.jpg', 'toy_train_00001.jpg']
    printed = run_script('mmdet', 'misc/print_config.py', DET, cwd=cwd, monkeypatch=monkeypatch, capsys=capsys)
    assert "type='MambaOut'" in printed


@pytest.mark.slow
def test_mmdet_benchmark_dataloader_and_dataset(toy, monkeypatch, capsys):
    pytest.importorskip('psutil', reason="mmdet's benchmark.py measures memory with psutil (pip install psutil)")
    for task in ('dataloader', 'dataset'):
        printed = run_script('mmdet', 'analysis_tools/benchmark.py', DET, '--task', task, '--max-iter', NUM_VAL,
                             '--num-warmup', 1, '--log-interval', 1, '--cfg-options', 'test_dataloader.batch_size=1',
                             cwd=toy['work'], monkeypatch=monkeypatch, capsys=capsys)
        assert 'Overall fps' in printed, task


@pytest.mark.slow
@pytest.mark.skipif(not torch.cuda.is_available(), reason="mmdet's benchmark.py --task inference moves the model to "
                                                          'CUDA (model.cuda()): GPU only')
def test_mmdet_benchmark_inference(toy, monkeypatch, capsys):
    pytest.importorskip('psutil', reason="mmdet's benchmark.py measures memory with psutil (pip install psutil)")
    printed = run_script('mmdet', 'analysis_tools/benchmark.py', DET, '--checkpoint', toy['det'], '--task', 'inference',
                         '--max-iter', 2, '--num-warmup', 1, '--log-interval', 1, cwd=toy['work'],
                         monkeypatch=monkeypatch, capsys=capsys)
    assert 'Overall fps' in printed


@pytest.mark.slow
def test_mmdet_published_model_tested_and_its_results_analysed(toy, tmp_path, monkeypatch, capsys):
    """publish_model.py, then test.py --out on the published file, then the three scripts that read the results."""
    cwd = toy['work']
    checkpoint = published('mmdet', 'model_converters/publish_model.py', toy['det'], tmp_path / 'det_published.pth',
                           cwd, monkeypatch, capsys)
    assert set(torch.load(checkpoint)) == {'state_dict', 'meta'}  # the optimizer state and the rest dropped
    results = tmp_path / 'results.pkl'
    log = run_process([stock_script('mmdet', 'test.py'), DET, str(checkpoint), '--out', str(results),
                       '--work-dir', str(tmp_path / 'test')], cwd)
    assert 'coco/bbox_mAP' in log

    run_script('mmdet', 'analysis_tools/confusion_matrix.py', DET, results, tmp_path / 'confusion', cwd=cwd,
               monkeypatch=monkeypatch, capsys=capsys)
    assert (tmp_path / 'confusion' / 'confusion_matrix.png').is_file()
    printed = run_script('mmdet', 'analysis_tools/eval_metric.py', DET, results, cwd=cwd, monkeypatch=monkeypatch,
                         capsys=capsys)
    assert "'coco/segm_mAP'" in printed
    run_script('mmdet', 'analysis_tools/analyze_results.py', DET, results, tmp_path / 'analysis', '--topk', 1,
               cwd=cwd, monkeypatch=monkeypatch, capsys=capsys)
    drawn = [name for _, _, names in os.walk(tmp_path / 'analysis') for name in names if name.endswith('.jpg')]
    assert len(drawn) == 2  # the best and the worst image


@pytest.mark.slow
def test_det_inferencer_by_config_path_and_weights(toy):
    from mmdet.apis import DetInferencer
    inferencer = DetInferencer(model=DET, weights=str(toy['det']), device='cpu', show_progress=False)
    image = str(toy['work'] / 'data' / 'toy' / 'coco' / 'val' / 'toy_val_00000.jpg')
    prediction = inferencer(image, no_save_vis=True)['predictions'][0]
    assert {'labels', 'scores', 'bboxes', 'masks'} <= set(prediction)
    assert inferencer.model.dataset_meta['classes'] == ('square', 'circle', 'triangle')


# ------------------------------------------------------------------------------------------------ mmseg's tools


@pytest.mark.slow
@pytest.mark.parametrize('folder', ['analysis_tools', 'misc'])
def test_mmseg_browse_dataset(folder, toy, tmp_path, monkeypatch, capsys):
    """Was cv2.error in function 'rectangle' (the visualizer's memory layout), for every mmseg config."""
    # a visualizer of its own: mmengine hands out one instance per name within a process, with its first save_dir
    run_script('mmseg', f'{folder}/browse_dataset.py', SEG, '--not-show', '--output-dir', tmp_path, '--cfg-options',
               f'visualizer.name=browse-{folder}', cwd=toy['work'], monkeypatch=monkeypatch, capsys=capsys)
    drawn = [name for _, _, names in os.walk(tmp_path) for name in names if name.startswith('toy_train_')]
    assert len(drawn) == 2  # analysis_tools/: OUT/toy_train_00000.jpg; misc/: OUT/vis_data/vis_image/..jpg_0.png


@pytest.mark.slow
def test_mmseg_confusion_matrix_on_the_custom_template(tmp_path, monkeypatch, capsys):
    """Was KeyError: 'classes' (a BaseSegDataset given its classes in the config has no METAINFO). A set in the
    template's layout (reduce_zero_label=False, its default), predictions equal to the labels."""
    for folder in ('images/val', 'labels/val'):
        (tmp_path / 'data' / 'my_seg' / folder).mkdir(parents=True)
    (tmp_path / 'pred').mkdir()
    labels = np.random.default_rng(0).integers(0, 3, (2, 16, 16), dtype=np.uint8)
    for index, label in enumerate(labels):
        Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(tmp_path / 'data' / 'my_seg' / 'images' / 'val' /
                                                               f'{index}.jpg')
        for folder in (tmp_path / 'data' / 'my_seg' / 'labels' / 'val', tmp_path / 'pred'):
            Image.fromarray(label).save(folder / f'{index}.png')
    run_script('mmseg', 'analysis_tools/confusion_matrix.py', CUSTOM_SEG, tmp_path / 'pred', tmp_path / 'out',
               cwd=tmp_path, monkeypatch=monkeypatch, capsys=capsys)
    assert (tmp_path / 'out' / 'confusion_matrix.png').is_file()


@pytest.mark.slow
def test_mmseg_benchmark_print_config(toy, monkeypatch, capsys):
    printed = run_script('mmseg', 'analysis_tools/benchmark.py', SEG, toy['seg'], cwd=toy['work'],
                         monkeypatch=monkeypatch, capsys=capsys)
    assert 'Average fps of 1 evaluations' in printed
    printed = run_script('mmseg', 'misc/print_config.py', SEG, cwd=toy['work'], monkeypatch=monkeypatch,
                         capsys=capsys)
    assert "type='MambaOut'" in printed


@pytest.mark.slow
def test_mmseg_published_model_tested_with_predictions_written(toy, tmp_path, monkeypatch, capsys):
    cwd = toy['work']
    checkpoint = published('mmseg', 'misc/publish_model.py', toy['seg'], tmp_path / 'seg_published.pth', cwd,
                           monkeypatch, capsys)
    log = run_process([stock_script('mmseg', 'test.py'), SEG, str(checkpoint), '--out', str(tmp_path / 'pred'),
                       '--work-dir', str(tmp_path / 'test')], cwd)
    assert 'mIoU' in log
    predictions = sorted(os.listdir(tmp_path / 'pred'))
    assert predictions == [f'toy_val_{index:05d}.png' for index in range(NUM_VAL)]
    # label k + 1 (reduce_zero_label: 0 is the ignored background), as ADE20K's files
    assert set(np.unique(np.asarray(Image.open(tmp_path / 'pred' / predictions[0])))) <= {1, 2, 3}


@pytest.mark.slow
def test_mmseg_inferencer_by_config_path_and_weights(toy):
    from mmseg.apis import MMSegInferencer
    inferencer = MMSegInferencer(model=SEG, weights=str(toy['seg']), device='cpu')
    image = str(toy['work'] / 'data' / 'toy' / 'ade' / 'images' / 'validation' / 'toy_val_00000.jpg')
    prediction = inferencer(image, show=False)['predictions']
    assert prediction.shape == (64, 64) and set(np.unique(prediction)) <= {0, 1, 2}


# ------------------------------------------------------------------------------------------------ training logs


@pytest.mark.slow
def test_analyze_logs_of_both_libraries_plot_an_mmengine_log(tmp_path, monkeypatch, capsys):
    """On the scalars file that mmengine's LocalVisBackend writes during a training (``vis_data/scalars.json``)."""
    pytest.importorskip('seaborn', reason='analyze_logs.py of mmdet and mmseg plot with seaborn (pip install seaborn)')
    from mmengine.visualization import LocalVisBackend
    backend = LocalVisBackend(save_dir=str(tmp_path))
    for step in range(1, 5):
        backend.add_scalars(dict(lr=1e-3, loss=1. / step, epoch=1, iter=step), step=step)
    backend.add_scalars({'mIoU': 10., 'coco/bbox_mAP': 0.1}, step=4)
    log = tmp_path / 'scalars.json'
    assert len(log.read_text().splitlines()) == 5
    run_script('mmseg', 'analysis_tools/analyze_logs.py', log, '--keys', 'loss', 'mIoU', '--out', tmp_path / 'seg.png',
               cwd=tmp_path, monkeypatch=monkeypatch, capsys=capsys)
    run_script('mmdet', 'analysis_tools/analyze_logs.py', 'plot_curve', log, '--keys', 'loss', '--out',
               tmp_path / 'det.png', cwd=tmp_path, monkeypatch=monkeypatch, capsys=capsys)
    assert (tmp_path / 'seg.png').is_file() and (tmp_path / 'det.png').is_file()
