"""tools/deployment/export_onnx.py: the toy segmentor end to end, a detector's backbone + neck and a backbone exported to
ONNX, ONNX Runtime within 1e-4 of PyTorch at the export size and at other sizes with the same file, the
checkpoint's weights in the file, the README's onnxruntime lines, and the errors (bad arguments: exit 2; a
difference above --atol: exit 1).

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
from conftest import untrained_checkpoint

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
    segmentor.load_state_dict(torch.load(checkpoint)['state_dict'])
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
    weights = torch.load(checkpoint)['state_dict']
    backbone.load_state_dict({k[len('backbone.'):]: v for k, v in weights.items() if k.startswith('backbone.')})
    inputs = torch.randn(3, 3, 45, 77)
    with torch.no_grad():
        expected = backbone(inputs)
    got = ort_outputs(out, inputs)
    assert [o.shape[-2:] for o in got] == [(12, 20), (6, 10), (3, 5), (2, 3)]
    assert_close(got, expected)


def test_detector_backbone_and_neck(tmp_path, capsys):
    out = tmp_path / 'mask_rcnn.onnx'
    result = export_onnx.main([TOY_DET, '--out', str(out), '--shape', '64', '96', *FAST])
    assert result['output_names'] == [f'neck{i}' for i in range(5)]  # the FPN's five levels
    assert max(result['differences'].values()) <= ATOL
    assert 'MaskRCNN: backbone + FPN (5 feature maps)' in capsys.readouterr().out
    shapes = [o.shape for o in ort_outputs(out, torch.randn(1, 3, 128, 32))]
    assert shapes == [(1, 64, 32, 8), (1, 64, 16, 4), (1, 64, 8, 2), (1, 64, 4, 1), (1, 64, 2, 1)]


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
    ([TOY_SEG, '--out', 'x.onnx', '--checkpoint', 'no.pth'], '--checkpoint: file not found: no.pth'),
    ([TOY_SEG, '--out', ROOT], '--out names a folder'),
    ([TOY_SEG], 'the following arguments are required: --out'),
])
def test_bad_arguments_exit_2(args, message, capsys):
    with pytest.raises(SystemExit) as excinfo:
        export_onnx.parse_args(args)
    assert excinfo.value.code == 2
    assert message in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.parametrize('config, outputs', [(TOY_SEG, 'logits'), (TOY_DET, 'neck0, neck1, neck2, neck3, neck4')])
def test_tool_with_default_exporter(config, outputs, tmp_path):
    """As users run it: a process, torch's default (dynamo) exporter; the file then runs at a third size."""
    out = tmp_path / 'model.onnx'
    env = dict(os.environ, PYTHONPATH=ROOT, OMP_NUM_THREADS='1')
    run = subprocess.run([sys.executable, osp.join(ROOT, 'tools', 'deployment', 'export_onnx.py'), config, '--out', str(out),
                          '--shape', '64', '64', '--runs', '1'], cwd=tmp_path, env=env, capture_output=True,
                         text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert 'exporter dynamo' in run.stdout and f'outputs      {outputs}\n' in run.stdout
    differences = [float(value) for value in re.findall(r' (\d\.\d\de[-+]\d\d)', run.stdout.split('max abs diff', 1)[1]
                                                         .split('PyTorch')[0])]
    assert len(differences) == 2 * len(outputs.split(', ')) and max(differences) <= ATOL
    assert re.search(r'PyTorch +\d+\.\d ms/img +ONNX Runtime +\d+\.\d ms/img', run.stdout)
    got = ort_outputs(out, torch.randn(2, 3, 96, 32))
    assert got[0].shape[0] == 2 and got[0].shape[-2:] == ((96, 32) if config == TOY_SEG else (24, 8))


@pytest.mark.filterwarnings('ignore::torch.jit.TracerWarning')  # the int() below is the point
def test_graph_that_kept_the_example_size_is_one_error(tmp_path):
    """A size read as a Python int while tracing becomes a constant of the graph: the check at another size
    must report it, not pass or crash inside ONNX Runtime."""

    class Flatten(torch.nn.Module):
        def forward(self, x):
            return x.reshape(int(x.shape[0]), int(x.shape[1] * x.shape[2] * x.shape[3]))

    path = str(tmp_path / 'flatten.onnx')
    export_onnx.export_onnx(Flatten(), torch.randn(1, 3, 32, 32), path, ['flat'], exporter='torchscript')
    session = export_onnx.onnxruntime_session(path)
    assert export_onnx.max_abs_differences(Flatten(), session, torch.randn(1, 3, 32, 32), ['flat']) == {'flat': 0.}
    with pytest.raises(RuntimeError, match=r'ONNX Runtime fails on an input of shape \(1, 3, 64, 32\): .*Reshape'):
        export_onnx.max_abs_differences(Flatten(), session, torch.randn(1, 3, 64, 32), ['flat'])


def readme_onnxruntime_snippet():
    """The README's five lines of onnxruntime Python (section "Deployment: ONNX")."""
    with open(osp.join(ROOT, 'README.md')) as f:
        readme = f.read()
    section = readme.split('**Run it with ONNX Runtime**')[1]
    return section.split('```python\n')[1].split('```')[0]


def test_readme_onnxruntime_snippet_gives_mmsegs_label_map(tmp_path):
    """The README's snippet, run as written on an exported toy segmentor and an image, gives the label map of
    mmseg's own inference (``mmseg.apis.inference_model``) of the same checkpoint."""
    import cv2
    import numpy as np
    from mmseg.apis import inference_model, init_model

    checkpoint = untrained_checkpoint(TOY_SEG, tmp_path / 'upernet.pth')
    export_onnx.main([TOY_SEG, '--checkpoint', checkpoint, '--out', str(tmp_path / 'upernet_t.onnx'),
                      '--shape', '128', '128', *FAST])
    # 128x128: the toy test pipeline's resize (scale (512, 128), keep ratio) leaves it as it is
    image = np.random.default_rng(0).integers(0, 256, (128, 128, 3), dtype=np.uint8)
    cv2.imwrite(str(tmp_path / 'demo.jpg'), image)

    snippet = readme_onnxruntime_snippet()
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
