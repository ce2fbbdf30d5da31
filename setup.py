from setuptools import setup
setup(name='mambaout-openmmlab', version='0.1.0', packages=['backbones', 'mmdet_plugin', 'mmseg_plugin', 'mambaout_tools'])
