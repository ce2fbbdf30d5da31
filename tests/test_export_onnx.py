"""tools/deployment/export_onnx.py: the toy segmentor and the toy Mask R-CNN end to end, a detector's backbone +
neck and a backbone exported to ONNX, ONNX Runtime within 1e-4 of PyTorch (the detector: mmdet's detections) at
the export size and at other sizes with the same file, the checkpoint's weights in the file, the onnxruntime
lines of docs/deployment.md, and the errors (bad arguments: exit 2; a difference above --atol: exit 1).

The fast tests use the TorchScript exporter (about a second per export); the slow ones run the tool as users
do, with torch's default dynamo exporter (10-20 s per export on the toy models).
"""
import os
import os.path as osp
import re
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from conftest import tool_env, untrained_checkpoint

from mambaout_tools.models import build_model, load_config
from tools.deployment import export_onnx


ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
TOY_SEG = osp.join(ROOT, 'configs', 'toy', 'upernet_mambaout_toy.py')
TOY_DET = osp.join(ROOT, 'configs', 'toy', 'mask_rcnn_mambaout_toy.py')
ATOL = 1e-4
FAST = ['--exporter', 'torchscript', '--runs', '1']


def ort_outputs(path, inputs):
    return export_onnx.run_onnxruntime(export_onnx.onnxruntime_session(str(path)), inputs)


def assert_close(onnx_outputs, torch_outputs):
    assert len(onnx_outputs) == len(torch_outputs)
    for ours, reference in zip(onnx_outputs, torch_outputs):
        assert tuple(ours.shape) == tuple(reference.shape)
        assert float(abs(torch.from_numpy(ours) - reference).max()) <= ATOL


@pytest.mark.parametrize('size', [(1, 1), (2, 3), (4, 4), (7, 13), (13, 6), (24, 17)])
def test_adaptive_avg_pool_as_matmul_is_adaptive_avg_pool(size):
    """Every bin of UperNet's pyramid pooling (1, 2, 3, 6), inputs smaller than the bins and sizes they do not
    divide included."""
    x = torch.randn(2, 5, *size, generator=torch.Generator().manual_seed(0))
    for bins in (1, 2, 3, 6):
        pooled = export_onnx.AdaptiveAvgPool2dAsMatmul((bins, bins))(x)
        torch.testing.assert_close(pooled, F.adaptive_avg_pool2d(x, bins), rtol=1e-5, atol=1e-6)


def test_replace_adaptive_avg_pools_leaves_global_pooling():
    model = torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(1), torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(3)),
                                torch.nn.AdaptiveAvgPool2d((2, 6)))
    assert export_onnx.replace_adaptive_avg_pools(model) == 2
    assert isinstance(model[0], torch.nn.AdaptiveAvgPool2d)
    assert model[1][0].output_size == (3, 3) and model[2].output_size == (2, 6)


def test_segmentor_logits_at_input_resolution_any_size(tmp_path, capsys):
    checkpoint = untrained_checkpoint(TOY_SEG, tmp_path / 'upernet.pth')
    out = tmp_path / 'upernet.onnx'
    result = export_onnx.main([TOY_SEG, '--checkpoint', checkpoint, '--out', str(out), '--shape', '64', '96', *FAST])
    printed = capsys.readouterr().out
    assert result['output_names'] == ['logits']
    # both checks of the tool: 1x3x64x96 and 2x3x96x160
    assert {(shape, batch) for _, shape, batch in result['differences']} == {((64, 96), 1), ((96, 160), 2)}
    assert max(result['differences'].values()) <= ATOL
    assert re.search(r'max abs diff 2x3x96x160: logits \d\.\d\de-\d\d', printed)
    assert 'ok           max abs diff' in printed

    # A third size, not a multiple of 32 (mmseg does not pad at test time), against mmseg's own inference
    # (decode head logits resized to the input) of the checkpoint's segmentor.
    segmentor = build_model(load_config(TOY_SEG)).eval()
    segmentor.load_state_dict(torch.load(checkpoint, weights_only=True)['state_dict'])
    inputs = torch.randn(1, 3, 72, 100)
    with torch.no_grad():
        expected = segmentor.decode_head.predict(segmentor.extract_feat(inputs), [dict(img_shape=(72, 100))],
                                                 segmentor.test_cfg)
    got = ort_outputs(out, inputs)
    assert got[0].shape == (1, segmentor.decode_head.num_classes, 72, 100)
    assert_close(got, [expected])


def test_backbone_only_holds_the_checkpoint(tmp_path, capsys):
    checkpoint = untrained_checkpoint(TOY_DET, tmp_path / 'det.pth')
    out = tmp_path / 'backbone.onnx'
    result = export_onnx.main([TOY_DET, '--checkpoint', checkpoint, '--out', str(out), '--shape', '64', '64',
                               '--backbone-only', '--opset', '17', *FAST])
    assert result['output_names'] == ['stage0', 'stage1', 'stage2', 'stage3']
    assert export_onnx.file_opset(str(out)) == 17
    assert max(result['differences'].values()) <= ATOL

    # Another size and batch, against the checkpoint's backbone built here: the file has its weights.
    backbone = build_model(load_config(TOY_DET), backbone_only=True).eval()
    weights = torch.load(checkpoint, weights_only=True)['state_dict']
    backbone.load_state_dict({k[len('backbone.'):]: v for k, v in weights.items() if k.startswith('backbone.')})
    inputs = torch.randn(3, 3, 45, 77)
    with torch.no_grad():
        expected = backbone(inputs)
    got = ort_outputs(out, inputs)
    assert [o.shape[-2:] for o in got] == [(12, 20), (6, 10), (3, 5), (2, 3)]
    assert_close(got, expected)


def test_detector_backbone_and_neck(tmp_path, capsys):
    out = tmp_path / 'mask_rcnn.onnx'
    result = export_onnx.main([TOY_DET, '--out', str(out), '--shape', '64', '96', '--neck-only', *FAST])
    assert result['output_names'] == [f'neck{i}' for i in range(5)]  # the FPN's five levels
    assert max(result['differences'].values()) <= ATOL
    assert 'MaskRCNN: backbone + FPN (5 feature maps)' in capsys.readouterr().out
    shapes = [o.shape for o in ort_outputs(out, torch.randn(1, 3, 128, 32))]
    assert shapes == [(1, 64, 32, 8), (1, 64, 16, 4), (1, 64, 8, 2), (1, 64, 4, 1), (1, 64, 2, 1)]


def mmdet_predictions(detector, inputs):
    """mmdet's own ``predict`` of ``inputs`` (one normalized image), in input pixels."""
    from mmdet.structures import DetDataSample
    shape = tuple(inputs.shape[2:])
    sample = DetDataSample(metainfo=dict(img_shape=shape, ori_shape=shape, pad_shape=shape, batch_input_shape=shape,
                                         scale_factor=(1., 1.)))
    with torch.no_grad():
        return detector.predict(inputs, [sample])[0].pred_instances


@pytest.mark.slow
def test_whole_detector_gives_mmdets_detections_at_any_size(tmp_path, capsys):
    """The default for a detector: Mask R-CNN end to end in standard ONNX operators, its detections those of
    mmdet's ``predict`` at the export size, at the tool's second size and at a third one run here."""
    checkpoint = untrained_checkpoint(TOY_DET, tmp_path / 'det.pth')
    out = tmp_path / 'mask_rcnn.onnx'
    result = export_onnx.main([TOY_DET, '--checkpoint', checkpoint, '--out', str(out), '--shape', '64', '96', *FAST])
    printed = capsys.readouterr().out
    assert result['output_names'] == ['boxes', 'scores', 'labels', 'masks']
    assert {'NonMaxSuppression', 'RoiAlign', 'TopK', 'LayerNormalization'} <= set(result['operators'])
    assert set(result['checks']) == {(64, 96), (96, 160)}
    for found in result['checks'].values():
        # an untrained detector still keeps max_per_img boxes above score_thr (4 classes' softmax near 0.25)
        assert found['count'] == found['reference_count'] > 0
        assert found['min_iou'] >= 0.99 and found['mask_agreement'] >= 0.99
    assert re.search(r'random 1x3x96x160: \d+ detections \(mmdet \d+\), smallest box IoU', printed)
    assert "ok           ONNX Runtime gives mmdet's detections" in printed

    detector = build_model(load_config(TOY_DET)).eval()
    detector.load_state_dict(torch.load(checkpoint)['state_dict'])
    inputs = torch.randn(1, 3, 160, 64)
    expected = mmdet_predictions(detector, inputs)
    boxes, scores, labels, masks = ort_outputs(out, inputs)
    assert len(boxes) == len(expected) > 0 and masks.shape == (len(boxes), 28, 28)
    assert abs(torch.from_numpy(boxes) - expected.bboxes).max() <= 1e-2
    assert abs(torch.from_numpy(scores) - expected.scores).max() <= ATOL
    assert (torch.from_numpy(labels) == expected.labels).all()


def test_whole_detector_graph_steps_match_mmdets():
    """Anchors, delta decoding and the RoI extractor's level mapping of the exported module, each against the
    mmdet code it stands for, on a trace-free run."""
    detector = build_model(load_config(TOY_DET)).eval()
    module = export_onnx.TwoStageDetectorEndToEnd(detector)
    generator = detector.rpn_head.prior_generator
    feats = [torch.zeros(1, 1, 5, 7), torch.zeros(1, 1, 3, 4)]
    for level, feat in enumerate(feats):
        expected = generator.single_level_grid_priors(feat.shape[-2:], level, device='cpu')
        torch.testing.assert_close(module.anchors(feat, level), expected)

    generator_ = torch.Generator().manual_seed(0)
    priors = torch.rand(50, 2, generator=generator_) * 80
    priors = torch.cat([priors, priors + 1 + torch.rand(50, 2, generator=generator_) * 40], dim=1)
    deltas = torch.randn(50, 4, generator=generator_) * 3  # large dw/dh: the wh_ratio_clip clamp acts
    image_hw = torch.tensor([70., 90.])
    for coder in (detector.rpn_head.bbox_coder, detector.roi_head.bbox_head.bbox_coder):
        torch.testing.assert_close(export_onnx._decode_deltas(priors, deltas, coder, image_hw),
                                   coder.decode(priors, deltas, max_shape=(70, 90)))

    extractor = detector.roi_head.bbox_roi_extractor
    maps = tuple(torch.randn(1, 64, 512 // s, 512 // s, generator=generator_) for s in (4, 8, 16, 32))
    boxes = torch.tensor([[5., 5., 30., 40.], [10., 10., 160., 160.], [0., 0., 300., 400.], [0., 0., 500., 500.]])
    rois = torch.cat([torch.zeros(4, 1), boxes], dim=1)
    assert extractor.map_roi_levels(rois, 4).tolist() == [0, 1, 2, 3]  # one box on each level
    torch.testing.assert_close(module.roi_features(extractor, maps, boxes), extractor(maps, rois))


@pytest.mark.parametrize('args, message', [
    (['--backbone-only', '--neck-only'], '--backbone-only and --neck-only exclude each other'),
    (['--neck-only', '--test-set'], '--test-set compares a whole detector'),
])
def test_bad_detector_arguments_exit_2(args, message, capsys):
    with pytest.raises(SystemExit) as excinfo:
        export_onnx.parse_args([TOY_DET, '--out', 'x.onnx', *args])
    assert excinfo.value.code == 2
    assert message in capsys.readouterr().err


def test_difference_above_atol_exits_1(tmp_path, monkeypatch, capsys):
    """The file and PyTorch disagree when the model changes after the export: the tool must say so."""
    export = export_onnx.export_onnx

    def export_then_change(module, *args, **kwargs):
        export(module, *args, **kwargs)
        with torch.no_grad():
            module.model.backbone.norm3.bias.add_(1e-2)

    monkeypatch.setattr(export_onnx, 'export_onnx', export_then_change)
    with pytest.raises(SystemExit) as excinfo:
        export_onnx.main([TOY_DET, '--out', str(tmp_path / 'b.onnx'), '--shape', '32', '32', '--backbone-only',
                          *FAST])
    message = str(excinfo.value.code)  # a message: the process exits 1
    assert re.fullmatch(r'error: ONNX Runtime differs from PyTorch by 1\.0\de-02 > --atol 0\.0001 \(output stage3, '
                        r'input \dx3x\d+x\d+\)', message), message
    assert 'stage3 1.0' in capsys.readouterr().out


def test_checkpoint_of_another_model_is_one_error(tmp_path):
    checkpoint = tmp_path / 'other.pth'
    torch.save({'state_dict': {'backbone.stem.conv1.weight': torch.zeros(1)}}, checkpoint)
    with pytest.raises(SystemExit) as excinfo:
        export_onnx.main([TOY_SEG, '--checkpoint', str(checkpoint), '--out', str(tmp_path / 'x.onnx'), *FAST])
    assert str(excinfo.value.code).startswith(f'error: {checkpoint} does not fit the config\'s model')
    assert not (tmp_path / 'x.onnx').exists()


@pytest.mark.parametrize('args, message', [
    (['missing.py', '--out', 'x.onnx'], 'config file not found: missing.py'),
    ([TOY_DET, '--out', 'x.onnx', '--shape', '100', '128'], 'a multiple of 32 (the data preprocessor pads to it)'),
    ([TOY_SEG, '--out', 'x.onnx', '--shape', '16', '64'], 'height and width must be each >= 32'),
    ([TOY_SEG, '--out', 'x.onnx', '--shape', '64'], 'expected 2 arguments'),
    ([TOY_SEG, '--out', 'x.onnx', '--atol', '-1'], 'must be a number >= 0, got -1'),
    ([TOY_SEG, '--out', 'x.onnx', '--opset', '11'], 'invalid choice: 11'),
    ([TOY_SEG, '--out', 'x.onnx', '--neck-only'], '--neck-only is for mmdet detectors'),
    ([TOY_SEG, '--out', 'x.onnx', '--checkpoint', 'no.pth'], '--checkpoint: file not found: no.pth'),
    ([TOY_SEG, '--out', ROOT], '--out names a folder'),
    ([TOY_SEG], 'the following arguments are required: --out'),
])
def test_bad_arguments_exit_2(args, message, capsys):
    with pytest.raises(SystemExit) as excinfo:
        export_onnx.parse_args(args)
    assert excinfo.value.code == 2
    assert message in capsys.readouterr().err


# A torch without the dynamo exporter exports with TorchScript whatever --exporter says, so onnxscript is not
# needed there.
@pytest.mark.parametrize('unimportable, exporter, message', [
    (['onnxscript'], 'dynamo', 'error: onnxscript not installed: pip install onnxscript (or --exporter torchscript, '
                               'which does not use onnxscript)' if export_onnx.HAS_DYNAMO_EXPORTER else None),
    (['onnxscript'], 'torchscript', None),  # not needed there
    (['onnxruntime'], 'torchscript', 'error: onnxruntime not installed: pip install onnxruntime; tested versions'),
    (['onnx', 'onnxscript'], 'dynamo',
     'error: onnx, onnxscript not installed: pip install onnx onnxscript; tested' if export_onnx.HAS_DYNAMO_EXPORTER
     else 'error: onnx not installed: pip install onnx; tested'),
])
def test_missing_onnx_package_is_one_line_with_its_pip_install(unimportable, exporter, message, tmp_path,
                                                                monkeypatch):
    for name in unimportable:
        monkeypatch.setitem(sys.modules, name, None)  # `import name` raises ImportError
    # Before anything is built: a model that cannot be built shows that nothing is.
    monkeypatch.setattr(export_onnx, 'build_model', lambda cfg: pytest.fail('model built'))
    if message is None:
        with pytest.raises(pytest.fail.Exception, match='model built'):
            export_onnx.main([TOY_SEG, '--out', str(tmp_path / 'x.onnx'), '--exporter', exporter])
        return
    with pytest.raises(SystemExit) as excinfo:
        export_onnx.main([TOY_SEG, '--out', str(tmp_path / 'x.onnx'), '--exporter', exporter])
    assert str(excinfo.value.code).startswith(message)


@pytest.mark.slow
@pytest.mark.skipif(not export_onnx.HAS_DYNAMO_EXPORTER, reason=export_onnx.NO_DYNAMO_EXPORTER)
@pytest.mark.parametrize('config, options, outputs', [(TOY_SEG, [], 'logits'),
                                                      (TOY_DET, ['--neck-only'], 'neck0, neck1, neck2, neck3, neck4')])
def test_tool_with_default_exporter(config, options, outputs, tmp_path):
    """As users run it: a process, torch's default (dynamo) exporter; the file then runs at a third size."""
    out = tmp_path / 'model.onnx'
    env = tool_env(OMP_NUM_THREADS='1')
    run = subprocess.run([sys.executable, osp.join(ROOT, 'tools', 'deployment', 'export_onnx.py'), config, '--out', str(out),
                          '--shape', '64', '64', '--runs', '1', *options], cwd=tmp_path, env=env, capture_output=True,
                         text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert 'exporter dynamo' in run.stdout and f'outputs      {outputs}\n' in run.stdout
    differences = [float(value) for value in re.findall(r' (\d\.\d\de[-+]\d\d)', run.stdout.split('max abs diff', 1)[1]
                                                         .split('PyTorch')[0])]
    assert len(differences) == 2 * len(outputs.split(', ')) and max(differences) <= ATOL
    assert re.search(r'PyTorch +\d+\.\d ms/img +ONNX Runtime +\d+\.\d ms/img', run.stdout)
    got = ort_outputs(out, torch.randn(2, 3, 96, 32))
    assert got[0].shape[0] == 2 and got[0].shape[-2:] == ((96, 32) if config == TOY_SEG else (24, 8))


@pytest.mark.skipif(export_onnx.HAS_DYNAMO_EXPORTER, reason=f'torch {torch.__version__} has the dynamo exporter')
def test_dynamo_exporter_on_a_torch_without_it_takes_torchscript(capsys):
    args = export_onnx.parse_args([TOY_SEG, '--out', 'x.onnx', '--exporter', 'dynamo'])
    assert args.exporter == 'torchscript'
    assert capsys.readouterr().err == (f'note: torch {torch.__version__} has no dynamo ONNX exporter '
                                       '(torch.onnx.export(dynamo=True), torch >= 2.6); exporting with the '
                                       'TorchScript exporter\n')
    assert export_onnx.parse_args([TOY_SEG, '--out', 'x.onnx']).exporter == 'torchscript'  # the default there
    with pytest.raises(ValueError, match="no dynamo ONNX exporter .*use exporter='torchscript'"):
        export_onnx.export_onnx(torch.nn.Identity(), torch.randn(1, 3, 32, 32), 'x.onnx', ['y'], exporter='dynamo')


@pytest.mark.filterwarnings('ignore::torch.jit.TracerWarning')  # the int() below is the point
def test_graph_that_kept_the_example_size_is_one_error(tmp_path):
    """A size read as a Python int while tracing becomes a constant of the graph: the check at another size
    must report it, not pass or crash inside ONNX Runtime."""

    class Flatten(torch.nn.Module):
        def forward(self, x):
            return x.reshape(int(x.shape[0]), int(x.shape[1] * x.shape[2] * x.shape[3]))

    path = str(tmp_path / 'flatten.onnx')
    export_onnx.export_onnx(Flatten(), torch.randn(1, 3, 32, 32), path, ['flat'], exporter='torchscript')
    ort_session = export_onnx.onnxruntime_session(path)
    assert export_onnx.max_abs_differences(Flatten(), ort_session, torch.randn(1, 3, 32, 32), ['flat']) == {'flat': 0.}
    with pytest.raises(RuntimeError, match=r'ONNX Runtime fails on an input of shape \(1, 3, 64, 32\): .*Reshape'):
        export_onnx.max_abs_differences(Flatten(), ort_session, torch.randn(1, 3, 64, 32), ['flat'])


def docs_onnxruntime_snippet():
    """The five lines of onnxruntime Python of docs/deployment.md ("Run it with ONNX Runtime")."""
    with open(osp.join(ROOT, 'docs', 'deployment.md')) as f:
        page = f.read()
    section = page.split('**Run it with ONNX Runtime**')[1]
    return section.split('```python\n')[1].split('```')[0]


def test_docs_onnxruntime_snippet_gives_mmsegs_label_map(tmp_path):
    """The snippet of docs/deployment.md, run as written on an exported toy segmentor and an image, gives the
    label map of mmseg's own inference (``mmseg.apis.inference_model``) of the same checkpoint."""
    import cv2
    import numpy as np
    from mmseg.apis import inference_model, init_model

    checkpoint = untrained_checkpoint(TOY_SEG, tmp_path / 'upernet.pth')
    export_onnx.main([TOY_SEG, '--checkpoint', checkpoint, '--out', str(tmp_path / 'upernet_t.onnx'),
                      '--shape', '128', '128', *FAST])
    # 128x128: the toy test pipeline's resize (scale (512, 128), keep ratio) leaves it as it is
    image = np.random.default_rng(0).integers(0, 256, (128, 128, 3), dtype=np.uint8)
    cv2.imwrite(str(tmp_path / 'demo.jpg'), image)

    snippet = docs_onnxruntime_snippet()
    assert len(snippet.strip().splitlines()) == 5
    namespace = {}
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        exec(snippet, namespace)
    finally:
        os.chdir(cwd)

    model = init_model(TOY_SEG, checkpoint, device='cpu')
    expected = inference_model(model, str(tmp_path / 'demo.jpg')).pred_sem_seg.data[0].numpy()
    labels = namespace['labels']
    assert labels.shape == expected.shape == (128, 128)
    # random weights: a pixel whose two best classes tie within ORT's 1e-5 may flip, nothing more
    assert (labels == expected).mean() >= 0.999
