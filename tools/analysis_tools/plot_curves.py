"""Plot the training curves of mmengine runs: the loss and the validation metrics against the iteration.

    python tools/analysis_tools/plot_curves.py work_dirs/mask_rcnn_mambaout_t_1x work_dirs/upernet_mambaout_t_160k_ade20k_512 \
        --out curves.png [--metrics bbox_mAP segm_mAP mIoU]

One column per work dir: the training loss on top, the validation metrics below, both against the training
iteration. They are read from what mmengine's Runner writes during tools/train.py,
``WORK_DIR/TIMESTAMP/vis_data/scalars.json`` (one JSON record per log line; the newest run of the work dir
that has training records). An epoch-based run validates per epoch (its validation records' ``step`` is the
epoch): such points are drawn at the last iteration of that epoch. mmdet's ``analyze_logs.py`` and mmseg's
plot one work dir's metric by epoch, without this mapping; this tool puts a detector and a segmentor side by
side in one picture (tools/misc/demo.py draws docs/demo_curves.png with it).
"""
import argparse
import glob
import json
import os
import os.path as osp
import sys

SCALARS_GLOB = osp.join('*', 'vis_data', 'scalars.json')
DEFAULT_METRICS = ('bbox_mAP', 'segm_mAP', 'mIoU')


def _records(path):
    with open(path) as f:
        for line in f:
            try:
                record = json.loads(line)
            except ValueError:
                continue  # a line cut short by a killed run
            if isinstance(record, dict):
                yield record


def _metric_key(record, name):
    return next((key for key in record if key == name or key.endswith('/' + name)), None)


def read_curves(work_dir, metrics=DEFAULT_METRICS):
    """``(loss, validation)`` of the newest training run in ``work_dir``: ``loss`` a list of ``(iteration,
    loss)``, ``validation`` a dict ``{metric key: [(iteration, value)]}`` of the ``metrics`` it logged.

    Raises:
        FileNotFoundError: ``work_dir`` holds no scalars.json with training records.
    """
    for path in sorted(glob.glob(osp.join(work_dir, SCALARS_GLOB)), reverse=True):  # TIMESTAMPs sort by time
        records = list(_records(path))
        loss = [(r['iter'], r['loss']) for r in records if 'loss' in r and 'iter' in r]
        if not loss:
            continue  # a tools/test.py run
        epoch_end = {}  # epoch -> its last logged iteration (mmengine logs the end of every epoch)
        for record in records:
            if 'epoch' in record and 'iter' in record:
                epoch_end[record['epoch']] = max(epoch_end.get(record['epoch'], 0), record['iter'])
        validation = {}
        for record in records:
            if 'loss' in record:
                continue
            for name in metrics:
                key = _metric_key(record, name)
                if key is not None:
                    iteration = epoch_end.get(record['step'], record['step']) if epoch_end else record['step']
                    validation.setdefault(key, []).append((iteration, record[key]))
        return loss, validation
    raise FileNotFoundError(f'no training records in {osp.join(work_dir, SCALARS_GLOB)} (is it a work dir of '
                            'tools/train.py?)')


def plot(work_dirs, out, metrics=DEFAULT_METRICS, titles=None):
    """Draw the curves of ``work_dirs`` (one column each, titled ``titles`` or the work dirs' names) to ``out``."""
    import matplotlib
    matplotlib.use('Agg')  # no display needed
    import matplotlib.pyplot as plt

    titles = titles or [osp.basename(osp.normpath(d)) for d in work_dirs]
    figure, axes = plt.subplots(2, len(work_dirs), figsize=(4.2 * len(work_dirs), 5.2), squeeze=False,
                                sharex='col')
    for column, (work_dir, title) in enumerate(zip(work_dirs, titles)):
        loss, validation = read_curves(work_dir, metrics)
        top, bottom = axes[0][column], axes[1][column]
        top.plot(*zip(*loss), color='tab:red', linewidth=1.2)
        top.set_title(title, fontsize=10)
        top.set_ylabel('training loss')
        for key, points in validation.items():
            bottom.plot(*zip(*points), marker='o', linewidth=1.2, label=key)
        bottom.set_ylabel('validation')
        bottom.set_xlabel('iteration')
        if validation:
            bottom.legend(fontsize=8)
        else:
            bottom.text(0.5, 0.5, 'no validation logged', ha='center', transform=bottom.transAxes)
        for axis in (top, bottom):
            axis.grid(alpha=0.3)
    figure.tight_layout()
    os.makedirs(osp.dirname(osp.abspath(out)), exist_ok=True)
    figure.savefig(out, dpi=80)
    plt.close(figure)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('work_dirs', nargs='+', metavar='WORK_DIR', help='work dirs of tools/train.py')
    parser.add_argument('--out', required=True, help='picture to write (.png, .jpg, .pdf, .svg)')
    parser.add_argument('--metrics', nargs='+', default=list(DEFAULT_METRICS),
                        help='validation metrics to draw (a name matches KEY or PREFIX/KEY)')
    parser.add_argument('--titles', nargs='+', help='one title per work dir (default: the work dirs\' names)')
    args = parser.parse_args(argv)
    if args.titles and len(args.titles) != len(args.work_dirs):
        parser.error(f'--titles: {len(args.titles)} titles for {len(args.work_dirs)} work dirs')
    return args


def main(argv=None):
    args = parse_args(argv)
    try:
        plot(args.work_dirs, args.out, args.metrics, args.titles)
    except FileNotFoundError as err:
        print(f'error: {err}', file=sys.stderr)
        return 1
    print(f'curves written to {args.out}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
