"""A web page that runs a MambaOut detector and segmentor on an image (Gradio, served on 127.0.0.1).

    python tools/misc/web_demo.py [--det CONFIG CHECKPOINT] [--seg CONFIG CHECKPOINT] [--device cpu|cuda]
                                  [--port 7860] [--score-thr 0.3] [--examples DIR]

Without --det/--seg it serves the toy models that ``make demo`` trains: configs/toy/ with the latest checkpoints
of work_dirs/demo/mask_rcnn and work_dirs/demo/upernet. Pick one of the example images (the first validation
images of the toy dataset, made in a temporary folder when --examples holds none) or upload one: the page shows
the detector's picture (boxes, masks, class names, scores) with a table of its detections, the segmentor's label
map over the image with the class legend, and the time each took. The pictures are those tools/misc/image_demo.py
draws for the same image and checkpoint (mambaout_tools/visualize.py draws both).

Gradio is an optional extra: ``pip install -e ".[demo]"``. The page loads nothing from outside this machine; no
share link is made and Gradio's analytics and version check are off.
"""
import argparse
import atexit
import glob
import os
import os.path as osp
import shutil
import signal
import subprocess
import sys
import tempfile
import time

# Before Gradio is imported, which reads it once: no analytics, no look-up of a newer Gradio version.
os.environ['GRADIO_ANALYTICS_ENABLED'] = 'False'

import torch  # noqa: E402

from mambaout_tools.visualize import SCORE_THR, draw_with_legend, load_inferencer, predict  # noqa: E402

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
DET_NAME, SEG_NAME = 'Mask R-CNN-MambaOut', 'UperNet-MambaOut'
# What `make demo` (tools/misc/demo.py) trains, and where its checkpoints go.
DEMO_MODELS = {DET_NAME: (osp.join('configs', 'toy', 'mask_rcnn_mambaout_toy.py'),
                          osp.join('work_dirs', 'demo', 'mask_rcnn')),
               SEG_NAME: (osp.join('configs', 'toy', 'upernet_mambaout_toy.py'),
                          osp.join('work_dirs', 'demo', 'upernet'))}
EXAMPLES_PER_SET = 3  # validation images of each toy set offered as examples
TITLE = 'MambaOut in mmdet and mmseg'


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--det', nargs=2, metavar=('CONFIG', 'CHECKPOINT'),
                        help="the detector (default: make demo's Mask R-CNN-MambaOut)")
    parser.add_argument('--seg', nargs=2, metavar=('CONFIG', 'CHECKPOINT'),
                        help="the segmentor (default: make demo's UperNet-MambaOut)")
    parser.add_argument('--device', default='cuda:0' if torch.cuda.is_available() else 'cpu')
    parser.add_argument('--port', type=int, default=7860, help='the port on 127.0.0.1')
    parser.add_argument('--score-thr', type=float, default=SCORE_THR,
                        help="the detection score threshold the page starts with (image_demo's default)")
    parser.add_argument('--examples', default=osp.join(ROOT, 'data', 'toy'),
                        help='the toy dataset whose first validation images are the examples (make demo writes it)')
    return parser.parse_args(argv)


def demo_model(name):
    """``(config, checkpoint)`` of the model ``make demo`` trained, or one error line saying how to get it."""
    from mmengine.runner import find_latest_checkpoint
    config, work_dir = (osp.join(ROOT, path) for path in DEMO_MODELS[name])
    option = '--det' if name == DET_NAME else '--seg'
    checkpoint = (find_latest_checkpoint(work_dir) if osp.isfile(osp.join(work_dir, 'last_checkpoint'))
                  else None)
    if checkpoint is None or not osp.isfile(checkpoint):
        raise SystemExit(f'error: no checkpoint of the toy {name} in {osp.relpath(work_dir, ROOT)}: run `make demo` '
                         f'(it trains it) or pass {option} CONFIG CHECKPOINT')
    return config, checkpoint


def load_model(name, config, checkpoint, device):
    try:
        return load_inferencer(config, checkpoint, device)
    except ValueError as err:
        raise SystemExit(f'error: {name}: {err}') from None


def example_images(toy_dir):
    """The first validation images of the toy dataset at ``toy_dir``; when it has none, those of a small toy
    dataset made in a temporary folder (the same images: each scene depends only on the seed and its index)."""
    def first(root):
        return [sorted(glob.glob(osp.join(root, pattern)))[:EXAMPLES_PER_SET]
                for pattern in (osp.join('coco', 'val', '*.jpg'), osp.join('ade', 'images', 'validation', '*.jpg'))]
    found = first(toy_dir)
    if all(found):
        return [image for images in found for image in images]
    made = tempfile.mkdtemp(prefix='mambaout-web-demo-')
    atexit.register(shutil.rmtree, made, ignore_errors=True)
    subprocess.run([sys.executable, osp.join(osp.dirname(osp.abspath(__file__)), 'make_toy_data.py'), '--out', made,
                    '--num-train', '1', '--num-val', str(EXAMPLES_PER_SET)], check=True, stdout=subprocess.DEVNULL)
    return [image for images in first(made) for image in images]


def synchronize(device):
    if torch.device(device).type == 'cuda':
        torch.cuda.synchronize(device)


def detections_table(inferencer, sample):
    """One row per detection: class, score, box (x1, y1, x2, y2) and mask area in the image's pixels."""
    instances, classes = sample.pred_instances, inferencer.model.dataset_meta['classes']
    areas = (instances.masks.flatten(1).sum(1).tolist() if 'masks' in instances and len(instances.masks)
             else [None] * len(instances))
    return [[classes[label], round(score, 3), ', '.join(f'{v:.1f}' for v in box), area]
            for label, score, box, area in zip(instances.labels.tolist(), instances.scores.tolist(),
                                              instances.bboxes.tolist(), areas)]


def make_predict(detector, segmentor, device):
    """The page's function: image path and score threshold -> both pictures, the detections, the timings."""
    def run(inferencer, image, score_thr):
        start = time.perf_counter()
        sample = predict(inferencer, image, score_thr)
        synchronize(device)
        predicted = time.perf_counter()
        rows = detections_table(inferencer, sample) if 'pred_instances' in sample else None
        picture = draw_with_legend(inferencer, image, sample, score_thr)
        return picture, rows, (predicted - start, time.perf_counter() - predicted)

    def predict_page(image, score_thr):
        if image is None:  # cleared
            return None, [], None, ''
        det_picture, rows, det_time = run(detector, image, score_thr)
        seg_picture, _, seg_time = run(segmentor, image, score_thr)
        timing = '\n'.join(f'- **{name}**: {sum(t):.2f} s (prediction {t[0]:.2f} s, drawing {t[1]:.2f} s)'
                           for name, t in ((DET_NAME, det_time), (SEG_NAME, seg_time)))
        return det_picture, rows, seg_picture, f'Time taken on {device_name(device)}:\n{timing}'

    return predict_page


def in_repo(path):
    """``path`` relative to the repository when inside it (shorter on the page), else as it is."""
    path = osp.abspath(path)
    return osp.relpath(path, ROOT) if path.startswith(ROOT + os.sep) else path


def device_name(device):
    device = torch.device(device)
    return f'{device} ({torch.cuda.get_device_name(device)})' if device.type == 'cuda' else 'cpu'


def build_page(predict_page, examples, det_checkpoint, seg_checkpoint, device, score_thr):
    """The page: the image, the threshold and the examples on the left; both pictures, the time taken and the
    table of detections on the right. An upload, a click on an example, Submit and a new threshold predict."""
    import gradio as gr
    description = (
        f'{DET_NAME} (mmdet) and {SEG_NAME} (mmseg) on one image, with the MambaOut backbone '
        '([MambaOut: Do We Really Need Mamba for Vision?](https://arxiv.org/abs/2405.07992)). Upload an image or '
        f'click one of the examples.\n\nDetector: `{in_repo(det_checkpoint)}`. Segmentor: `{in_repo(seg_checkpoint)}`. '
        f'Device: {device_name(device)}.')
    with gr.Blocks(title=TITLE, analytics_enabled=False) as page:
        gr.Markdown(f'# {TITLE}\n\n{description}')
        with gr.Row():
            with gr.Column(scale=1):
                image = gr.Image(type='filepath', label='image', sources=['upload'], elem_id='image')
                score_thr = gr.Slider(0, 1, value=score_thr, step=0.05, label='detection score threshold')
                submit = gr.Button('Submit', variant='primary')
                gr.Examples(examples, inputs=image, label='toy examples')
            with gr.Column(scale=3):
                with gr.Row():
                    detections = gr.Image(type='numpy', format='png', label=f'{DET_NAME}: detections',
                                          elem_id='detections')
                    segmentation = gr.Image(type='numpy', format='png', label=f'{SEG_NAME}: segmentation',
                                            elem_id='segmentation')
                timing = gr.Markdown(elem_id='timing')
                table = gr.Dataframe(headers=['class', 'score', 'box (x1, y1, x2, y2)', 'mask (px)'],
                                     label='detections', elem_id='detections-table')
        outputs = [detections, table, segmentation, timing]
        for event in (image.change, submit.click, score_thr.release):
            # one prediction at a time, whichever event asks: the inferencers' visualizers keep what they draw
            event(predict_page, [image, score_thr], outputs, concurrency_limit=1, concurrency_id='predict')
    return page


def main(argv=None):
    args = parse_args(argv)
    try:
        import gradio  # noqa: F401
    except ImportError:
        raise SystemExit('error: the web demo needs Gradio, an optional extra: pip install -e ".[demo]"') from None
    if torch.device(args.device).type == 'cuda' and not torch.cuda.is_available():
        raise SystemExit(f'error: --device {args.device} but torch sees no CUDA device: pass --device cpu')
    (det_config, det_checkpoint), (seg_config, seg_checkpoint) = args.det or demo_model(DET_NAME), \
        args.seg or demo_model(SEG_NAME)
    detector = load_model(DET_NAME, det_config, det_checkpoint, args.device)
    segmentor = load_model(SEG_NAME, seg_config, seg_checkpoint, args.device)
    page = build_page(make_predict(detector, segmentor, args.device), example_images(args.examples),
                      det_checkpoint, seg_checkpoint, args.device, args.score_thr)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # a plain exit: the temporary examples are removed
    try:
        page.launch(server_name='127.0.0.1', server_port=args.port, share=False, show_error=True)
    except OSError as err:
        if 'Cannot find empty port' not in str(err):
            raise
        raise SystemExit(f'error: port {args.port} of 127.0.0.1 is taken: pass another --port') from None


if __name__ == '__main__':
    main()
