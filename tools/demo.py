"""The embedded default run (`make demo`): the whole pipeline on a generated dataset, on a CPU, in minutes.

1. generates the toy dataset under data/toy if it is not there (tools/make_toy_data.py);
2. trains Mask R-CNN-MambaOut and UperNet-MambaOut on it (configs/toy/, which inherit the paper configs);
3. evaluates them: COCO bbox/segm mAP, mIoU single-scale and multi-scale + flip (--tta);
4. draws predictions on validation images (tools/image_demo.py);
5. prints the metrics table (tools/results_table.py).

Every step is one of the repository's tools, run as a user would run it, so their progress shows.
"""
import argparse
import os.path as osp
import subprocess
import sys
import time

TOOLS = osp.dirname(osp.abspath(__file__))
ROOT = osp.dirname(TOOLS)
DET = osp.join(ROOT, 'configs', 'toy', 'mask_rcnn_mambaout_toy.py')
SEG = osp.join(ROOT, 'configs', 'toy', 'upernet_mambaout_toy.py')


def run(*args):
    print(f'\n$ {" ".join(args)}', flush=True)
    subprocess.run([sys.executable, *args], check=True, cwd=ROOT)


def last_checkpoint(work_dir):
    with open(osp.join(work_dir, 'last_checkpoint')) as f:
        return f.read().strip()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--work-dir', default=osp.join(ROOT, 'work_dirs', 'demo'))
    args = parser.parse_args(argv)
    start = time.time()
    det_dir, seg_dir = osp.join(args.work_dir, 'mask_rcnn'), osp.join(args.work_dir, 'upernet')
    pictures = osp.join(args.work_dir, 'pictures')

    run(osp.join(TOOLS, 'make_toy_data.py'), '--out', osp.join(ROOT, 'data', 'toy'))
    run(osp.join(TOOLS, 'train.py'), DET, '--work-dir', det_dir)
    run(osp.join(TOOLS, 'train.py'), SEG, '--work-dir', seg_dir)
    det_ckpt, seg_ckpt = last_checkpoint(det_dir), last_checkpoint(seg_dir)
    run(osp.join(TOOLS, 'test.py'), DET, det_ckpt, '--work-dir', det_dir)
    run(osp.join(TOOLS, 'test.py'), SEG, seg_ckpt, '--work-dir', seg_dir)
    run(osp.join(TOOLS, 'test.py'), SEG, seg_ckpt, '--work-dir', seg_dir, '--tta')
    for index in range(3):
        name = f'toy_val_{index:05d}'
        run(osp.join(TOOLS, 'image_demo.py'), osp.join(ROOT, 'data', 'toy', 'coco', 'val', name + '.jpg'), DET,
            det_ckpt, '--out', osp.join(pictures, f'det_{name}.png'))
        run(osp.join(TOOLS, 'image_demo.py'), osp.join(ROOT, 'data', 'toy', 'ade', 'images', 'validation',
                                                       name + '.jpg'), SEG, seg_ckpt,
            '--out', osp.join(pictures, f'seg_{name}.png'))
    run(osp.join(TOOLS, 'results_table.py'), det_dir, seg_dir)
    print(f'\nDemo finished in {(time.time() - start) / 60:.1f} min. Pictures of the predictions: {pictures}')


if __name__ == '__main__':
    main()
