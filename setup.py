"""The MambaOut plugin for mmdet 3.x and mmseg 1.x, installable into an existing OpenMMLab environment.

``pip install -e .`` (or ``mim install -e .``) adds only what the plugin needs beyond the user's stack. torch,
torchvision, numpy and mmcv are not declared: pip would otherwise be free to replace the torch (and the mmcv
compiled against it) that the environment was built around; ``backbones/stack.py`` checks them at import
instead. mmdet and mmsegmentation declare no torch either, so their tested releases are safe to require.
The tested stacks are in docs/get_started.md; tools/install/install.sh installs one with the exact pins of
requirements.txt.
"""
from setuptools import setup

INSTALL_REQUIRES = [
    'mmengine>=0.10,<0.11',  # tested: 0.10.7
    'mmdet>=3.3.0,<3.4',
    'mmsegmentation>=1.2.2,<1.3',
    'ftfy', 'regex',  # mmseg 1.2.2 imports them with its models (its CLIP tokenizer)
    'timm>=1.0.10,<1.1',  # 1.0.10: the first timm with MambaOut and its checkpoint_filter_fn
    'huggingface_hub',  # weights by hub name (backbones/checkpoint.py)
    'safetensors',
]
EXTRAS_REQUIRE = {
    # tools/deployment/export_onnx.py: onnx writes/reads the file, onnxruntime runs it, onnxscript (with onnx-ir)
    # is what torch.onnx.export(dynamo=True), torch 2.14's default exporter, translates with.
    'onnx': ['onnx>=1.17,<2', 'onnxruntime>=1.20,<2', 'onnxscript>=0.7,<0.8'],
    # The test suite, with mim (`mim train mmdet ...`). opendatalab 0.0.10 pulls openxlab, which pins
    # setuptools~=60.2 (torch 2.14 needs >=77), rich, tqdm, packaging and requests back; 0.0.9 does not.
    # timm 1.0.16: the first whose MambaOut has forward_intermediates, the tests' reference.
    'tests': ['pytest', 'pytest-xdist>=3.8,<4', 'timm>=1.0.16,<1.1', 'openmim>=0.3.9,<0.4', 'opendatalab<0.0.10', 'click<9'],
    # mmdet's/mmseg's own analysis tools: benchmark.py (psutil), analyze_logs.py (seaborn).
    'analysis': ['psutil>=5.9', 'seaborn>=0.12,<0.14'],
    # The web demo (tools/misc/web_demo.py).
    'demo': ['gradio>=6.31,<7'],
    # The web demo's browser test drives Debian's chromium (tools/install/install.sh installs it).
    'browser-tests': ['playwright==1.65.2'],
}

setup(
    name='mambaout-openmmlab',
    version='0.1.0',
    description='MambaOut backbones for mmdet 3.x and mmseg 1.x',
    packages=['backbones', 'mmdet_plugin', 'mmseg_plugin', 'mambaout_tools'],
    python_requires='>=3.10,<3.13',
    install_requires=INSTALL_REQUIRES,
    extras_require=EXTRAS_REQUIRE,
)
