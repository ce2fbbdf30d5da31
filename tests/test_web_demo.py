"""tools/misc/web_demo.py in a browser: the page served on 127.0.0.1 by a subprocess, driven in headless Chromium
(Playwright): a toy image uploaded, both pictures shown, the same as tools/misc/image_demo.py draws for that image
and checkpoint; the page asks nothing from outside the machine; a screenshot of it. Also the one-line errors for a
missing Gradio and for the toy checkpoints before ``make demo``, and the examples made when the toy dataset is
not there.

Needs gradio (``pip install -e ".[demo]"``), playwright (pip) and Debian's chromium: ``make test`` installs them
(tools/install/install.sh); without them these tests fail, saying what to install.
"""
import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request

import cv2
import mmcv
import numpy as np
import pytest
import torch
from conftest import free_port, tool_env, untrained_checkpoint
from mmengine.config import Config

from mambaout_tools.visualize import LONG_SIDE
from tools.misc import web_demo
from tools.misc.image_demo import main as image_demo_main
from tools.misc.make_toy_data import make_toy_data

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DET = os.path.join(ROOT, 'configs', 'toy', 'mask_rcnn_mambaout_toy.py')
SEG = os.path.join(ROOT, 'configs', 'toy', 'upernet_mambaout_toy.py')
IMAGE = os.path.join('coco', 'val', 'toy_val_00000.jpg')
SCORE_THR = 0.05  # an untrained detector scores low: at 0.05 it draws boxes and masks
# Chromium here: no sandbox (root), no GPU, nothing fetched for itself. Playwright adds --headless and a fresh
# --user-data-dir of its own.
CHROMIUM_FLAGS = ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
                  '--disable-background-networking', '--disable-component-update', '--disable-sync']
SERVER_START_S, PREDICTION_S = 300, 180  # bounds on a loaded 2-core machine, not targets
# The page's pictures against image_demo's: the same code on the same file and checkpoint, so equal but for
# float rounding between two processes, which may move a mask or box edge: at most this share of pixels may
# differ by more than PIXEL_TOLERANCE levels.
PIXEL_TOLERANCE, DIFFERING_SHARE = 8, 0.002


def require(module, install):
    if importlib.util.find_spec(module) is None:
        pytest.fail(f'{module} is not installed: {install} (make test installs it)')


@pytest.fixture(scope='module')
def work(tmp_path_factory):
    """A toy dataset (2 validation images per set) and untrained checkpoints of both toy models."""
    work = tmp_path_factory.mktemp('web_demo')
    make_toy_data(str(work / 'toy'), num_train=1, num_val=2, size=96)
    for config, name in ((DET, 'det'), (SEG, 'seg')):
        untrained_checkpoint(config, work / f'{name}.pth')
    return work


@pytest.fixture(scope='module')
def server(work):
    """The web demo on a free port of 127.0.0.1 with the untrained checkpoints; stopped at the end in all cases."""
    require('gradio', 'pip install -e ".[demo]"')
    port, log_path = free_port(), work / 'server.log'
    env = tool_env(OMP_NUM_THREADS='1', GRADIO_TEMP_DIR=str(work / 'gradio'), TMPDIR=str(work))
    command = [sys.executable, os.path.join(ROOT, 'tools', 'misc', 'web_demo.py'), '--det', DET, str(work / 'det.pth'),
               '--seg', SEG, str(work / 'seg.pth'), '--device', 'cpu', '--port', str(port),
               '--score-thr', str(SCORE_THR), '--examples', str(work / 'toy')]
    url = f'http://127.0.0.1:{port}/'
    with open(log_path, 'w') as log:
        process = subprocess.Popen(command, cwd=work, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + SERVER_START_S
        while True:
            if process.poll() is not None:
                pytest.fail(f'the web demo exited with {process.returncode}:\n{log_path.read_text()[-3000:]}')
            try:
                with urllib.request.urlopen(url, timeout=5) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f'the web demo did not answer on {url} in {SERVER_START_S} s:\n'
                            f'{log_path.read_text()[-3000:]}')
            time.sleep(1)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture(scope='module')
def browser():
    require('playwright', 'pip install playwright==1.65.2')
    chromium = shutil.which('chromium')
    if chromium is None:
        pytest.fail("Chromium is not installed: apt-get install -y chromium (make test installs it)")
    from playwright.sync_api import sync_playwright
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, args=CHROMIUM_FLAGS)
        try:
            yield browser
        finally:
            browser.close()


def image_demo(work, config, checkpoint, out, *options):
    """tools/misc/image_demo.py's picture of the toy image (BGR), in this process on one thread as the server runs."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        image_demo_main([str(work / 'toy' / IMAGE), config, str(checkpoint), '--out', str(out), '--device', 'cpu',
                         *options])
    finally:
        torch.set_num_threads(threads)
    return mmcv.imread(str(out))


def shown_picture(page, elem_id):
    """The picture the page shows in ``#elem_id`` (BGR, as read from the server)."""
    source = page.get_attribute(f'#{elem_id} img', 'src')
    return cv2.imdecode(np.frombuffer(page.request.get(source).body(), np.uint8), cv2.IMREAD_COLOR)


@pytest.mark.slow  # two inferencers in a server, a browser, image_demo twice
def test_page_shows_what_image_demo_draws(work, server, browser):
    page = browser.new_page(viewport={'width': 1400, 'height': 1000})
    outside = []

    def local_only(route):
        if route.request.url.startswith(server):
            route.continue_()
        else:
            outside.append(route.request.url)
            route.abort()
    page.route('**/*', local_only)
    page.goto(server)
    page.set_input_files('#image input[type=file]', str(work / 'toy' / IMAGE))  # an upload predicts
    for elem_id in ('detections', 'segmentation'):
        page.wait_for_selector(f'#{elem_id} img', timeout=PREDICTION_S * 1000)
    page.wait_for_function("document.querySelector('#timing').innerText.includes('Time taken')",
                           timeout=PREDICTION_S * 1000)
    page.wait_for_timeout(500)  # the table and the images settle
    page.screenshot(path=str(work / 'web_demo.png'), full_page=True)
    print(f'screenshot: {work / "web_demo.png"}')

    image = mmcv.imread(str(work / 'toy' / IMAGE))
    for elem_id, config, checkpoint, options in (('detections', DET, 'det.pth', ['--score-thr', str(SCORE_THR)]),
                                                 ('segmentation', SEG, 'seg.pth', [])):
        shown = shown_picture(page, elem_id)
        drawn = image_demo(work, config, work / checkpoint, work / f'{elem_id}.png', *options)
        assert shown.shape == drawn.shape, (elem_id, shown.shape, drawn.shape)
        differing = (np.abs(shown.astype(int) - drawn.astype(int)).max(axis=2) > PIXEL_TOLERANCE).mean()
        assert differing <= DIFFERING_SHARE, (elem_id, differing)
        # the prediction is drawn over the (upscaled) image: not the image itself
        factor = -(-LONG_SIDE // max(image.shape[:2]))
        upscaled = image.repeat(factor, 0).repeat(factor, 1)
        panel = shown[:upscaled.shape[0], :upscaled.shape[1]].astype(int)
        changed = (np.abs(panel - upscaled.astype(int)).max(axis=2) > 30).mean()
        assert changed > 0.02, (elem_id, changed)

    timing = page.inner_text('#timing')
    assert 'Time taken on cpu' in timing and web_demo.DET_NAME in timing and web_demo.SEG_NAME in timing, timing
    # the table lists the detections (a header row, then one per detection) by class name
    assert int(page.get_attribute('#detections-table [role=grid]', 'aria-rowcount')) >= 2
    table = page.inner_text('#detections-table')
    assert any(name in table for name in Config.fromfile(DET).metainfo['classes']), table
    # the examples: the first validation images of both toy sets (2 each here)
    assert page.locator('.gallery img').count() == 4
    assert outside == [], outside


def test_missing_gradio_is_one_error_line(monkeypatch):
    monkeypatch.setitem(sys.modules, 'gradio', None)  # import gradio raises ImportError
    with pytest.raises(SystemExit) as error:
        web_demo.main(['--device', 'cpu'])
    assert str(error.value) == 'error: the web demo needs Gradio, an optional extra: pip install -e ".[demo]"'


def test_toy_checkpoint_before_make_demo_is_one_error_line(tmp_path, monkeypatch):
    monkeypatch.setattr(web_demo, 'ROOT', str(tmp_path))  # a repository where make demo has not run
    with pytest.raises(SystemExit) as error:
        web_demo.demo_model(web_demo.DET_NAME)
    assert str(error.value) == ('error: no checkpoint of the toy Mask R-CNN-MambaOut in work_dirs/demo/mask_rcnn: '
                                'run `make demo` (it trains it) or pass --det CONFIG CHECKPOINT')
    # a work dir whose last checkpoint is gone says the same; one that has it gives it
    work_dir = tmp_path / 'work_dirs' / 'demo' / 'upernet'
    work_dir.mkdir(parents=True)
    (work_dir / 'last_checkpoint').write_text(str(work_dir / 'iter_150.pth'))
    with pytest.raises(SystemExit, match=r'in work_dirs/demo/upernet: run `make demo` .* or pass --seg CONFIG'):
        web_demo.demo_model(web_demo.SEG_NAME)
    (work_dir / 'iter_150.pth').write_bytes(b'')
    assert web_demo.demo_model(web_demo.SEG_NAME) == (os.path.join(str(tmp_path), 'configs', 'toy',
                                                                   'upernet_mambaout_toy.py'),
                                                      str(work_dir / 'iter_150.pth'))


@pytest.mark.slow  # make_toy_data.py as a subprocess
def test_examples_made_when_the_toy_dataset_is_not_there(tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, 'tempdir', str(tmp_path))
    examples = web_demo.example_images(str(tmp_path / 'no_toy_data'))
    paths = make_toy_data(str(tmp_path / 'toy'), num_train=1, num_val=web_demo.EXAMPLES_PER_SET + 1)
    expected = [os.path.join(paths[key], f'toy_val_{index:05d}.jpg') for key in ('coco_val_img', 'ade_val_img')
                for index in range(web_demo.EXAMPLES_PER_SET)]
    assert [os.path.basename(path) for path in examples] == [os.path.basename(path) for path in expected]
    for made, generated in zip(examples, expected):  # the images of make demo's dataset
        with open(made, 'rb') as a, open(generated, 'rb') as b:
            assert a.read() == b.read(), made
